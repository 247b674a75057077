"""The engine's writes run beside its decisions: a pass never waits for a patch, and no refusal strands a Job."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from jobgate.core.jobs import JobView
from jobgate.core.patches import JsonPatch
from jobgate.engine.engine import EngineSettings
from localcluster.manifests import job_manifest, policy_manifest
from tests.support.engines import body, leading_engine, term_of


def job(rv: int, suspended: bool = True) -> dict[str, Any]:
    return body(job_manifest("j", {"app": "a"}, suspend=suspended), "job-uid", rv)


class SlowApi:
    """Holds each patch until told to answer, then refuses it or applies it."""

    def __init__(self) -> None:
        self.answer: asyncio.Queue[bool] = asyncio.Queue()
        self.patched: list[JsonPatch] = []
        self.version = 100  # the API server's: every write makes a newer one

    async def patch_job(self, namespace: str, name: str, patch: JsonPatch) -> Mapping[str, Any] | None:
        self.patched.append(patch)
        if not await self.answer.get():
            return None  # refused: a test op failed
        self.version += 1
        return job(self.version, suspended=False)

    async def post_event(self, *_: Any) -> None:
        pass


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_refused_admission_is_decided_again_on_the_state_that_arrived_meanwhile() -> None:
    async def scenario() -> None:
        api = SlowApi()
        engine = leading_engine(api)
        engine.observe_job(None, job(rv=5))
        term_of(engine).jobs.prime()

        assert [j.name for j in engine.decide_once(term_of(engine)).admit] == ["j"]
        await settle()
        assert len(api.patched) == 1

        engine.observe_job("MODIFIED", job(rv=6))  # the Job controller wrote its status meanwhile
        assert engine.decide_once(term_of(engine)).admit == []  # the admission in flight still holds the slot

        engine._wake.clear()
        await api.answer.put(False)  # refused: say a label changed meanwhile
        await settle()
        assert engine._wake.is_set(), "nothing else would wake the decision: the watch event came already"
        assert [j.resource_version for j in engine.decide_once(term_of(engine)).admit] == [6]
        await api.answer.put(True)
        await settle()
        assert len(api.patched) == 2
        admitted = term_of(engine).jobs.jobs["job-uid"]
        assert isinstance(admitted, JobView) and not admitted.suspended
        await engine.close()

    asyncio.run(scenario())


def test_status_writes_that_change_nothing_decided_wake_no_pass() -> None:
    engine = leading_engine(SlowApi())
    engine.observe_job(None, job(rv=5, suspended=False))
    engine._wake.clear()

    engine.observe_job("MODIFIED", job(rv=6, suspended=False))  # e.g. status.active went from 0 to 1
    assert not engine._wake.is_set()
    assert term_of(engine).jobs.jobs["job-uid"].resource_version == 6  # the cache keeps the newest state

    finished = job(rv=7, suspended=False)
    finished["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    engine.observe_job("MODIFIED", finished)
    assert engine._wake.is_set()


def test_a_refused_admission_is_decided_again_when_the_newer_state_arrives_after_the_refusal() -> None:
    async def scenario() -> None:
        api = SlowApi()
        engine = leading_engine(api)
        engine.observe_job(None, job(rv=5))
        term_of(engine).jobs.prime()
        engine.decide_once(term_of(engine))
        await settle()
        await api.answer.put(False)  # refused before the watch brought rv 6
        await settle()

        engine._wake.clear()
        engine.observe_job("MODIFIED", job(rv=6))  # only the resourceVersion changed
        assert engine._wake.is_set()
        assert [j.resource_version for j in engine.decide_once(term_of(engine)).admit] == [6]
        await api.answer.put(True)
        await settle()
        await engine.close()

    asyncio.run(scenario())


def test_a_job_said_gone_while_its_admission_is_in_flight_keeps_its_slot() -> None:
    """Admitting takes the queued label off: that label's watch says DELETED, maybe before the patch returns."""

    async def scenario() -> None:
        api = SlowApi()
        engine = leading_engine(api)
        engine.observe_job(None, job(rv=5))
        term_of(engine).jobs.prime()
        assert [j.name for j in engine.decide_once(term_of(engine)).admit] == ["j"]
        await settle()

        engine.observe_job("DELETED", job(rv=6))  # the queued-label watch saw the admission first
        assert "job-uid" in term_of(engine).jobs.jobs
        await api.answer.put(True)  # the patch's answer: version 6, running
        await settle()
        assert not term_of(engine).jobs.jobs["job-uid"].suspended
        await engine.close()

    asyncio.run(scenario())


