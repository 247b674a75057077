"""Leader election against an in-memory Lease: stopping the leader hands the Lease over at once."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from typing import Any, cast

from jobgate.kube.api import ApiError, KubeApi
from jobgate.kube.lease import Leadership, LeaseTiming

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
