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
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jobgate.core.timestamps import format_timestamp
from jobgate.kube.api import ApiError, KubeApi

log = logging.getLogger("jobgate.leader")


class BadLeaseTiming(ValueError):
    """Lease timings that cannot keep a stalled or partitioned leader from writing after losing the Lease."""


@dataclass(frozen=True)
class LeaseTiming:
    """The Lease's timings, and the inequality that makes a leader's write safe.

    A replica that sent a successful renewal at monotonic time T holds the Lease
    until at least T + lease_seconds: a candidate takes over only after it has seen
    that renewal's record unchanged for a whole lease duration, by its own clock,
    and it can only have seen it after it was written, which is after T.

    jobgate starts a Job write only while now - T <= write_window, where

        write_window = renew_seconds - write_timeout - margin_seconds,

    and a write sent at s has landed, or never will, by s + 2 x write_timeout: the
    client gives up after write_timeout, and the API server, told ``?timeout=``,
    stops working on a request write_timeout after receiving it (assumed: a request
    reaches the API server within its timeout or not at all). So every write lands
    by T + renew_seconds + write_timeout - margin_seconds, before any successor can
    act, if

        lease_seconds >= renew_seconds + write_timeout.

    A healthy leader renews every retry_seconds, each attempt bounded by
    retry_seconds, so its last successful renewal is at most 2 x retry_seconds
    old; for writes to go on between renewals:

        renew_seconds >= 2 x retry_seconds + write_timeout + margin_seconds.

    margin_seconds covers clocks that run at slightly different rates and the
    instant between the check and the request leaving (a stall exactly there is
    the one gap no client can close, as client-go documents for its own election).
    """

    lease_seconds: float = 15.0
    renew_seconds: float = 10.0  # stop leading when no renewal succeeded for this long
    retry_seconds: float = 2.0  # renew this often; each Lease call is bounded by it too
    write_timeout: float = 2.5  # every Job write ends within this, or is given up on
    margin_seconds: float = 0.75

    def __post_init__(self) -> None:
        if min(self.retry_seconds, self.write_timeout) <= 0 or self.margin_seconds < 0:
            raise BadLeaseTiming("retry period and write timeout must be positive, the margin not negative")
        needed = 2 * self.retry_seconds + self.write_timeout + self.margin_seconds
        if not self.renew_seconds >= needed:
            raise BadLeaseTiming(
                f"renew deadline {self.renew_seconds:g}s >= 2 x retry period {self.retry_seconds:g}s + write timeout "
                f"{self.write_timeout:g}s + margin {self.margin_seconds:g}s (= {needed:g}s) must hold, "
                "or a healthy leader could not write between renewals"
            )
        if not self.lease_seconds >= self.renew_seconds + self.write_timeout:
            raise BadLeaseTiming(
                f"lease duration {self.lease_seconds:g}s >= renew deadline {self.renew_seconds:g}s + write timeout "
                f"{self.write_timeout:g}s must hold, or a leader's last write could land after another replica "
                "took the Lease"
            )

    @property
    def landing_seconds(self) -> float:
        """A write sent now has landed, or never will, this long from now."""
        return 2 * self.write_timeout

    @classmethod
    def for_lease(cls, lease_seconds: float) -> LeaseTiming:
        """The defaults scaled to a lease duration: 15 s gives renew 10, retry 1.875, write 2.5, margin 0.75."""
        return cls(
            lease_seconds=lease_seconds,
            renew_seconds=lease_seconds * 2 / 3,
            retry_seconds=lease_seconds / 8,
            write_timeout=lease_seconds / 6,
            margin_seconds=lease_seconds / 20,
        )

    @property
    def write_window(self) -> float:
        return self.renew_seconds - self.write_timeout - self.margin_seconds


