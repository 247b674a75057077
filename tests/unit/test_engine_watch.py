"""The leader's Job watch: resumes where it ended, re-lists when its version expired, survives errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from jobgate.core.jobs import QUEUED_LABEL, JobView
from jobgate.engine.engine import Engine, EngineSettings
from jobgate.kube.api import WatchExpired
from jobgate.telemetry.metrics import Metrics
from localcluster.manifests import job_manifest, policy_manifest
from tests.support.engines import body, leading_engine, term_of


def job(name: str, rv: int) -> dict[str, Any]:
    return body(job_manifest(name, {"app": "a"}), f"uid-{name}", rv)


class ScriptedApi:
    """The policy's stream: LISTs answer from `lists` in turn; each watch plays the next script.

    When the scripts are done, the watch waits for ever; so does the stream of queued Jobs.
    """

    def __init__(self, lists: list[tuple[list[dict[str, Any]], int]], watches: list[list[Any]]) -> None:
        self.lists = lists
        self.watches = watches
        self.watched_from: list[int] = []
        self.exhausted = asyncio.Event()

    async def list_policies(self, namespace: str | None) -> tuple[list[Mapping[str, Any]], int]:
        return [body(policy_manifest("p", {"app": "a"}, [], 0), "policy-uid", 1)], 1

    async def list_jobs(self, namespace: str | None, label_selector: str | None = None) -> tuple[list[JobView], int]:
        if label_selector == QUEUED_LABEL:
            return [], 1
        assert label_selector == "app=a"
        bodies, version = self.lists.pop(0)
        return [JobView.from_body(b) for b in bodies], version

    async def watch_jobs(
        self, namespace: str | None, label_selector: str | None, resource_version: int, timeout_seconds: int = 300
    ) -> AsyncIterator[tuple[str, Mapping[str, Any]]]:
        if label_selector == QUEUED_LABEL:
            await asyncio.Event().wait()
        self.watched_from.append(resource_version)
        if not self.watches:
            self.exhausted.set()
            await asyncio.Event().wait()
        for step in self.watches.pop(0):
            if isinstance(step, Exception):
                raise step
            yield step

    async def patch_policy_status(self, *_: Any) -> None:
        pass

    async def post_event(self, *_: Any) -> None:
        pass


def lead_until_exhausted(api: ScriptedApi) -> Engine:
    async def scenario() -> Engine:
        engine = Engine(api, EngineSettings(), Metrics())  # type: ignore[arg-type]
        leading = asyncio.create_task(engine.lead())
        async with asyncio.timeout(10):
            await api.exhausted.wait()
        term = term_of(engine)
        leading.cancel()
        await asyncio.gather(leading, return_exceptions=True)
        await engine.close()
        engine.term = term  # as it was while leading
        return engine

    return asyncio.run(scenario())


def test_the_watch_starts_at_the_list_and_resumes_after_the_last_event_or_bookmark() -> None:
    bookmark = {"metadata": {"resourceVersion": "30"}}
    api = ScriptedApi(
        lists=[([job("a", 5)], 10)],
        watches=[[("ADDED", job("b", 12))], [("BOOKMARK", bookmark)]],
    )
    engine = lead_until_exhausted(api)
    assert api.watched_from == [10, 12, 30]
    assert {j.name for j in term_of(engine).jobs.jobs.values()} == {"a", "b"}


def test_an_expired_watch_lists_again_and_forgets_jobs_deleted_in_the_gap() -> None:
    api = ScriptedApi(
        lists=[([job("a", 5), job("b", 6)], 10), ([job("a", 5)], 40)],
        watches=[[WatchExpired("/apis/batch/v1/jobs")]],
    )
    engine = lead_until_exhausted(api)
    assert api.watched_from == [10, 40]
    assert {j.name for j in term_of(engine).jobs.jobs.values()} == {"a"}


def test_a_broken_stream_is_retried_from_where_it_was() -> None:
    api = ScriptedApi(
        lists=[([], 10)],
        watches=[[("ADDED", job("a", 11)), ConnectionResetError("peer went away")]],
    )
    engine = lead_until_exhausted(api)
    assert api.watched_from == [10, 11]
    assert {j.name for j in term_of(engine).jobs.jobs.values()} == {"a"}


# --- a watch's DELETED is a deletion, or the Job left that watch's selector ---------------------


class ReadBackApi(ScriptedApi):
    """Answers GETs from `current` (None: no such Job), and counts them."""

    def __init__(self, current: dict[str, Any] | None) -> None:
        super().__init__(lists=[], watches=[])
        self.current = current
        self.reads = 0

    async def get_job(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.reads += 1
        return self.current


def running(name: str, rv: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return body(job_manifest(name, labels or {"app": "a"}, suspend=False), f"uid-{name}", rv)


def deleted_after_running(current: dict[str, Any] | None) -> tuple[ReadBackApi, set[str], set[str]]:
    """A running Job, then a watch's DELETED for it: what the cache holds before and after the read-back."""

    async def scenario() -> tuple[ReadBackApi, set[str], set[str]]:
        api = ReadBackApi(current)
        engine = leading_engine(api)
        engine.observe_job("ADDED", running("r", 5))
        engine.observe_job("DELETED", running("r", 9))
        before = set(term_of(engine).jobs.jobs)
        for _ in range(5):
            await asyncio.sleep(0)
        after = set(term_of(engine).jobs.jobs)
        await engine.close()
        return api, before, after

    return asyncio.run(scenario())


