"""The gating engine: keeps the term's cache fed, decides on every change, writes the decisions.

One decision path per process. Each pass takes the cache as it is, asks the pure
core (`admission.plan`) what to do, marks admissions as assumed, and sends the
patches. An assumed admission holds its slot until the API answers: on success
the returned object replaces the cached view; on a definite refusal the
assumption is forgotten and the watch brings the state to decide on again; when
the answer is lost (timeout, broken connection, 5xx) the patch may have landed,
so the slot stays taken until a read made after the patch must have landed
says how it ended.

Everything about Jobs belongs to the leadership term (`term.Term`): a term that
ends takes its cache, assumptions and tasks with it, and the next starts from a
fresh LIST, after every write of the previous one has landed or never will.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from jobgate.core import admission, patches
from jobgate.core.incremental import IncrementalPlanner
from jobgate.core.jobs import JobView
from jobgate.core.policy import ConcurrencyPolicy
from jobgate.engine import evictions, watches
from jobgate.engine.cache import PolicyCache
from jobgate.engine.term import Expectation, Term
from jobgate.engine.watches import JobStream
from jobgate.kube.api import ApiError, NamespaceRead, NotLeading, WatchExpired
from jobgate.telemetry.metrics import Metrics

log = logging.getLogger("jobgate.engine")

PACE_ABOVE_SECONDS = 0.002  # passes quicker than this follow each other at once
PACE_AT_MOST_SECONDS = 0.05
# Namespaces to list again one by one through a stream over all of them; past this, the whole stream once.
RELIST_BY_NAMESPACE_UP_TO = 8


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

    async def list_cluster_policies(self) -> tuple[list[Mapping[str, Any]], int]: ...

    async def list_namespaces(self) -> tuple[list[NamespaceRead], int]:
        """Every Namespace's name, labels and resourceVersion; and the LIST's."""
        ...

    async def get_namespace(self, name: str) -> NamespaceRead | None:
        """One Namespace; None when there is no such Namespace."""
        ...

    async def patch_job(self, namespace: str, name: str, patch: patches.JsonPatch) -> Mapping[str, Any] | None:
        """Apply a JSON patch; None when the API refused it (gone, or a test failed)."""
        ...

    async def patch_policy_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...

    async def delete_job(self, job: JobView) -> bool:
        """Delete the Job at the version given; False when it is gone or changed since."""
        ...

    async def post_event(self, job: JobView, type_: str, reason: str, message: str) -> None: ...


def definitely_not_applied(error: Exception) -> bool:
    """Whether a failed write certainly changed nothing: not sent, or refused by the API server.

    A timeout, a broken connection or a 5xx (a 504 "context canceled" among them)
    may come after the API server applied the write.
    """
    return isinstance(error, NotLeading) or (isinstance(error, ApiError) and error.status < 500)


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
    # A Job write sent now has landed, or never will, this long from now (lease.LeaseTiming.landing_seconds).
    landing_seconds: float = 10.0
    # ClusterConcurrencyPolicies, and the Namespaces' labels they select on, are read (--cluster-policies).
    cluster_policies: bool = False


class Engine:
    def __init__(
        self,
        api: ClusterApi,
        settings: EngineSettings,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.monotonic = monotonic
        self.policies = PolicyCache()
        self.policies.policy_listeners.append(self._policy_changed)
        self.term: Term | None = None  # while leading
        self.terms = 0
        self.announced: set[str] = set()  # Jobs whose Queued event (or warning) was posted
        self.warned: set[str] = set()  # Jobs told why jobgate ignores them or reads them conservatively
        self.started = clock()
        self._wake = asyncio.Event()
        self._dirty_since: float | None = None  # when the oldest unhandled change arrived
        self._background: set[asyncio.Task[None]] = set()  # events: best effort, outlive terms
        self._write_limit = asyncio.Semaphore(settings.write_concurrency)
        self._event_limit = asyncio.Semaphore(settings.event_concurrency)
        self._writes_settle_at = float("-inf")  # monotonic: every write sent so far has landed, or never will
        # Per namespace ("" for the cluster policies): the last read of what governs its Jobs sent for a
        # release (monotonic send time, and the read itself).
        self._policy_reads: dict[str, tuple[float, asyncio.Future[None]]] = {}

    @property
    def leading(self) -> bool:
        return self.term is not None

    def tracked_jobs(self) -> int:
        return len(self.term.jobs.jobs) if self.term is not None else 0

    # --- feeding: called from watch handlers, synchronous and cheap -------------------------------

    def observe_job(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        term = self.term
        if term is None:
            return  # followers keep no Jobs: a new leader starts from a fresh LIST
        self._observe_job(term, event_type, body)

    def _observe_job(self, term: Term, event_type: str | None, body: Mapping[str, Any]) -> None:
        if term.ended:
            return
        view = JobView.from_body(body)
        if event_type == "DELETED":
            cached = term.jobs.jobs.get(view.uid)
            if cached is None or cached.resource_version >= view.resource_version:
                term.jobs.delete_job(view.uid, view.resource_version)  # a tombstone, or nothing newer to undo
                return
            term.refused.discard(view.uid)
            changed = self._gone_from_a_watch(term, cached, view.resource_version, deleted=True)
        else:
            changed = self._store(term, view)
        if changed:
            self.changed()

    def _store(self, term: Term, view: JobView, read_at: float | None = None) -> bool:
        """Keep the newest state of a Job that matters, forget one that stopped mattering.

        `read_at`: when the read that returned `view` was sent, if it was a read of this Job.
        Returns whether a decision could change.
        """
        settled = self._settle_expectation(term, view, read_at)
        if not self._keeps(view):
            return term.jobs.forget_job(view) is not None or settled
        before = term.jobs.jobs.get(view.uid)
        if term.jobs.put_job(view) is None:
            return settled
        # Most events are the Job controller's status writes, which change nothing that a
        # decision reads: the cache takes their resourceVersion, but no pass is needed.
        changed = before is None or view.uid in term.refused or not before.same_state(view) or settled
        term.refused.discard(view.uid)
        return changed

    def _settle_expectation(self, term: Term, view: JobView, read_at: float | None) -> bool:
        """An admission in doubt ends when the Job is seen running or finished, or read after it must have landed.

        A still suspended view settles it only if it comes from a read sent after the patch
        must have landed (`read_at`, monotonic): a watch event, however late it arrives, may
        show a state from before the patch landed. Returns whether the slot is free again.
        """
        expectation = term.expected.get(view.uid)
        if expectation is None or view.resource_version < expectation.decided_version:
            return False
        if view.suspended and not view.finished and (read_at is None or read_at < expectation.settles_at):
            return False
        del term.expected[view.uid]
        term.assumed.discard(view.uid)
        if view.admitted_at is not None and abs(view.admitted_at - expectation.admitted_at) < 1e-3:
            self._admitted(view, expectation.admitted_at, triggered_at=None)  # the lost answer's patch landed
        return True

    def _keeps(self, job: JobView) -> bool:
        """Only Jobs that a policy governs, or that we queued and may have to release, cost memory."""
        if job.finished:
            return False  # finished is final: the Job holds no slot and never will again
        if job.marked and job.suspended and job.admitted_at is None:
            return True
        return bool(self.policies.policy_index.governance(job))

    def _gone_from_a_watch(self, term: Term, job: JobView, version: int, *, deleted: bool) -> bool:
        """A watch said DELETED, or a LIST lacked the Job: it was deleted, or relabeled out of that selector.

        Only a deletion frees a slot; a relabeled Job may still be governed through another
        watch that has not caught up. So a Job that holds a slot, or has a write in flight
        or in doubt, stays counted until the API says which. Returns whether the cache changed.
        """
        if job.uid in term.writing:
            term.recheck[job.uid] = max(version, term.recheck.get(job.uid, 0))
            return False
        if job.running or job.uid in term.expected:
            self._confirm(term, job, version)
            return False
        if deleted:
            return term.jobs.delete_job(job.uid, version) is not None
        return term.jobs.forget_job(job) is not None  # another watch may bring it back, even older

    def _confirm(self, term: Term, job: JobView, version: int, not_before: float | None = None) -> None:
        """Read the Job back: gone frees its slot, otherwise its current state says what it holds."""
        if job.uid in term.confirming:
            return
        term.confirming.add(job.uid)

        async def confirm() -> None:
            try:
                # Polled, not one long sleep: the deadline is on the monotonic clock, which a stall moves on.
                while not_before is not None and self.monotonic() < not_before:  # noqa: ASYNC110
                    await asyncio.sleep(min(0.25, not_before - self.monotonic()))
                failures = 0
                while True:
                    try:
                        read_at = self.monotonic()
                        body = await self.api.get_job(job.namespace, job.name)
                        break
                    except Exception as e:  # it keeps its slot until we know
                        failures += 1
                        delay = backoff(failures)
                        log.warning(
                            "could not read Job %s/%s back (%s); retrying in %.1fs", job.namespace, job.name, e, delay
                        )
                        await asyncio.sleep(delay)
            finally:
                term.confirming.discard(job.uid)
            if term.ended:
                return
            if body is None or body["metadata"]["uid"] != job.uid:
                term.expected.pop(job.uid, None)
                term.assumed.discard(job.uid)
                term.jobs.delete_job(job.uid, version)
                changed = True
            else:
                changed = self._store(term, JobView.from_body(body), read_at)
            if changed:
                self.changed()
            if job.uid in term.expected and job.uid not in term.confirming:
                self._confirm(term, job, version, not_before=term.expected[job.uid].settles_at)

        term.spawn(confirm())

    def observe_policy(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A ConcurrencyPolicy or a ClusterConcurrencyPolicy (no namespace) was added, changed or deleted."""
        meta = body["metadata"]
        ref = (meta.get("namespace") or "", meta["name"])
        if event_type == "DELETED":
            self.policies.delete_policy(ref)
        else:
            self.policies.put_policy(ConcurrencyPolicy.from_body(body), int(meta.get("resourceVersion") or 0))

    def _policy_changed(self, before: ConcurrencyPolicy | None, after: ConcurrencyPolicy | None) -> None:
        """A policy was added, changed or deleted, whether a watch event or a LIST brought the change."""
        term = self.term
        if term is not None and (before is None or after is None or before.spec.selector != after.spec.selector):
            term.streams_stale = True  # the next pass first watches (and lists) what it now selects
        if term is not None and after is not None and (before is None or selects_otherwise(before, after)):
            # Jobs it governs may have come already through a stream it shares (another policy's selector,
            # a namespace's union of selectors), and been dropped as nothing governed them: list them again.
            if after.cluster_scoped:
                known = self.policies.namespaces
                term.relabeled.update(n for n in known if admission.reaches(after, n, known))
            else:
                term.relabeled.add(after.namespace)
            term.streams_stale = True
        self.changed()

    def observe_namespace(self, event_type: str | None, name: str, labels: Mapping[str, str], version: int) -> None:
        """A Namespace was added, relabeled or deleted (at resourceVersion `version`): the
        ClusterConcurrencyPolicies that reach it may differ. An older state than known is ignored."""
        if event_type == "DELETED":
            changed = self.policies.delete_namespace(name, version)
        else:
            changed = self.policies.put_namespace(name, labels, version)
        if changed:
            self._reach_changed([name])

    def _reach_changed(self, namespaces: list[str]) -> None:
        """Cluster policies reach these namespaces differently: their Jobs are listed again, then decided on."""
        term = self.term
        if term is not None:
            term.relabeled.update(namespaces)
            term.streams_stale = True
        self.changed()

    def changed(self) -> None:
        """What jobgate knows changed: decide again, and write the policies' status."""
        if self.term is not None:
            self.term.status.mark_dirty()
        self.wake()

    def wake(self) -> None:
        if self._dirty_since is None:
            self._dirty_since = self.clock()
        self._wake.set()

    # --- leading: only the elected replica runs this ----------------------------------------------

    async def lead(self) -> None:
        """One term: list and watch the Jobs that policies select, and decide on every change until cancelled.

        Only the leader watches Jobs: a follower holds nothing but policies (for the webhook).
        A term starts only once every write of the previous term has landed or never will:
        its LIST must not miss an admission still on its way.
        """
        await asyncio.sleep(max(0.0, self._writes_settle_at - self.monotonic()))
        self.terms += 1
        term = Term.begin(self.terms, self.policies, self.api, self.clock)
        self.term = term
        try:
            await self.sync(term, announce=False)
            await asyncio.gather(
                term.spawn(self._decide_forever(term)),
                term.spawn(self._resync_forever(term)),
                term.spawn(self._write_status_forever(term)),
            )
        finally:
            self.term = None
            await term.end()

    async def sync_policies(self) -> None:
        for namespace in self._scopes():
            await self._read_policies(namespace)
        if self.settings.cluster_policies:
            listed, list_version = await self.api.list_namespaces()
            relabeled = self.policies.replace_namespaces(listed, list_version)
            await self._read_cluster_policies()
            if relabeled:
                self._reach_changed(relabeled)
        self.policies.primed = True

    async def _read_policies(self, namespace: str | None) -> None:
        bodies, version = await self.api.list_policies(namespace)
        self.policies.replace_policies(_parsed(bodies), version, namespace)

    async def _read_cluster_policies(self) -> None:
        bodies, version = await self.api.list_cluster_policies()
        self.policies.replace_policies(_parsed(bodies), version, cluster=True)

    async def _read_namespace_governors(self, namespace: str) -> None:
        """The namespace's ConcurrencyPolicies and, with --cluster-policies, its labels, read fresh."""
        await self._read_policies(namespace)
        if self.settings.cluster_policies:
            read = await self.api.get_namespace(namespace)  # None: deleted, and its Jobs with it
            if read is not None and self.policies.put_namespace(*read):
                self._reach_changed([namespace])

    async def _policies_read_after(self, namespace: str, after: float) -> None:
        """What may govern the namespace's Jobs, re-read by reads sent no earlier than `after` (monotonic):
        its policies and labels and, with --cluster-policies, the ClusterConcurrencyPolicies.

        Callers that may share a read do: a pass that releases a thousand Jobs sends one LIST per
        namespace, and one of the cluster policies.
        """
        reads = [self._read_after(namespace, after, lambda: self._read_namespace_governors(namespace))]
        if self.settings.cluster_policies:
            reads.append(self._read_after("", after, self._read_cluster_policies))  # "": no namespace's name
        await asyncio.gather(*reads)

    async def _read_after(self, key: str, after: float, read: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """The read kept under `key` if it was sent after `after` and did not fail; else a new one."""
        kept = self._policy_reads.get(key)
        failed = kept is not None and kept[1].done() and (kept[1].cancelled() or kept[1].exception() is not None)
        if kept is None or kept[0] < after or failed:
            kept = (self.monotonic(), asyncio.ensure_future(read()))
            self._policy_reads[key] = kept
        await asyncio.shield(kept[1])

    async def sync(self, term: Term, announce: bool = True) -> None:
        """Re-read policies and Jobs: the truth after restarts, leader changes and watch gaps."""
        await self.sync_policies()
        await self._follow_streams(term, relist=True)
        if not announce:
            # Jobs queued before this process started had their Queued event from our predecessor;
            # those created since (e.g. while we waited for the Lease) get theirs now. creationTimestamp
            # has whole seconds: a Job of our first second is announced, at worst twice.
            self.announced.update(
                uid for uid, job in term.jobs.jobs.items() if job.suspended and job.created < int(self.started)
            )
        if not term.jobs.primed:
            term.jobs.prime()
        self.changed()

    async def follow_policy_changes(self, term: Term) -> None:
        """Before a pass: watch, and list again, what changed policies and Namespaces now select."""
        while term.streams_stale:
            term.streams_stale = False
            await self._follow_streams(term)

    async def _follow_streams(self, term: Term, relist: bool = False) -> None:
        """Watch what the policies select now: a new stream is listed before the next decision."""
        async with term.streams_lock:
            wanted = watches.wanted(self.policies.policies.values(), self._scopes(), self.settings.job_selector)
            for stream in term.streams.keys() - wanted:
                term.streams.pop(stream).cancel()
                log.info("stopped watching %s", stream)
            if relist:
                term.relabeled.clear()  # every stream is listed whole below
            listed_now = set()
            for stream in wanted:
                if stream in term.streams:
                    if relist:
                        await self._list_jobs(term, stream)
                        listed_now.add(stream)
                    continue
                version = await self._list_jobs(term, stream)
                listed_now.add(stream)
                term.streams[stream] = term.spawn(self._watch_jobs(term, stream, version))
                log.info("watching %s from version %d", stream, version)
            await self._list_relabeled(term, wanted - listed_now)
            # Jobs that only a stopped stream brought, or that no policy governs now, cost nothing more.
            for job in [job for job in term.jobs.jobs.values() if not self._keeps(job)]:
                term.jobs.forget_job(job)

    async def _list_relabeled(self, term: Term, streams: set[JobStream]) -> None:
        """LIST again, in namespaces where policies may govern Jobs they did not, what each stream over them
        brings: the Jobs that a policy governs now were dropped as they came.

        A stream over every namespace is listed once per namespace while they are few, and once
        whole past that: a cluster policy over 2,000 namespaces would otherwise hold the decisions
        for 2,000 LISTs per stream.
        """
        while term.relabeled:
            namespaces, term.relabeled = term.relabeled, set()
            for stream in streams:
                if stream.policy_selector is None:
                    continue  # the queued-label stream: what it brings is kept whatever governs it
                if stream.namespace is not None:
                    if stream.namespace in namespaces:
                        await self._list_jobs(term, stream)
                elif len(namespaces) > RELIST_BY_NAMESPACE_UP_TO:
                    await self._list_jobs(term, stream)
                else:
                    for namespace in sorted(namespaces):
                        await self._list_jobs(term, JobStream(namespace, stream.selector, stream.policy_selector))

    async def _list_jobs(self, term: Term, stream: JobStream) -> int:
        """LIST one stream's Jobs into the cache; returns the version its watch goes on from."""
        views, version = await self.api.list_jobs(stream.namespace, stream.selector or None)
        missing = term.jobs.apply_list(views, version, stream.covers, self._keeps)
        log.debug("listed %d %s at version %d: keeping %d in all", len(views), stream, version, len(term.jobs.jobs))
        if sum(self._gone_from_a_watch(term, job, version, deleted=False) for job in missing):
            self.changed()
        return version

    async def _watch_jobs(self, term: Term, stream: JobStream, version: int) -> None:
        """Follow one stream from `version`, as client-go's reflector does.

        A stream the server ends is resumed from the last version seen (bookmarks keep it
        fresh); a version the server no longer has (410 Gone) means a new LIST, which also
        finds the Jobs deleted meanwhile. Errors back off (with jitter, up to 30 s) and never
        end leading.
        """
        failures = 0
        while True:
            try:
                async for event_type, body in self.api.watch_jobs(
                    stream.namespace, stream.selector or None, version, self.settings.watch_seconds
                ):
                    version = int(body["metadata"].get("resourceVersion") or version)
                    if event_type != "BOOKMARK":
                        self._observe_job(term, event_type, body)
                    failures = 0
            except WatchExpired:
                log.info("watch of %s expired at version %d: listing again", stream, version)
                version = await self._list_jobs(term, stream)
            except Exception as e:  # a broken stream is retried, never fatal
                failures += 1
                delay = backoff(failures)
                log.warning("watch of %s failed (%s); retrying in %.1fs", stream, e, delay)
                await asyncio.sleep(delay)

    def _scopes(self) -> tuple[str | None, ...]:
        return self.settings.namespaces or (None,)

    async def _decide_forever(self, term: Term) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            started = self._dirty_since
            self._dirty_since = None
            await self.follow_policy_changes(term)
            began = time.monotonic()
            self.decide_once(term, started)
            spent = time.monotonic() - began
            if spent > PACE_ABOVE_SECONDS:
                # Under load, a pass over thousands of Jobs follows every few events: leave the loop
                # as long again for reading watches and answers, and let the next pass take them all.
                await asyncio.sleep(min(spent, PACE_AT_MOST_SECONDS))

    async def _resync_forever(self, term: Term) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            await self.sync(term)

    async def _write_status_forever(self, term: Term) -> None:
        while True:
            await asyncio.sleep(self.settings.status_seconds)
            await term.status.write(term.jobs, term.assumed, self.metrics)

    def decide_once(self, term: Term, triggered_at: float | None = None) -> admission.Plan:
        """What `admission.plan` decides for the term's Jobs, through the term's incremental planner.

        The planner is told every change as it comes (JobCache), so a pass costs what
        changed since the last one, not the number of Jobs tracked.
        """
        if not term.jobs.primed or term.ended:
            return admission.Plan()
        planner = term.jobs.follow_policies()
        plan = planner.plan(term.assumed)
        log.debug(
            "decided on %d Job(s), %d policies: admit %d, resuspend %d, release %d",
            len(term.jobs.jobs),
            len(self.policies.policies),
            len(plan.admit),
            len(plan.resuspend),
            len(plan.release),
        )
        self._announce(term, planner, plan)
        if plan.admit or plan.resuspend or plan.release:
            term.status.mark_dirty()
        for job in plan.admit:
            term.assumed.add(job.uid)
        # The writes go on in the background: the next pass need not wait for this one's slowest
        # patch. Admissions in flight are assumed (they hold their slots); a Job with a re-suspension
        # or release in flight is not written again until that write has returned.
        for job in plan.admit:
            self._write(term, job, self._admit(term, job, triggered_at))
        for job in plan.resuspend:
            if job.uid not in term.writing:
                self._write(term, job, self._resuspend(term, job))
        decided_at = self.monotonic()
        for job in plan.release:
            if job.uid not in term.writing:
                self._write(term, job, self._release(term, job, decided_at))
        for job in plan.evict:  # full ReplaceOldest queues: see evictions.py
            if job.uid not in term.writing:
                govs = self.policies.policy_index.governance_of(job)
                self._write(term, job, evictions.evict(self._deleter(term), job, govs, self.metrics, self._post))
        return plan

    def _write(self, term: Term, job: JobView, write: Coroutine[Any, Any, None]) -> None:
        async def tracked() -> None:
            try:
                await write
            finally:  # before any pass that this write's outcome wakes
                term.writing.discard(job.uid)
                self._recheck_after_write(term, job.uid)

        term.writing.add(job.uid)
        term.spawn(tracked())

    def _recheck_after_write(self, term: Term, uid: str) -> None:
        """A watch said the Job gone while we wrote it: unless our write's answer is newer, find out."""
        said_gone_at = term.recheck.pop(uid, None)
        cached = term.jobs.jobs.get(uid)
        if said_gone_at is None or cached is None or cached.resource_version >= said_gone_at:
            return
        if self._gone_from_a_watch(term, cached, said_gone_at, deleted=False):
            self.changed()

    # --- writes -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _sending(self, term: Term) -> AsyncIterator[None]:
        """Around every Job write: a bounded number at once, none once its term ended.

        Raises NotLeading when the term ended before the write was sent.
        """
        async with self._write_limit:
            if term.ended:
                raise NotLeading("the term ended before the write was sent")
            # Every write sent from now may land until then: the next term starts no earlier.
            self._writes_settle_at = max(self._writes_settle_at, self.monotonic() + self.settings.landing_seconds)
            yield

    def _refused(self, term: Term, job: JobView) -> None:
        """A write decided on `job` was refused: the Job changed since. Decide again on the change.

        If the watch brought the change while the write was in flight, no event is left to
        wake the decision up (a status-only change wakes none): wake it now.
        """
        cached = term.jobs.jobs.get(job.uid)
        if cached is not None and cached.resource_version > job.resource_version:
            self.wake()
        else:
            term.refused.add(job.uid)

    async def _patch(self, term: Term, job: JobView, patch: patches.JsonPatch) -> JobView | None:
        """Send a patch; None when it was refused (the Job changed, or is gone).

        Raises when the outcome is unknown or nothing was sent (NotLeading).
        """
        async with self._sending(term):
            body = await self.api.patch_job(job.namespace, job.name, patch)
        if body is None:
            self._refused(term, job)
            return None
        view = JobView.from_body(body)
        self._store(term, view)  # a released Job, say, is forgotten here: no watch may bring it again
        return view

    async def _admit(self, term: Term, job: JobView, triggered_at: float | None) -> None:
        now = self.clock()
        sent_at = self.monotonic()
        try:
            admitted = await self._patch(term, job, patches.admit(job, now))
        except Exception as e:
            if definitely_not_applied(e):
                log.warning("admitting Job %s/%s failed (%s); it stays queued", job.namespace, job.name, e)
                term.assumed.discard(job.uid)
                self._retry_later()
                return
            # The patch may have landed: the Job keeps its slot until a read that comes after the
            # patch must have landed (or the watch showing it running) says how it ended.
            settles_at = sent_at + self.settings.landing_seconds
            term.expected[job.uid] = Expectation(job.resource_version, settles_at, admitted_at=now)
            log.warning(
                "admitting Job %s/%s: answer lost (%s); its slot stays taken until a read after %.1fs says more",
                job.namespace,
                job.name,
                str(e) or type(e).__name__,
                self.settings.landing_seconds,
            )
            self._confirm(term, job, job.resource_version, not_before=settles_at)
            return
        if job.uid not in term.expected:
            term.assumed.discard(job.uid)
        if admitted is None:
            return
        self._admitted(job, now, triggered_at)

    def _admitted(self, job: JobView, now: float, triggered_at: float | None) -> None:
        """Count an admission that landed, and say so on the Job."""
        govs = self.policies.policy_index.governance(job)
        queued_since = job.queued_since
        for gov in govs:
            self.metrics.admitted(gov.policy, waited=max(0.0, now - queued_since))
        if triggered_at is not None:
            self.metrics.decision_latency.observe(max(0.0, now - triggered_at))
        where = "; ".join(f"{g.policy.mention} key {g.key_text}" for g in govs)
        self._post(job, "Normal", "Admitted", f"Admitted by {where} after {now - queued_since:.1f}s queued")

    async def _resuspend(self, term: Term, job: JobView) -> None:
        try:
            done = await self._patch(term, job, patches.resuspend(job, self.clock()))
        except Exception as e:
            # Unknown or not: the Job counts as running until the watch shows it suspended.
            log.warning("re-suspending Job %s/%s failed: %s", job.namespace, job.name, e)
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

    async def _release(self, term: Term, job: JobView, decided_at: float) -> None:
        """Unsuspend a Job jobgate queued that no policy governs any more, once a fresh read says so.

        The policy watch of this replica may lag behind a policy created just before the
        Job: under load, a Job was released under a policy with maxConcurrent 0 that the
        watch had not brought yet. A LIST sent after the Job was seen holds every policy
        that existed when it was created (the webhook, or its author, saw that policy first).
        """
        try:
            await self._policies_read_after(job.namespace, decided_at)
        except Exception as e:
            log.warning("reading the policies of %s before a release failed: %s", job.namespace, e)
            self._retry_later()
            return
        if self.policies.policy_index.governance(job):
            self.changed()  # governed after all: decided again with the policy the read brought
            return
        try:
            done = await self._patch(term, job, patches.release(job))
        except Exception as e:
            log.warning("releasing Job %s/%s failed: %s", job.namespace, job.name, e)
            self._retry_later()
            return
        if done is not None:
            self._post(job, "Normal", "Released", "Unsuspended: no policy governs this Job any more")

    def _deleter(self, term: Term) -> evictions.Delete:
        """How evictions.py deletes a queued Job: through the same gate as every write, and decided again
        when the deletion is refused (the Job changed since) or failed."""

        async def delete(job: JobView) -> bool:
            try:
                async with self._sending(term):
                    deleted = await self.api.delete_job(job)
            except Exception:
                self._retry_later()
                raise
            if not deleted:
                self._refused(term, job)
            return deleted

        return delete

    def _retry_later(self, delay: float = 1.0) -> None:
        async def retry() -> None:
            await asyncio.sleep(delay)
            self.wake()

        self._spawn(retry())

    # --- events -----------------------------------------------------------------------------------

    def _announce(self, term: Term, planner: IncrementalPlanner, plan: admission.Plan) -> None:
        """Queued events and warnings, once per Job, on its first pass as queued (or as ignored).

        Only the Jobs stored since the last pass are looked at. A Job this very pass admits
        never waited: it gets its warnings, and no Queued event (in a burst, that is one write
        less per key for an API server that is the bottleneck). The running counts are those
        the pass started from.
        """
        jobs = term.jobs.take_touched()
        self._warn_ignored(jobs)
        fresh = [j for j in jobs if j.queued and j.uid not in self.announced and j.uid not in term.assumed]
        if not fresh:
            return
        index = self.policies.policy_index
        admitted_now = {job.uid for job in plan.admit}
        for job in fresh:
            govs = index.governance_of(job)
            if not govs:
                continue
            self.announced.add(job.uid)
            parts = []
            for gov in govs:
                parts.append(
                    f"{gov.policy.mention} key {gov.key_text} "
                    f"({planner.running_count(gov.slot)}/{gov.policy.limit_for(gov.key)} running)"
                )
                if gov.missing_labels:
                    self._post(
                        job,
                        "Warning",
                        "MissingKeyLabel",
                        f"Job lacks label(s) {', '.join(gov.missing_labels)} that {gov.policy.mention} "
                        "keys on: it is counted under the empty value",
                    )
            if job.uid not in admitted_now:
                self._post(job, "Normal", "Queued", "Queued by " + "; ".join(parts))
        # Forget finished and deleted Jobs so the set stays as small as the queue.
        if len(self.announced) > 2 * len(term.jobs.jobs) + 1000:
            self.announced &= set(term.jobs.jobs)
            self.warned &= set(term.jobs.jobs)

    def _warn_ignored(self, jobs: list[JobView]) -> None:
        """One Warning per Job that a policy selects but jobgate leaves alone or reads conservatively."""
        for job in jobs:
            if job.uid in self.warned or (job.foreign is None and not job.invalid):
                continue
            governors = [] if job.finished else self.policies.policy_index.governance_of(job)
            if not governors:
                continue
            self.warned.add(job.uid)
            if job.foreign is not None:
                self._post(
                    job,
                    "Warning",
                    "NotGated",
                    f"jobgate leaves this Job alone though {governors[0].policy.title} selects it: {job.foreign}",
                )
            else:
                self._post(job, "Warning", "InvalidAnnotation", "; ".join(job.invalid))

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


def selects_otherwise(before: ConcurrencyPolicy, after: ConcurrencyPolicy) -> bool:
    """Whether the policy may govern other Jobs than it did: its selector or its namespaceSelector changed."""
    return before.spec.selector != after.spec.selector or before.namespace_selector != after.namespace_selector


def _parsed(bodies: Iterable[Mapping[str, Any]]) -> list[tuple[ConcurrencyPolicy, int]]:
    return [(ConcurrencyPolicy.from_body(b), int(b["metadata"].get("resourceVersion") or 0)) for b in bodies]


def backoff(failures: int) -> float:
    """Exponential, up to 30 s, with jitter so that many streams do not retry in step."""
    jitter: float = random.uniform(0.5, 1.0)
    return min(30.0, 0.5 * 2.0**failures) * jitter