class Leadership:
    """Runs `lead` once per term while this replica holds the Lease, and proves the hold to every write.

    A term ends when a renewal has not succeeded within the renew deadline, or when
    the process or its event loop was stopped for longer than the retry period (the
    term's knowledge may be stale and a successor may have acted). A new term
    starts only after a fresh successful renewal; `lead` then starts from nothing.
    """

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        lead: Callable[[], Awaitable[None]],
        timing: LeaseTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.create_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name = name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self.is_leader = False
        self.terms = 0  # terms begun: each is a fresh start of `lead`
        self._lead = lead
        self._clock = clock
        self._renewed_sent_at: float | None = None  # monotonic time the last successful renewal was sent
        self._observed: tuple[Any, ...] | None = None  # the holder's record as last seen
        self._observed_at = 0.0  # when it last changed, by our clock

    def may_write(self) -> bool:
        """Whether a write that starts now ends before any other replica could take the Lease.

        Synchronous and cheap: called immediately before each Job write is sent.
        """
        sent = self._renewed_sent_at
        return self.is_leader and sent is not None and self._clock() - sent <= self.timing.write_window

    async def run(self) -> None:
        try:
            while True:
                await self._acquire()
                await self._hold()
        finally:
            # Not `if self.is_leader`: _hold has reset it by now. _release checks the holder itself.
            self._end_term()
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release())

    async def _acquire(self) -> None:
        while not await self._renew():  # noqa: ASYNC110 - polling the Lease is the protocol
            await asyncio.sleep(self.timing.retry_seconds)
        self.is_leader = True
        self.terms += 1
        log.info("acquired Lease %s as %s: admitting Jobs (term %d)", self.name, self.identity, self.terms)

    async def _hold(self) -> None:
        leading = asyncio.create_task(self._lead_until_cancelled())
        stalled = asyncio.create_task(self._watch_for_stalls())
        renewing = asyncio.create_task(self._renew_until_deadline())
        try:
            await asyncio.wait({leading, stalled, renewing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._end_term()
            for task in (leading, stalled, renewing):
                task.cancel()
            await asyncio.gather(leading, stalled, renewing, return_exceptions=True)

    def _end_term(self) -> None:
        self.is_leader = False
        self._renewed_sent_at = None

    async def _renew_until_deadline(self) -> None:
        while True:
            await asyncio.sleep(self.timing.retry_seconds)
            if await self._renew():
                continue
            sent = self._renewed_sent_at
            if sent is None or self._clock() - sent > self.timing.renew_seconds:
                log.warning("could not renew Lease %s for %gs: stopped admitting", self.name, self.timing.renew_seconds)
                return

    async def _watch_for_stalls(self) -> None:
        """End the term when the process or the event loop was stopped for longer than the retry period.

        After such a gap another replica may have led and admitted: what this term knew
        about Jobs may be stale, so it is dropped, and leading starts again from a LIST.
        """
        tick = self.timing.retry_seconds / 4
        before = self._clock()
        while True:
            await asyncio.sleep(tick)
            now = self._clock()
            gap, before = now - before - tick, now
            if gap > self.timing.retry_seconds:
                log.warning("this process was stalled for %.1fs: ending the term, leading again from a LIST", gap)
                return

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

    async def _renew(self) -> bool:
        """Take or renew the Lease; on success, remember when the attempt was sent."""
        sent = self._clock()
        try:
            # asyncio.timeout, not wait_for: in Python 3.11, wait_for can swallow a cancellation that
            # arrives as the inner call completes, and a renewal loop that outlives its term renews forever.
            async with asyncio.timeout(self.timing.retry_seconds):
                won = await self._try_acquire_or_renew()
        except TimeoutError:
            log.warning("renewing Lease %s took over %gs: given up", self.name, self.timing.retry_seconds)
            return False
        if won:
            self._renewed_sent_at = sent
        return won

    async def _try_acquire_or_renew(self) -> bool:
        now = time.time()
        try:
            _, lease = await self.api.request("get", self.path, "leases", timeout=self.timing.retry_seconds)
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
            self._observed, self._observed_at = record, self._clock()
        duration = float(spec.get("leaseDurationSeconds") or self.timing.lease_seconds)
        expired = self._clock() - self._observed_at > duration
        if holder and holder != self.identity and not expired:
            return False
        return await self._write("update", self.path, self._lease(lease, now, acquired=holder != self.identity))

    def _lease(self, current: dict[str, Any] | None, now: float, acquired: bool) -> dict[str, Any]:
        lease = current or {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": self.name}}
        spec = dict(lease.get("spec") or {})
        stamp = format_timestamp(now)
        spec.update(
            holderIdentity=self.identity, leaseDurationSeconds=math.ceil(self.timing.lease_seconds), renewTime=stamp
        )
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
