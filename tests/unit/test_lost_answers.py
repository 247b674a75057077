"""An admission whose answer is lost keeps its slot until a read made after the patch must have landed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from jobgate.core.patches import JsonPatch
from jobgate.engine.engine import Engine, EngineSettings
from jobgate.kube.api import ApiError, NotLeading
from localcluster.manifests import job_manifest
from tests.support.engines import body, leading_engine, term_of, until
from tests.support.jsonpatch_server import apply

LANDING = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LossyApi:
    """Applies each patch to its stored Job, then answers with `failure` (or the Job when None)."""

    def __init__(self, failure: Exception | None, apply_patch: bool = True) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.failure = failure
        self.apply_patch = apply_patch
        self.reads = 0

    def add(self, name: str, rv: int) -> dict[str, Any]:
        self.jobs[name] = body(job_manifest(name, {"app": "a"}), f"uid-{name}", rv)
        return self.jobs[name]

    async def patch_job(self, namespace: str, name: str, patch: JsonPatch) -> Mapping[str, Any] | None:
        if self.apply_patch:
            patched = apply(self.jobs[name], patch)
            patched["metadata"]["resourceVersion"] = str(int(patched["metadata"]["resourceVersion"]) + 1)
            self.jobs[name] = patched
        if self.failure is not None:
            raise self.failure
        return self.jobs[name]

    async def get_job(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.reads += 1
        return self.jobs.get(name)

    async def post_event(self, *_: Any) -> None:
        pass

    async def patch_policy_status(self, *_: Any) -> None:
        pass


def queued_in_one_slot(api: LossyApi, clock: Clock, *names: str) -> Engine:
    """A leading engine whose policy has one slot, with `names` queued for it, oldest first."""
    engine = leading_engine(api, EngineSettings(landing_seconds=LANDING), monotonic=clock)
    for rv, name in enumerate(names, start=10):
        engine.observe_job(None, api.add(name, rv))
    term_of(engine).jobs.prime()
    return engine


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def admitted_names(api: LossyApi, engine: Any) -> list[str]:
    return [j.name for j in engine.decide_once(term_of(engine)).admit]


@pytest.mark.parametrize(
    "lost",
    [TimeoutError(), ConnectionResetError("connection lost"), ApiError(504, "PATCH", "/jobs/first", "canceled")],
    ids=["timeout", "reset", "504"],
)
def test_an_admission_whose_answer_is_lost_keeps_its_slot(lost: Exception) -> None:
    async def scenario() -> None:
        clock = Clock()
        api = LossyApi(failure=lost)  # the patch lands, the answer does not come back
        engine = queued_in_one_slot(api, clock, "first", "second")

        assert admitted_names(api, engine) == ["first"]
        await settle()
        assert admitted_names(api, engine) == [], "the lost admission may have landed: its slot stays taken"

        # A watch event of an older write, arriving late, proves nothing either.
        engine.observe_job("MODIFIED", {**api.jobs["first"], "spec": {"suspend": True}})
        assert admitted_names(api, engine) == []
        await engine.close()

    asyncio.run(scenario())


def test_a_read_after_the_patch_must_have_landed_frees_the_slot_when_it_did_not_land() -> None:
    async def scenario() -> int:
        clock = Clock()
        api = LossyApi(failure=TimeoutError(), apply_patch=False)  # lost before it reached the server
        engine = queued_in_one_slot(api, clock, "first", "second")
        assert admitted_names(api, engine) == ["first"]
        await settle()
        assert admitted_names(api, engine) == []
        assert api.reads == 0, "no read before the patch must have landed"

        clock.now += LANDING
        await until(lambda: not term_of(engine).expected, "the admission in doubt settled")
        assert admitted_names(api, engine) == ["first"], "still suspended when read: queued again, in order"
        await engine.close()
        return api.reads

    assert asyncio.run(scenario()) == 1


def test_a_read_that_shows_the_admission_landed_counts_the_job_as_running() -> None:
    async def scenario() -> None:
        clock = Clock()
        api = LossyApi(failure=TimeoutError())
        engine = queued_in_one_slot(api, clock, "first", "second")
        assert admitted_names(api, engine) == ["first"]
        await settle()
        clock.now += LANDING
        await until(lambda: not term_of(engine).expected, "the admission in doubt settled")
        assert not term_of(engine).jobs.jobs["uid-first"].suspended
        assert admitted_names(api, engine) == [], "first runs: the key is full"
        await engine.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "refusal", [ApiError(422, "PATCH", "/jobs/first", "test failed"), NotLeading("PATCH")], ids=["422", "not-sent"]
)
def test_a_definite_refusal_frees_the_slot_at_once(refusal: Exception) -> None:
    async def scenario() -> None:
        api = LossyApi(failure=refusal, apply_patch=False)
        engine = queued_in_one_slot(api, Clock(), "first")
        assert admitted_names(api, engine) == ["first"]
        await settle()
        assert not term_of(engine).expected
        assert admitted_names(api, engine) == ["first"]
        await engine.close()

    asyncio.run(scenario())


def test_an_admission_found_to_have_landed_is_counted_once() -> None:
    async def scenario() -> float:
        clock = Clock()
        api = LossyApi(failure=TimeoutError())
        engine = queued_in_one_slot(api, clock, "first")
        assert admitted_names(api, engine) == ["first"]
        await settle()
        engine.observe_job("MODIFIED", api.jobs["first"])  # the watch shows the patch landed
        await engine.close()
        return sum(s.value for s in engine.metrics.admissions.collect()[0].samples if s.name.endswith("_total"))

    assert asyncio.run(scenario()) == 1
