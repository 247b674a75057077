"""The gating engine: keeps the cache fed, decides on every change, writes the decisions.

One decision path per process. Each pass takes the cache as it is, asks the pure
core (`admission.plan`) what to do, marks admissions as assumed, and sends the
patches. An assumed admission holds its slot until the API answers: on success
the returned object replaces the cached view, on refusal the assumption is
forgotten and the watch brings the state to decide on again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from jobgate.core import admission, patches
from jobgate.core.admission import describe_key
from jobgate.core.jobs import JobView
from jobgate.core.policy import ConcurrencyPolicy
from jobgate.engine import evictions, watches
from jobgate.engine.cache import ClusterCache
from jobgate.engine.status import StatusWriter
from jobgate.engine.watches import JobStream
from jobgate.kube.api import WatchExpired
from jobgate.telemetry.metrics import Metrics

log = logging.getLogger("jobgate.engine")

PACE_ABOVE_SECONDS = 0.002  # passes quicker than this follow each other at once
PACE_AT_MOST_SECONDS = 0.05


class ClusterApi(Protocol):
    """The API calls the engine needs; `kube.KubeApi` is the real one."""

    async def list_jobs(self, namespace: str | None, label_selector: str | None = None) -> tuple[list[JobView], int]:
        """Every Job as a view, and the LIST's resourceVersion."""
        ...

    def watch_jobs(
        self, namespace: str | None, label_selector: str | None, resource_version: int, timeout_seconds: int = 300
    ) -> AsyncIterator[tuple[str, Mapping[str, Any]]]:
        """Watch events from resource_version; raises kube.WatchExpired when it is too old."""
        ...

    async def get_job(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The Job's body; None when there is no Job of that name."""
        ...

    async def list_policies(self, namespace: str | None) -> tuple[list[Mapping[str, Any]], int]: ...

    async def patch_job(self, namespace: str, name: str, patch: patches.JsonPatch) -> Mapping[str, Any] | None:
        """Apply a JSON patch; None when the API refused it (gone, or a test failed)."""
        ...

    async def patch_policy_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...

    async def delete_job(self, job: JobView) -> bool:
        """Delete the Job at the version given; False when it is gone or changed since."""
        ...

    async def post_event(self, job: JobView, type_: str, reason: str, message: str) -> None: ...


@dataclass(frozen=True)
class EngineSettings:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    job_selector: str | None = None  # narrows every Job watch, server-side
    resync_seconds: float = 300.0
    watch_seconds: int = 300  # the server ends each watch after this; it resumes where it ended
    status_seconds: float = 1.0
    write_concurrency: int = 16
    # Events are best effort and must never take the connections admissions and the Lease need:
    # a burst of new Jobs once queued thousands of Queued events ahead of every admission.
    event_concurrency: int = 4


class Engine:
    def __init__(
        self,
        api: ClusterApi,
        settings: EngineSettings,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.cache = ClusterCache()
        self.assumed: set[str] = set()
        self.announced: set[str] = set()  # Jobs whose Queued event (or warning) was posted
        self.started = clock()
        self.status = StatusWriter(api, clock)
        self._wake = asyncio.Event()
        self._dirty_since: float | None = None  # when the oldest unhandled change arrived
        self._background: set[asyncio.Task[None]] = set()
        self._write_limit = asyncio.Semaphore(settings.write_concurrency)
        self._event_limit = asyncio.Semaphore(settings.event_concurrency)
        self._writes: set[asyncio.Task[None]] = set()  # patches in flight, cancelled when leading ends
        self._writing: set[str] = set()  # uids of the Jobs they patch
        self._refused: set[str] = set()  # Jobs whose patch was refused: their next event wakes a pass
        self._streams: dict[JobStream, asyncio.Task[None]] = {}  # the Job watches, while leading
        self._streams_stale = False  # policies changed: the set of watches may have to follow
        self._streams_lock = asyncio.Lock()
        self._confirming: set[str] = set()  # Jobs being read back to learn whether they are gone
        self._recheck: dict[str, int] = {}  # Jobs said gone while a write was in flight: version said
        self.leading = False

    # --- feeding: called from watch handlers, synchronous and cheap -------------------------------

    def observe_job(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        if not self.leading:
            return  # followers keep no Jobs: a new leader starts from a fresh LIST
        view = JobView.from_body(body)
        if event_type == "DELETED":
            cached = self.cache.jobs.get(view.uid)
            if cached is None or cached.resource_version >= view.resource_version:
                self.cache.delete_job(view.uid, view.resource_version)  # a tombstone, or nothing newer to undo
                return
            self._refused.discard(view.uid)
            changed = self._gone_from_a_watch(cached, view.resource_version, deleted=True)
        else:
            changed = self._store(view)
        if changed:
            self.changed()

    def _store(self, view: JobView) -> bool:
        """Keep the newest state of a Job that matters, forget one that stopped mattering.

        Returns whether a decision could change.
        """
        if not self._keeps(view):
            return self.cache.forget_job(view) is not None
        before = self.cache.jobs.get(view.uid)
        if self.cache.put_job(view) is None:
            return False
        # Most events are the Job controller's status writes, which change nothing that a
        # decision reads: the cache takes their resourceVersion, but no pass is needed.
        changed = before is None or view.uid in self._refused or not before.same_state(view)
        self._refused.discard(view.uid)
        return changed

    def _keeps(self, job: JobView) -> bool:
        """Only Jobs that a policy governs, or that we queued and may have to release, cost memory."""
        if job.finished:
            return False  # finished is final: the Job holds no slot and never will again
        if job.queued_at is not None and job.suspended and job.admitted_at is None:
            return True
        return bool(self.cache.policy_index.governance(job))

    def _gone_from_a_watch(self, job: JobView, version: int, *, deleted: bool) -> bool:
        """A watch said DELETED, or a LIST lacked the Job: it was deleted, or relabeled out of that selector.

        Only a deletion frees a slot; a relabeled Job may still be governed through another
        watch that has not caught up. So a Job that holds a slot, or has a write in flight,
        stays counted until the API says which. Returns whether the cache changed.
        """
        if job.uid in self._writing:
            self._recheck[job.uid] = max(version, self._recheck.get(job.uid, 0))
            return False
        if job.running:
            self._confirm(job, version)
            return False
        if deleted:
            return self.cache.delete_job(job.uid, version) is not None
        return self.cache.forget_job(job) is not None  # another watch may bring it back, even older

    def _confirm(self, job: JobView, version: int) -> None:
        """Read the Job back: gone frees its slot, otherwise its current labels say who governs it."""
        if job.uid in self._confirming:
            return
        self._confirming.add(job.uid)

        async def confirm() -> None:
            try:
                while True:
                    try:
                        body = await self.api.get_job(job.namespace, job.name)
                        break
                    except Exception as e:  # it keeps its slot until we know
                        log.warning("could not read Job %s/%s back (%s); retrying", job.namespace, job.name, e)
                        await asyncio.sleep(1.0)
            finally:
                self._confirming.discard(job.uid)
            if body is None or body["metadata"]["uid"] != job.uid:
                changed = self.cache.delete_job(job.uid, version) is not None
            else:
                changed = self._store(JobView.from_body(body))
            if changed:
                self.changed()

        self._spawn(confirm())

    def observe_policy(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        ref = (meta["namespace"], meta["name"])
        before = self.cache.policies.get(ref)
        if event_type == "DELETED":
            changed = self.cache.delete_policy(ref)
        else:
            changed = self.cache.put_policy(ConcurrencyPolicy.from_body(body), int(meta.get("resourceVersion") or 0))
        if not changed:
            return
        after = self.cache.policies.get(ref)
        if before is None or after is None or before.spec.selector != after.spec.selector:
            self._streams_stale = True  # the next pass first watches (and lists) what it now selects
        self.changed()

    def changed(self) -> None:
        """What jobgate knows changed: decide again, and write the policies' status."""
        self.status.mark_dirty()
        self.wake()

    def wake(self) -> None:
        if self._dirty_since is None:
            self._dirty_since = self.clock()
        self._wake.set()

    # --- leading: only the elected replica runs this ----------------------------------------------

    async def lead(self) -> None:
        """List and watch the Jobs that policies select, and decide on every change until cancelled.

        Only the leader watches Jobs: a follower holds nothing but policies (for the webhook).
        """
        self.leading = True
        try:
            await self.sync(announce=False)
            tasks = [self._spawn(self._decide_forever()), self._spawn(self._resync_forever())]
            tasks.append(self._spawn(self._write_status_forever()))
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in [*tasks, *self._writes, *self._streams.values()]:
                    task.cancel()
        finally:
            self.leading = False
            self._streams.clear()
            self.assumed.clear()
            self.cache.forget_all_jobs()

    async def sync_policies(self) -> None:
        for namespace in self._scopes():
            bodies, version = await self.api.list_policies(namespace)
            parsed = [(ConcurrencyPolicy.from_body(b), int(b["metadata"].get("resourceVersion") or 0)) for b in bodies]
            self.cache.replace_policies(parsed, version, namespace)
        self.cache.policies_primed = True

    async def sync(self, announce: bool = True) -> None:
        """Re-read policies and Jobs: the truth after restarts, leader changes and watch gaps."""
        await self.sync_policies()
        await self._follow_streams(relist=True)
        if not announce:
            # Jobs queued before this process started had their Queued event from our predecessor;
            # those created since (e.g. while we waited for the Lease) get theirs now. creationTimestamp
            # has whole seconds: a Job of our first second is announced, at worst twice.
            self.announced.update(
                uid for uid, job in self.cache.jobs.items() if job.suspended and job.created < int(self.started)
            )
        self.cache.primed = True
        self.changed()

    async def _follow_streams(self, relist: bool = False) -> None:
        """Watch what the policies select now: a new stream is listed before the next decision."""
        async with self._streams_lock:
            wanted = watches.wanted(self.cache.policies.values(), self._scopes(), self.settings.job_selector)
            for stream in self._streams.keys() - wanted:
                self._streams.pop(stream).cancel()
                log.info("stopped watching %s", stream)
            for stream in wanted:
                if stream in self._streams:
                    if relist:
                        await self._list_jobs(stream)
                    continue
                version = await self._list_jobs(stream)
                self._streams[stream] = self._spawn(self._watch_jobs(stream, version))
                log.info("watching %s from version %d", stream, version)
            # Jobs that only a stopped stream brought, or that no policy governs now, cost nothing more.
            for job in [job for job in self.cache.jobs.values() if not self._keeps(job)]:
                self.cache.forget_job(job)

    async def _list_jobs(self, stream: JobStream) -> int:
        """LIST one stream's Jobs into the cache; returns the version its watch goes on from."""
        views, version = await self.api.list_jobs(stream.namespace, stream.selector or None)
        missing = self.cache.apply_list(views, version, stream.covers, self._keeps)
        log.debug("listed %d %s at version %d: keeping %d in all", len(views), stream, version, len(self.cache.jobs))
        if sum(self._gone_from_a_watch(job, version, deleted=False) for job in missing):
            self.changed()
        return version

    async def _watch_jobs(self, stream: JobStream, version: int) -> None:
        """Follow one stream from `version`, as client-go's reflector does.

        A stream the server ends is resumed from the last version seen (bookmarks keep it
        fresh); a version the server no longer has (410 Gone) means a new LIST, which also
        finds the Jobs deleted meanwhile. Errors back off up to 30 s and never end leading.
        """
        failures = 0
        while True:
            try:
                async for event_type, body in self.api.watch_jobs(
                    stream.namespace, stream.selector or None, version, self.settings.watch_seconds
                ):
                    version = int(body["metadata"].get("resourceVersion") or version)
                    if event_type != "BOOKMARK":
                        self.observe_job(event_type, body)
                    failures = 0
            except WatchExpired:
                log.info("watch of %s expired at version %d: listing again", stream, version)
                version = await self._list_jobs(stream)
            except Exception as e:  # a broken stream is retried, never fatal
                failures += 1
                delay = min(30.0, 0.5 * 2**failures)
                log.warning("watch of %s failed (%s); retrying in %.1fs", stream, e, delay)
                await asyncio.sleep(delay)

    def _scopes(self) -> tuple[str | None, ...]:
        return self.settings.namespaces or (None,)

    async def _decide_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            started = self._dirty_since
            self._dirty_since = None
            while self._streams_stale:
                self._streams_stale = False
                await self._follow_streams()
            began = time.monotonic()
            self.decide_once(started)
            spent = time.monotonic() - began
            if spent > PACE_ABOVE_SECONDS:
                # Under load, a pass over thousands of Jobs follows every few events: leave the loop
                # as long again for reading watches and answers, and let the next pass take them all.
                await asyncio.sleep(min(spent, PACE_AT_MOST_SECONDS))

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            await self.sync()

    async def _write_status_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_seconds)
            await self.status.write(self.cache, self.assumed, self.metrics)

    def decide_once(self, triggered_at: float | None = None) -> admission.Plan:
        if not self.cache.primed:
            return admission.Plan()
        policies = list(self.cache.policies.values())
        jobs = list(self.cache.jobs.values())
        plan = admission.plan(policies, jobs, self.assumed, self.cache.policy_index)
        log.debug(
            "decided on %d Job(s), %d policies: admit %d, resuspend %d, release %d",
            len(jobs),
            len(policies),
            len(plan.admit),
            len(plan.resuspend),
            len(plan.release),
        )
        self._announce(jobs, plan)
        if plan.admit or plan.resuspend or plan.release:
            self.status.mark_dirty()
        for job in plan.admit:
            self.assumed.add(job.uid)
        # The writes go on in the background: the next pass need not wait for this one's slowest
        # patch. Admissions in flight are assumed (they hold their slots); a Job with a re-suspension
        # or release in flight is not written again until that write has returned.
        for job in plan.admit:
            self._write(job, self._admit(job, policies, triggered_at))
        for job in plan.resuspend:
            if job.uid not in self._writing:
                self._write(job, self._resuspend(job))
        for job in plan.release:
            if job.uid not in self._writing:
                self._write(job, self._release(job))
        for job in plan.evict:  # full ReplaceOldest queues: see evictions.py
            if job.uid not in self._writing:
                govs = self.cache.policy_index.governance_of(job)
                self._write(job, evictions.evict(self.api, job, govs, self.metrics, self._post, self._after_eviction))
        return plan

    def _write(self, job: JobView, write: Coroutine[Any, Any, None]) -> None:
        async def tracked() -> None:
            try:
                await write
            finally:  # before any pass that this write's outcome wakes
                self._writing.discard(job.uid)
                self._recheck_after_write(job.uid)

        self._writing.add(job.uid)
        task = self._spawn(tracked())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _recheck_after_write(self, uid: str) -> None:
        """A watch said the Job gone while we wrote it: unless our write's answer is newer, find out."""
        said_gone_at = self._recheck.pop(uid, None)
        cached = self.cache.jobs.get(uid)
        if said_gone_at is None or cached is None or cached.resource_version >= said_gone_at:
            return
        if self._gone_from_a_watch(cached, said_gone_at, deleted=False):
            self.changed()

    # --- writes -----------------------------------------------------------------------------------

    async def _patch(self, job: JobView, patch: patches.JsonPatch) -> JobView | None:
        async with self._write_limit:
            body = await self.api.patch_job(job.namespace, job.name, patch)
        if body is None:
            self._refused_write(job)
            return None
        view = JobView.from_body(body)
        self._store(view)  # a released Job, say, is forgotten here: no watch may bring it again
        return view

    def _refused_write(self, job: JobView) -> None:
        """A write decided on `job` was refused: the Job changed since. Decide again on the change.

        If the watch brought the change while the write was in flight, no event is left to
        wake the decision up (a status-only change wakes none): wake it now.
        """
        cached = self.cache.jobs.get(job.uid)
        if cached is not None and cached.resource_version > job.resource_version:
            self.wake()
        else:
            self._refused.add(job.uid)

    async def _admit(self, job: JobView, policies: list[ConcurrencyPolicy], triggered_at: float | None) -> None:
        now = self.clock()
        try:
            admitted = await self._patch(job, patches.admit(job, now))
        except Exception:
            log.exception("admitting Job %s/%s failed; it stays queued", job.namespace, job.name)
            admitted = None
            self._retry_later()
        finally:
            self.assumed.discard(job.uid)
        if admitted is None:
            return
        govs = admission.governance(policies, job)
        queued_since = job.queued_at or job.created
        for gov in govs:
            self.metrics.admitted(gov.policy, waited=max(0.0, now - queued_since))
        if triggered_at is not None:
            self.metrics.decision_latency.observe(max(0.0, now - triggered_at))
        where = "; ".join(f"policy {g.policy.name} key {describe_key(g.policy, g.key)}" for g in govs)
        self._post(job, "Normal", "Admitted", f"Admitted by {where} after {now - queued_since:.1f}s queued")

    async def _resuspend(self, job: JobView) -> None:
        try:
            done = await self._patch(job, patches.resuspend(job, self.clock()))
        except Exception:
            log.exception("re-suspending Job %s/%s failed", job.namespace, job.name)
            self._retry_later()
            return
        if done is not None:
            self._post(
                job,
                "Warning",
                "Resuspended",
                "Suspended again: it was unsuspended without jobgate's admission while its key "
                "had no free slot; it is queued now",
            )

    async def _release(self, job: JobView) -> None:
        try:
            done = await self._patch(job, patches.release(job))
        except Exception:
            log.exception("releasing Job %s/%s failed", job.namespace, job.name)
            self._retry_later()
            return
        if done is not None:
            self._post(job, "Normal", "Released", "Unsuspended: no ConcurrencyPolicy governs this Job any more")

    def _after_eviction(self, job: JobView, outcome: evictions.Outcome) -> None:
        if outcome == "refused":
            self._refused_write(job)
        elif outcome == "failed":
            self._retry_later()

    def _retry_later(self, delay: float = 1.0) -> None:
        async def retry() -> None:
            await asyncio.sleep(delay)
            self.wake()

        self._spawn(retry())

    # --- events -----------------------------------------------------------------------------------

    def _announce(self, jobs: list[JobView], plan: admission.Plan) -> None:
        """Queued events and missing-label warnings, once per Job, on its first pass as queued.

        A Job this very pass admits never waited: it gets its warnings, and no Queued event
        (in a burst, that is one write less per key for an API server that is the bottleneck).
        """
        fresh = [j for j in jobs if j.queued and j.uid not in self.announced and j.uid not in self.assumed]
        if not fresh:
            return
        index = self.cache.policy_index
        running = plan.running
        admitted_now = {job.uid for job in plan.admit}
        for job in fresh:
            govs = index.governance_of(job)
            if not govs:
                continue
            self.announced.add(job.uid)
            parts = []
            for gov in govs:
                parts.append(
                    f"policy {gov.policy.name} key {describe_key(gov.policy, gov.key)} "
                    f"({running.get(gov.slot, 0)}/{gov.policy.limit_for(gov.key)} running)"
                )
                if gov.missing_labels:
                    self._post(
                        job,
                        "Warning",
                        "MissingKeyLabel",
                        f"Job lacks label(s) {', '.join(gov.missing_labels)} that policy {gov.policy.name} "
                        "keys on: it is counted under the empty value",
                    )
            if job.uid not in admitted_now:
                self._post(job, "Normal", "Queued", "Queued by " + "; ".join(parts))
        # Forget finished and deleted Jobs so the set stays as small as the queue.
        if len(self.announced) > 2 * len(self.cache.jobs) + 1000:
            self.announced &= set(self.cache.jobs)

    def _post(self, job: JobView, type_: str, reason: str, message: str) -> None:
        async def post() -> None:
            try:
                async with self._event_limit:
                    await self.api.post_event(job, type_, reason, message)
            except Exception as e:  # events are best effort, like the kubelet's own
                log.warning("could not post %s event on %s/%s: %s", reason, job.namespace, job.name, e)

        self._spawn(post())

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
