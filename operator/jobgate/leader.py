"""Leader election on a Lease: exactly one replica admits; every replica serves the webhook."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kubernetes.aio import client as aio_client
from kubernetes.aio.leaderelection.electionconfig import Config
from kubernetes.aio.leaderelection.leaderelection import LeaderElection
from kubernetes.aio.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger("jobgate.leader")


class Leadership:
    """Runs `lead` while this replica holds the Lease, and cancels it the moment the Lease is lost."""

    def __init__(
        self,
        api_client: aio_client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        lead: Callable[[], Awaitable[None]],
        lease_seconds: int = 15,
        renew_seconds: int = 10,
        retry_seconds: int = 2,
    ) -> None:
        self.is_leader = False
        self.identity = identity
        self._lead = lead
        self._lock = (name, namespace, identity, api_client)
        # The aio LeaseLock parses durations with int(): they must be whole seconds.
        self._timing = (lease_seconds, renew_seconds, retry_seconds)

    def _config(self) -> Config:
        lease, renew, retry = self._timing
        return Config(
            lock=LeaseLock(*self._lock),
            lease_duration=lease,
            renew_deadline=renew,
            retry_period=retry,
            onstarted_leading=self._leading,
            onstopped_leading=self._stopped,
        )

    async def _leading(self) -> None:
        self.is_leader = True
        log.info("acquired the leader Lease as %s: admitting Jobs", self.identity)
        while True:
            try:
                await self._lead()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # Holding the Lease without admitting would idle every queue: start over.
                log.exception("the engine failed while leading; restarting it in 2s")
                await asyncio.sleep(2)

    async def _stopped(self) -> None:
        self.is_leader = False
        log.warning("lost the leader Lease: stopped admitting")

    async def run(self) -> None:
        while True:
            await LeaderElection(self._config()).run()  # returns when the Lease is lost
            self.is_leader = False


async def lead_without_election(lead: Callable[[], Awaitable[None]]) -> None:
    await lead()
