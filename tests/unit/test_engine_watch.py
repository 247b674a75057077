"""The leader's Job watch: resumes where it ended, re-lists when its version expired, survives errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from jobgate.engine import Engine, EngineSettings
from jobgate.jobs import JobView
from jobgate.kube import WatchExpired
from jobgate.metrics import Metrics
from tests.support.manifests import job_manifest, policy_manifest

NS = "ns"


def body(manifest: dict[str, Any], uid: str, rv: int) -> dict[str, Any]:
    manifest["metadata"].update(namespace=NS, uid=uid, resourceVersion=str(rv))
    manifest["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    return manifest


def job(name: str, rv: int) -> dict[str, Any]:
    return body(job_manifest(name, {"app": "a"}), f"uid-{name}", rv)


class ScriptedApi:
    """LISTs answer from `lists` in turn; each watch plays the next script, then waits for ever."""

    def __init__(self, lists: list[tuple[list[dict[str, Any]], int]], watches: list[list[Any]]) -> None:
        self.lists = lists
        self.watches = watches
        self.watched_from: list[int] = []
        self.exhausted = asyncio.Event()

    async def list_policies(self, namespace: str | None) -> tuple[list[Mapping[str, Any]], int]:
        return [body(policy_manifest("p", {"app": "a"}, [], 0), "policy-uid", 1)], 1

    async def list_jobs(self, namespace: str | None, label_selector: str | None = None) -> tuple[list[JobView], int]:
        bodies, version = self.lists.pop(0)
        return [JobView.from_body(b) for b in bodies], version

    async def watch_jobs(
        self, namespace: str | None, label_selector: str | None, resource_version: int, timeout_seconds: int = 300
    ) -> AsyncIterator[tuple[str, Mapping[str, Any]]]:
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
        jobs = dict(engine.cache.jobs)
        leading.cancel()
        await asyncio.gather(leading, return_exceptions=True)
        await engine.close()
        engine.cache.jobs = jobs  # as it was while leading
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
    assert {j.name for j in engine.cache.jobs.values()} == {"a", "b"}


def test_an_expired_watch_lists_again_and_forgets_jobs_deleted_in_the_gap() -> None:
    api = ScriptedApi(
        lists=[([job("a", 5), job("b", 6)], 10), ([job("a", 5)], 40)],
        watches=[[WatchExpired("/apis/batch/v1/jobs")]],
    )
    engine = lead_until_exhausted(api)
    assert api.watched_from == [10, 40]
    assert {j.name for j in engine.cache.jobs.values()} == {"a"}


def test_a_broken_stream_is_retried_from_where_it_was() -> None:
    api = ScriptedApi(
        lists=[([], 10)],
        watches=[[("ADDED", job("a", 11)), ConnectionResetError("peer went away")]],
    )
    engine = lead_until_exhausted(api)
    assert api.watched_from == [10, 11]
    assert {j.name for j in engine.cache.jobs.values()} == {"a"}
