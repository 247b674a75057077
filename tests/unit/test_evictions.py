"""The engine deletes what a full ReplaceOldest queue pushes out: once, at the version decided on, with an Event."""

from __future__ import annotations

import asyncio
from typing import Any

from jobgate.core.jobs import JobView
from jobgate.engine.engine import Engine, EngineSettings
from jobgate.engine.term import Term
from jobgate.telemetry.metrics import Metrics
from localcluster.manifests import job_manifest, policy_manifest
from tests.support.engines import NS, body, term_of


def queued(name: str, second: int, rv: int | None = None) -> dict[str, Any]:
    manifest = body(job_manifest(name, {"app": "a"}), f"uid-{name}", rv or 10 + second)
    manifest["metadata"]["creationTimestamp"] = f"2026-01-01T00:00:{second:02d}Z"
    return manifest


class DeletingApi:
    """Holds each deletion until told to answer it."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[bool | Exception] = asyncio.Queue()
        self.deleted: list[tuple[str, int]] = []  # (name, resourceVersion precondition)
        self.events: list[tuple[str, str, str]] = []  # Replaced events only

    async def delete_job(self, job: JobView) -> bool:
        self.deleted.append((job.name, job.resource_version))
        answer = await self.answers.get()
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def post_event(self, job: JobView, type_: str, reason: str, message: str) -> None:
        if reason == "Replaced":
            self.events.append((job.name, reason, message))


def engine_with_full_queue(api: DeletingApi) -> Engine:
    """Policy p: nothing runs (max 0), one Job may wait; three wait, the oldest two must go."""
    engine = Engine(api, EngineSettings(), Metrics())  # type: ignore[arg-type]
    engine.term = Term.begin(1, engine.policies, api, engine.clock)  # type: ignore[arg-type]
    manifest = policy_manifest("p", {"app": "a"}, [], 0, maxQueued=1, overflow="ReplaceOldest")
    engine.observe_policy(None, body(manifest, "policy-uid", 1))
    for name, second in (("old", 1), ("older", 0), ("new", 2)):
        engine.observe_job(None, queued(name, second))
    term_of(engine).jobs.prime()
    return engine


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_the_oldest_queued_jobs_are_deleted_once_each_with_an_event() -> None:
    async def scenario() -> None:
        api = DeletingApi()
        engine = engine_with_full_queue(api)
        term = term_of(engine)
        assert [j.name for j in engine.decide_once(term).evict] == ["older", "old"]
        await settle()
        assert api.deleted == [("older", 10), ("old", 11)]  # at the versions decided on
        engine.decide_once(term)  # a pass while the deletions are in flight sends no second one
        await settle()
        assert len(api.deleted) == 2
        await api.answers.put(True)
        await api.answers.put(False)  # old changed meanwhile (admitted, say): no Event
        await settle()
        assert [(name, reason) for name, reason, _ in api.events] == [("older", "Replaced")]
        assert api.events[0][2] == (
            "Deleted from the queue by jobgate: policy p keeps at most 1 queued Job(s) (overflow: ReplaceOldest), "
            "and newer Jobs are queued"
        )
        assert engine.metrics.evictions.labels(NS, "p")._value.get() == 1
        await engine.close()

    asyncio.run(scenario())


def test_a_deletion_that_failed_is_decided_again() -> None:
    async def scenario() -> None:
        api = DeletingApi()
        engine = engine_with_full_queue(api)
        term = term_of(engine)
        engine.decide_once(term)
        await settle()
        engine._wake.clear()
        await api.answers.put(TimeoutError())
        await api.answers.put(TimeoutError())
        async with asyncio.timeout(5):
            await engine._wake.wait()  # a later pass tries again
        assert api.events == []
        engine.decide_once(term)
        await settle()
        assert [name for name, _ in api.deleted] == ["older", "old", "older", "old"]
        await engine.close()

    asyncio.run(scenario())


def test_a_deletion_refused_by_a_status_write_meanwhile_is_decided_again_at_the_new_version() -> None:
    async def scenario() -> None:
        api = DeletingApi()
        engine = engine_with_full_queue(api)
        term = term_of(engine)
        engine.decide_once(term)
        await settle()
        # The Job controller writes old's status while its deletion is in flight: the watch brings
        # a new resourceVersion and nothing a decision reads, so that event wakes no pass.
        engine.observe_job("MODIFIED", queued("old", 1, rv=20))
        engine._wake.clear()
        await api.answers.put(True)  # older
        await api.answers.put(False)  # old: refused, its version changed
        await settle()
        assert engine._wake.is_set(), "nothing else would decide again: old would stay queued past the bound"
        engine.decide_once(term)
        await settle()
        assert api.deleted[-1] == ("old", 20)
        await engine.close()

    asyncio.run(scenario())


def test_no_deletion_is_sent_once_the_term_ended() -> None:
    async def scenario() -> None:
        api = DeletingApi()
        engine = engine_with_full_queue(api)
        term = term_of(engine)
        assert engine.decide_once(term).evict  # the deletions are spawned, not sent yet
        term.ended = True  # e.g. a stall: this replica may no longer lead
        await settle()
        assert api.deleted == []
        await engine.close()

    asyncio.run(scenario())
