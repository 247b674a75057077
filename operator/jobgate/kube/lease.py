"""Leader election on a coordination.k8s.io/v1 Lease: one replica admits; every replica serves the webhook.

The algorithm is client-go's: the holder renews the Lease every retry period;
a candidate takes it over only after it has seen the same record unchanged for
a whole lease duration (judged by its own clock, so clocks need not agree);
every write is a PUT carrying the resourceVersion it read, so two candidates
can never both win. A leader that cannot renew within the renew deadline
stops admitting at once — before any candidate may take over.
(`kubernetes.aio.leaderelection` in client 37.0.2 cannot create a Lease: it
passes `pretty=True` where a string is required.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jobgate.core.timestamps import format_timestamp
from jobgate.kube.api import ApiError, KubeApi

log = logging.getLogger("jobgate.leader")


@dataclass(frozen=True)
class LeaseTiming:
    lease_seconds: float = 15.0
    renew_seconds: float = 10.0  # give up leading when renewals fail for this long
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_seconds > self.renew_seconds > self.retry_seconds > 0:
            raise ValueError("lease duration > renew deadline > retry period > 0 is required")


class Leadership:
    """Runs `lead` while this replica holds the Lease, and cancels it when the Lease may be lost."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        lead: Callable[[], Awaitable[None]],
        timing: LeaseTiming | None = None,
    ) -> None:
        self.api = api
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.create_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name = name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self.is_leader = False
        self._lead = lead
        self._observed: tuple[Any, ...] | None = None  # the holder's record as last seen
        self._observed_at = 0.0  # when it last changed, by our clock

    async def run(self) -> None:
        try:
            while True:
                await self._acquire()
                await self._hold()
        finally:
            # Not `if self.is_leader`: _hold has reset it by now. _release checks the holder itself.
            self.is_leader = False
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release())

    async def _acquire(self) -> None:
        while not await self._try_acquire_or_renew():  # noqa: ASYNC110 - polling the Lease is the protocol
            await asyncio.sleep(self.timing.retry_seconds)
        self.is_leader = True
        log.info("acquired Lease %s as %s: admitting Jobs", self.name, self.identity)

    async def _hold(self) -> None:
        leading = asyncio.create_task(self._lead_until_cancelled())
        last_renewal = time.monotonic()
        try:
            while not leading.done():
                await asyncio.sleep(self.timing.retry_seconds)
                if await self._try_acquire_or_renew():
                    last_renewal = time.monotonic()
                elif time.monotonic() - last_renewal > self.timing.renew_seconds:
                    log.warning(
                        "could not renew Lease %s for %.0fs: stopped admitting", self.name, self.timing.renew_seconds
                    )
                    break
        finally:
            self.is_leader = False
            leading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leading

    async def _lead_until_cancelled(self) -> None:
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

    async def _try_acquire_or_renew(self) -> bool:
        now = time.time()
        try:
            _, lease = await self.api.request("get", self.path, "leases")
        except ApiError as e:
            if e.status != 404:
                log.warning("reading Lease %s failed: %s", self.name, e)
                return False
            return await self._write("create", self.create_path, self._lease(None, now, acquired=True))
        except Exception as e:
            log.warning("reading Lease %s failed: %s", self.name, e)
            return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.timing.lease_seconds)
        expired = time.monotonic() - self._observed_at > duration
        if holder and holder != self.identity and not expired:
            return False
        return await self._write("update", self.path, self._lease(lease, now, acquired=holder != self.identity))

    def _lease(self, current: dict[str, Any] | None, now: float, acquired: bool) -> dict[str, Any]:
        lease = current or {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": self.name}}
        spec = dict(lease.get("spec") or {})
        stamp = format_timestamp(now)
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=int(self.timing.lease_seconds), renewTime=stamp)
        if acquired:
            spec["acquireTime"] = stamp
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if current else 0)
        return {**lease, "spec": spec}

    async def _write(self, verb: str, path: str, lease: dict[str, Any]) -> bool:
        try:
            # PUT carries metadata.resourceVersion: a concurrent writer makes it fail with 409.
            await self.api.request(verb, path, "leases", body=lease, timeout=self.timing.retry_seconds)
        except Exception as e:
            if not (isinstance(e, ApiError) and e.status == 409):
                log.warning("writing Lease %s failed: %s", self.name, e)
            return False
        return True

    async def _release(self) -> None:
        """Hand over at once on a clean shutdown, instead of after a lease duration."""
        _, lease = await self.api.request("get", self.path, "leases", timeout=2)
        if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"].update(holderIdentity="", leaseDurationSeconds=1)
        await self.api.request("update", self.path, "leases", body=lease, timeout=2)
        log.info("released Lease %s", self.name)