def test_only_a_job_that_waits_is_told_it_is_queued() -> None:
    class Recording(SlowApi):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[tuple[str, str]] = []

        async def post_event(self, job: JobView, type_: str, reason: str, message: str) -> None:
            self.events.append((job.name, reason))

    async def scenario() -> list[tuple[str, str]]:
        api = Recording()
        engine = leading_engine(api)
        for name, created in (("first", "2026-01-01T00:00:00Z"), ("second", "2026-01-01T00:00:01Z")):
            manifest = body(job_manifest(name, {"app": "a"}), f"uid-{name}", 5)
            manifest["metadata"]["creationTimestamp"] = created
            engine.observe_job("ADDED", manifest)
        term_of(engine).jobs.prime()
        assert [j.name for j in engine.decide_once(term_of(engine)).admit] == ["first"]
        await settle()
        await engine.close()
        return api.events

    assert asyncio.run(scenario()) == [("second", "Queued")]


def test_a_job_is_released_only_when_a_fresh_read_of_the_policies_finds_none_that_governs_it() -> None:
    """Under load, the policy watch lagged behind a new policy with maxConcurrent 0: its first Job was
    released (unsuspended) as if no policy governed it. A release now waits for a LIST of the policies."""

    class LaggingPolicyWatch(SlowApi):
        def __init__(self) -> None:
            super().__init__()
            self.policies: list[dict[str, Any]] = []

        async def list_policies(self, namespace: str | None) -> tuple[list[Mapping[str, Any]], int]:
            return list(self.policies), 50

    async def scenario() -> None:
        api = LaggingPolicyWatch()
        engine = leading_engine(api)
        paused = body(policy_manifest("paused", {"app": "new"}, [], 0), "paused-uid", 10)
        api.policies = [paused]  # created first; this replica's watch has not brought it yet
        queued = body(job_manifest("first", {"app": "new"}), "first-uid", 20)
        engine.observe_job("ADDED", queued)  # through the watch of the Jobs jobgate queued
        term_of(engine).jobs.prime()

        assert [j.name for j in engine.decide_once(term_of(engine)).release] == ["first"]
        await settle()
        assert api.patched == [], "released while a policy governs it"
        assert engine.decide_once(term_of(engine)).release == []  # the read brought the policy

        api.policies = []  # the policy is deleted: now the release goes out
        engine.observe_policy("DELETED", paused)
        assert [j.name for j in engine.decide_once(term_of(engine)).release] == ["first"]
        await settle()
        assert len(api.patched) == 1
        await api.answer.put(True)
        await engine.close()

    asyncio.run(scenario())


def test_a_job_a_cluster_policy_governs_is_not_released_while_the_watches_lag() -> None:
    class LaggingWatches(SlowApi):
        async def list_policies(self, namespace: str | None) -> tuple[list[Mapping[str, Any]], int]:
            return [], 50

        async def list_cluster_policies(self) -> tuple[list[Mapping[str, Any]], int]:
            manifest = policy_manifest("per-team", {}, ["team"], 0)
            manifest["spec"]["namespaceSelector"] = {"matchLabels": {"tenant": "true"}}
            manifest["kind"] = "ClusterConcurrencyPolicy"
            cluster = body(manifest, "per-team-uid", 10)
            del cluster["metadata"]["namespace"]
            return [cluster], 50

        async def get_namespace(self, name: str) -> tuple[str, dict[str, str], int]:
            return name, {"tenant": "true"}, 9  # labeled before the Job was made

    async def scenario() -> None:
        api = LaggingWatches()
        engine = leading_engine(api, EngineSettings(cluster_policies=True))
        engine.observe_job("ADDED", body(job_manifest("first", {"team": "red"}), "first-uid", 20))
        term_of(engine).jobs.prime()
        assert [j.name for j in engine.decide_once(term_of(engine)).release] == ["first"]
        await settle()
        assert api.patched == [], "released while a cluster policy governs it"
        assert engine.decide_once(term_of(engine)).release == []
        await engine.close()

    asyncio.run(scenario())