def test_a_running_job_said_deleted_keeps_its_slot_until_the_api_confirms_it_is_gone() -> None:
    api, before, after = deleted_after_running(current=None)
    assert before == {"uid-r"}, "counted while we do not know"
    assert api.reads == 1
    assert after == set()


def test_a_running_job_relabeled_into_another_policy_keeps_its_slot() -> None:
    api, _, after = deleted_after_running(current=running("r", 9, labels={"app": "a", "moved": "yes"}))
    assert api.reads == 1
    assert after == {"uid-r"}


def test_a_running_job_relabeled_out_of_every_policy_is_forgotten() -> None:
    api, _, after = deleted_after_running(current=running("r", 9, labels={"app": "other"}))
    assert api.reads == 1
    assert after == set()


def test_a_queued_job_said_deleted_is_dropped_without_a_read() -> None:
    async def scenario() -> tuple[int, set[str]]:
        api = ReadBackApi(current=None)
        engine = leading_engine(api)
        engine.observe_job("ADDED", job("q", 5))
        engine.observe_job("DELETED", job("q", 9))
        await engine.close()
        return api.reads, set(term_of(engine).jobs.jobs)

    assert asyncio.run(scenario()) == (0, set())


# --- a Namespace relabeled into a cluster policy's reach ------------------------------------------


class NamespacedListApi(ReadBackApi):
    """LISTs answer with the running Jobs in `jobs` of the namespace asked, and are recorded."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        super().__init__(current=None)
        self.jobs = jobs
        self.listed: list[tuple[str | None, str | None]] = []

    async def list_jobs(self, namespace: str | None, label_selector: str | None = None) -> tuple[list[JobView], int]:
        self.listed.append((namespace, label_selector))
        views = [JobView.from_body(b) for b in self.jobs if namespace in (None, b["metadata"]["namespace"])]
        return [v for v in views if label_selector != QUEUED_LABEL], 20


def test_a_namespace_relabeled_into_a_cluster_policy_has_its_jobs_listed_again() -> None:
    """Its Jobs were dropped as they came (nothing governed them): they must be counted once it is selected."""

    async def scenario() -> tuple[NamespacedListApi, set[str], set[str]]:
        red = running("red", 5, labels={"team": "red"})
        red["metadata"]["namespace"] = "b"
        api = NamespacedListApi([red])
        engine = leading_engine(api, EngineSettings(cluster_policies=True))
        cluster = policy_manifest("per-team", {}, ["team"], 1)
        cluster["kind"] = "ClusterConcurrencyPolicy"
        cluster["spec"]["selector"] = {"matchExpressions": [{"key": "team", "operator": "Exists"}]}
        cluster["spec"]["namespaceSelector"] = {"matchLabels": {"tenant": "true"}}
        cluster_body = body(cluster, "cluster-uid", 2)
        del cluster_body["metadata"]["namespace"]
        engine.observe_policy("ADDED", cluster_body)
        engine.observe_namespace("ADDED", "b", {}, 1)
        term = term_of(engine)
        engine.observe_job("ADDED", red)
        before = set(term.jobs.jobs)
        await engine._follow_streams(term)  # the streams for the cluster policy
        engine.observe_namespace("MODIFIED", "b", {"tenant": "true"}, 2)
        assert term.streams_stale and term.relabeled == {"b"}
        await engine._follow_streams(term)
        after = set(term.jobs.jobs)
        for stream in list(term.streams.values()):
            stream.cancel()
        await asyncio.gather(*term.streams.values(), return_exceptions=True)
        await engine.close()
        return api, before, after

    api, before, after = asyncio.run(scenario())
    assert before == set()  # ungoverned: not kept
    assert ("b", "team") in api.listed  # listed again in that namespace, with the cluster policy's selector
    assert after == {"uid-red"}


def cluster_policy_body(name: str, rv: int, namespace_labels: dict[str, str]) -> dict[str, Any]:
    manifest = policy_manifest(name, {}, ["team"], 1)
    manifest["kind"] = "ClusterConcurrencyPolicy"
    manifest["spec"]["selector"] = {"matchExpressions": [{"key": "team", "operator": "Exists"}]}
    manifest["spec"]["namespaceSelector"] = {"matchLabels": namespace_labels}
    policy_body = body(manifest, f"uid-{name}", rv)
    del policy_body["metadata"]["namespace"]
    return policy_body


async def cached_once_followed(engine: Engine) -> set[str]:
    """The Jobs cached once the streams follow the policies' changes; the term then ends."""
    term = term_of(engine)
    await engine.follow_policy_changes(term)
    await term.end()
    await engine.close()
    return set(term.jobs.jobs)


