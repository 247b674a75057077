"""Leader election against an in-memory Lease: stopping the leader hands the Lease over at once."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from typing import Any, cast

import pytest

from jobgate.kube.api import ApiError, KubeApi
from jobgate.kube.lease import BadLeaseTiming, Leadership, LeaseTiming
from tests.support.engines import until

TIMING = LeaseTiming(lease_seconds=3, renew_seconds=2, retry_seconds=0.05, write_timeout=0.5, margin_seconds=0.1)


class FakeLeases:
    """One Lease behind `KubeApi.request`, with the API server's create/update conflict rules."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    async def request(self, verb: str, path: str, resource: str, body: Any = None, **_: Any) -> tuple[int, Any]:
        if verb == "get":
            if self.lease is None:
                raise ApiError(404, "GET", path, '{"message": "not found"}')
            return 200, copy.deepcopy(self.lease)
        if verb == "create" and self.lease is not None:
            raise ApiError(409, "POST", path, '{"message": "exists"}')
        if verb == "update" and (self.lease or {}).get("metadata", {}).get("resourceVersion") != body.get(
            "metadata", {}
        ).get("resourceVersion"):
            raise ApiError(409, "PUT", path, '{"message": "conflict"}')
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return 200, copy.deepcopy(self.lease)

    @property
    def holder(self) -> str:
        return str(((self.lease or {}).get("spec") or {}).get("holderIdentity"))


def candidate(leases: FakeLeases, identity: str, leading: asyncio.Event) -> Leadership:
    async def lead() -> None:
        leading.set()
        await asyncio.Event().wait()  # admit until cancelled

    return Leadership(cast(KubeApi, leases), "ns", "jobgate-leader", identity, lead, TIMING)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_a_leader_that_is_stopped_releases_the_lease() -> None:
    async def scenario() -> FakeLeases:
        leases, leading = FakeLeases(), asyncio.Event()
        first = candidate(leases, "first", leading)
        task = asyncio.create_task(first.run())
        await asyncio.wait_for(leading.wait(), 5)
        assert (first.is_leader, leases.holder) == (True, "first")
        await stop(task)
        assert not first.is_leader
        return leases

    leases = asyncio.run(scenario())
    assert leases.holder == ""


def test_a_released_lease_is_taken_over_without_waiting_for_it_to_expire() -> None:
    async def scenario() -> float:
        leases = FakeLeases()
        first_leads, second_leads = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(candidate(leases, "first", first_leads).run())
        await asyncio.wait_for(first_leads.wait(), 5)
        second = asyncio.create_task(candidate(leases, "second", second_leads).run())
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        await stop(first)
        await asyncio.wait_for(second_leads.wait(), TIMING.lease_seconds)
        took = loop.time() - stopped
        assert leases.holder == "second"
        await stop(second)
        return took

    assert asyncio.run(scenario()) < TIMING.lease_seconds / 2


@pytest.mark.parametrize(
    ("timing", "broken"),
    [
        ({"lease_seconds": 10, "renew_seconds": 9, "retry_seconds": 1, "write_timeout": 2}, "lease duration 10s >="),
        ({"lease_seconds": 15, "renew_seconds": 5, "retry_seconds": 2, "write_timeout": 2}, "renew deadline 5s >="),
        ({"lease_seconds": 15, "renew_seconds": 10, "retry_seconds": 0, "write_timeout": 2}, "must be positive"),
    ],
    ids=["last-write-lands-after-takeover", "no-write-between-renewals", "zero-retry"],
)
def test_unsafe_lease_timings_are_refused_naming_the_inequality(timing: dict[str, float], broken: str) -> None:
    with pytest.raises(BadLeaseTiming, match=broken):
        LeaseTiming(**timing)


@pytest.mark.parametrize("lease", [3.0, 4.0, 15.0, 60.0])
def test_scaled_timings_let_every_write_land_before_a_successor_may_act(lease: float) -> None:
    timing = LeaseTiming.for_lease(lease)
    # The latest write starts write_window after the renewal was sent and lands 2 write timeouts later.
    assert timing.write_window + timing.landing_seconds + timing.margin_seconds <= timing.lease_seconds
    assert timing.write_window >= 2 * timing.retry_seconds  # a healthy leader always may write


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_writes_are_allowed_only_within_the_window_after_the_last_renewal_was_sent() -> None:
    async def scenario() -> list[bool]:
        leases, clock = FakeLeases(), Clock()
        leadership = Leadership(cast(KubeApi, leases), "ns", "l", "me", asyncio.Event().wait, TIMING, clock=clock)
        seen = [leadership.may_write()]  # not leading yet
        assert await leadership._renew()
        leadership.is_leader = True
        seen.append(leadership.may_write())
        clock.now += TIMING.write_window
        seen.append(leadership.may_write())
        clock.now += 0.001
        seen.append(leadership.may_write())
        return seen

    assert asyncio.run(scenario()) == [False, True, True, False]


def test_a_stalled_event_loop_ends_the_term_and_leading_starts_again_from_scratch() -> None:
    async def scenario() -> tuple[int, list[str]]:
        leases, terms = FakeLeases(), []
        second_term = asyncio.Event()

        async def lead() -> None:
            terms.append("started")
            if terms.count("started") == 2:
                second_term.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                terms.append("ended")
                raise

        # Slower than TIMING: on a loaded machine, 50 ms hiccups of the loop would end terms at random.
        timing = LeaseTiming(lease_seconds=6, renew_seconds=4, retry_seconds=0.5, write_timeout=1, margin_seconds=0.3)
        leadership = Leadership(cast(KubeApi, leases), "ns", "l", "me", lead, timing)
        task = asyncio.create_task(leadership.run())
        await until(lambda: terms == ["started"], "the first term started")
        # The whole loop stops, as under SIGSTOP or a long GC pause, for longer than writes may go on.
        time.sleep(timing.write_window + timing.retry_seconds)  # noqa: ASYNC251

        assert not leadership.may_write(), "no write may leave after a stall until a fresh renewal"
        await asyncio.wait_for(second_term.wait(), 10)
        await stop(task)
        return leadership.terms, terms

    terms_begun, seen = asyncio.run(scenario())
    assert terms_begun >= 2
    assert seen[:3] == ["started", "ended", "started"], "the old term ended before the new one began"