def cached_after(change: Callable[[Engine], None]) -> set[str]:
    """The Jobs cached once the streams follow `change`: a running Job of namespace b, which at first
    no policy governs, so it is dropped as it comes through the stream that cluster policy a opened."""

    async def scenario() -> set[str]:
        red = running("red", 5, labels={"team": "red"})
        red["metadata"]["namespace"] = "b"
        engine = leading_engine(NamespacedListApi([red]), EngineSettings(cluster_policies=True))
        engine.observe_policy("ADDED", cluster_policy_body("a", 2, {"tenant": "true"}))
        engine.observe_namespace("ADDED", "b", {"other": "true"}, 1)
        term = term_of(engine)
        await engine._follow_streams(term)
        assert "uid-red" not in term.jobs.jobs
        change(engine)
        return await cached_once_followed(engine)

    return asyncio.run(scenario())


def test_a_cluster_policy_that_now_reaches_a_namespace_counts_the_jobs_that_run_there() -> None:
    """Its stream is the same (same selector): without a new LIST, red would never be counted, and a
    second team=red Job elsewhere would be admitted beside it."""
    assert cached_after(lambda e: e.observe_policy("MODIFIED", cluster_policy_body("a", 3, {"other": "true"}))) == {
        "uid-red"
    }


def test_a_new_cluster_policy_sharing_a_stream_counts_the_jobs_already_running() -> None:
    assert cached_after(lambda e: e.observe_policy("ADDED", cluster_policy_body("b2", 3, {"other": "true"}))) == {
        "uid-red"
    }


def test_a_policy_that_a_list_brings_before_its_watch_event_gets_its_stream() -> None:
    """A release's fresh read (or a resync) may bring a policy before Kopf's event does: that event then
    changes nothing, so what the LIST brought must start the policy's stream and list its Jobs."""

    class ListedFirst(NamespacedListApi):
        async def list_policies(self, namespace: str | None) -> tuple[list[Mapping[str, Any]], int]:
            return [body(policy_manifest("p", {"app": "a"}, [], 0), "policy-uid", 1), NEW_POLICY], 30

    async def scenario() -> set[str]:
        engine = leading_engine(ListedFirst([running("red", 5, labels={"app": "new"})]))
        term = term_of(engine)
        await engine._follow_streams(term)
        assert "uid-red" not in term.jobs.jobs  # the stream of p brought it; nothing governed it
        await engine._read_policies("ns")
        engine.observe_policy("ADDED", NEW_POLICY)  # the watch, late: the cache knows this version
        return await cached_once_followed(engine)

    assert "uid-red" in asyncio.run(scenario())


NEW_POLICY = body(policy_manifest("new", {"app": "new"}, [], 1), "new-uid", 20)


def test_a_cluster_policy_over_many_namespaces_lists_each_stream_once_not_once_per_namespace() -> None:
    async def scenario() -> list[tuple[str | None, str | None]]:
        api = NamespacedListApi([])
        engine = leading_engine(api, EngineSettings(cluster_policies=True))
        for n in range(20):
            engine.observe_namespace("ADDED", f"tenant-{n}", {"tenant": "true"}, n + 1)
        engine.observe_policy("ADDED", cluster_policy_body("a", 30, {"tenant": "true"}))
        term = term_of(engine)
        await engine._follow_streams(term)
        api.listed.clear()
        engine.observe_policy("ADDED", cluster_policy_body("b", 31, {}))  # the same selector: its stream
        await cached_once_followed(engine)
        return api.listed

    listed = asyncio.run(scenario())
    assert (None, "team") in listed, "the shared stream is listed again"
    assert len(listed) <= 2, listed  # not 20 LISTs, one per namespace
