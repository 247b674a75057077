"""Incremental decisions: the same plan as `admission.plan()`, at a cost that depends on what changed.

`plan()` looks at every tracked Job on every pass; with a million queued Jobs one
pass takes seconds. `IncrementalPlanner` keeps what a pass needs between passes,
and is told what changed:

    planner = IncrementalPlanner(policies, jobs)       # a LIST's worth, in one go
    planner.upsert_job(view); planner.remove_job(uid)   # watch events
    planner.upsert_policy(policy); planner.remove_policy(ref)
    planner.upsert_namespace(name, labels)               # what ClusterConcurrencyPolicies select
    decided = planner.plan(assumed)                     # an admission.Plan

`decided.admit`, `.resuspend`, `.release` and `.evict` are what `admission.plan(policies,
jobs, assumed)` returns for the same Jobs, policies and assumed admissions
(`release` in admission order, where plan() lists it in the order it was given
the Jobs); tests/unit/test_incremental.py holds both to that after every event
of thousands of random histories. Two queued Jobs with the same namespace, name,
priority and creation time (a Job deleted and made again while the old one is
still known) are ordered by uid here, by the order they were given there.
`decided.running` holds only the keys the pass looked at: ask `running_count()`
for any other, and `key_counts()` for a policy's running and queued per key.

How it stays cheap. Per (policy, key) — a *slot* — it keeps the running count
(assumed admissions included) and the limit (`policy.limit_for(key)`). Queued
Jobs are grouped by the exact set of slots they need (their *group*: one slot
for a Job one policy governs, one per policy when several do); a group's Jobs
differ only in admission order, so it keeps them in a heap. A pass admits, in
admission order, from the groups whose every slot has room, and each such group
admits a prefix of its queue (counts only grow during a pass, so once a group's
Job is blocked, so are the ones behind it).

Which groups may have room is tracked the way SAT solvers watch clauses: a
blocked group *waits on* one full slot of its own, in that slot's heap, by
head; a group that changed (a new Job, its head admitted) is *pending*. Once a
slot's count drops below its limit, it is *opened*: a pass merges the pending
groups and the heaps of opened slots, in admission order, and stops reading a
slot's heap as soon as the pass filled that slot. A group it finds blocked moves
to the heap of a full slot it needs (the one with fewest groups: a Job's own key
rather than a namespace-wide cap), or of a slot this very pass filled, which
counts as opened until it is full for real. So a completion costs a few heap
operations on the keys it touches, whatever the length of the queues; a keyless
cap that opens costs the groups it must skip, and those move to their own full
key, not to be looked at again until it opens.

Evictions (ReplaceOldest queues over their bound) read only the keys whose
waiting Jobs outnumber it, through `admission.overflowing` itself.

The Job views are only read: what a Job is to the decision comes from its
properties (`finished`, `foreign`, `suspended`, `queued`, `admitted_at`,
`order`) and the limit from `policy.limit_for(key)`, as in plan().

What costs more: a policy whose selector, key labels or creation time changes
(or that is added or removed) takes every tracked Job of its namespace out and
back in, after a look at every tracked Job to find them (about a second at a
million); a policy whose limit changes visits its own keys only. A
ClusterConcurrencyPolicy is indexed in each namespace it reaches (its
namespaceSelector matches the namespace's labels): a change to whom it governs
takes out the Jobs of every namespace it reached or reaches, and a Namespace
relabeled in or out of its reach takes out that namespace's Jobs.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from typing import Final

from jobgate.core.admission import (
    NO_NAMESPACES,
    Governance,
    Key,
    NamespaceLabels,
    Plan,
    PolicyRef,
    job_key,
    overflowing,
    reaches,
)
from jobgate.core.jobs import JobView
from jobgate.core.policy import NAMESPACE_KEY, ConcurrencyPolicy, LabelSelector
from jobgate.core.selectors import matches

# A queued Job in its group's heap: JobView.order, then the uid. Entries compare in admission order.
QueueEntry = tuple[int, float, str, str, str]
SlotId = tuple[PolicyRef, Key]
GroupEntry = tuple[QueueEntry, int, "Group"]  # (head, tie-break, group) in the pending heap or a slot's
_Source = tuple[list[GroupEntry], "Slot | None"]  # a heap of groups, and the slot they all need (None: pending)

# What a tracked Job is to the decision.
IGNORED: Final = 0  # finished, held, ungoverned and not ours to release
RUNNING: Final = 1  # holds a slot in each policy that governs it
QUEUED: Final = 2  # waits in its group
RELEASABLE: Final = 3  # queued by jobgate, governed by nothing any more

# Which policies select a combination of label values is remembered for this many combinations per namespace.
SELECTIONS_KEPT = 65536
# A pass with more pending groups than this (the first after a LIST) holds the garbage collector.
BULK_PASS = 10_000
# Heaps keep entries of Jobs and groups that moved on (lazy deletion); past this much garbage, rebuild.
COMPACT_ABOVE = 64


class Slot:
    """One policy's key: its running Jobs, its limit, and the groups that wait for it to have room."""

    __slots__ = ("count", "groups", "homed", "id", "late", "limit", "members", "policy", "queued", "waiting")

    def __init__(self, policy: ConcurrencyPolicy, key: Key) -> None:
        self.id: SlotId = ((policy.namespace, policy.name), key)
        self.policy = policy
        self.limit = policy.limit_for(key)
        self.count = 0  # running Jobs, assumed admissions included
        self.queued = 0  # queued Jobs
        # Running Jobs unsuspended without our admission after the policy existed: the backstop's suspects.
        self.late: dict[str, JobView] = {}
        self.waiting: list[GroupEntry] = []  # groups blocked here, by head
        self.homed = 0  # how many groups wait here (the live entries of `waiting`)
        self.groups = 0  # how many groups need this slot: at 0 it is forgotten
        # Those groups, for a queue that pushes its oldest out (ReplaceOldest): an eviction reads them.
        self.members: set[Group] | None = set() if policy.spec.replaces_oldest else None

    @property
    def full(self) -> bool:
        return self.count >= self.limit


class Selection:
    """The policies that select Jobs with one combination of selector label values, and their groups."""

    __slots__ = ("groups", "key_labels", "policies", "reads_namespace")

    def __init__(self, policies: Iterable[ConcurrencyPolicy]) -> None:
        self.policies = tuple(policies)
        self.key_labels = tuple(label for p in self.policies for label in p.spec.keyLabels)
        self.reads_namespace = NAMESPACE_KEY in self.key_labels
        self.groups: dict[tuple[str, ...], Group] = {}  # by the values of key_labels


class Group:
    """The queued Jobs that need exactly the same slots, in admission order."""

    __slots__ = ("entry", "home", "key", "members", "queue", "selection", "size", "slots")

    def __init__(self, selection: Selection, key: tuple[str, ...], slots: tuple[Slot, ...]) -> None:
        self.selection = selection
        self.key = key  # in selection.groups
        self.slots = slots
        self.queue: list[QueueEntry] = []  # heap; an entry is live while its Job's record holds it
        self.size = 0  # live entries of `queue`
        self.members = 0  # tracked Jobs (running or queued) in it: at 0 it is forgotten
        self.home: Slot | None = None  # the full slot it waits on; None: pending (or empty)
        self.entry: GroupEntry | None = None  # its live entry in its home's heap; None while empty


@dataclass(slots=True)
class _Tracked:
    view: JobView
    state: int
    group: Group | None  # for RUNNING and QUEUED Jobs
    entry: QueueEntry | None  # for QUEUED Jobs: the live entry in the group's queue


def _queue_entry(view: JobView) -> QueueEntry:
    return (*view.order, view.uid)


def _is_late(view: JobView, policy: ConcurrencyPolicy) -> bool:
    """Unsuspended behind our back: plan()'s backstop may re-suspend it when its key is over the limit."""
    return view.admitted_at is None and view.created > policy.created and not view.suspended


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector while a million objects are made that are no garbage.

    Each of its full collections walks every object already made: during a load
    they come ever more often and ever longer, for nothing. (A process that keeps
    this state for long does well to `gc.freeze()` once it is loaded.)
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _full_slot(group: Group) -> Slot | None:
    """A full slot the group needs, to wait on (the one with fewest groups); None if every one has room."""
    full = [slot for slot in group.slots if slot.full]
    return min(full, key=lambda slot: slot.groups) if full else None


def _blocker(group: Group, room: Callable[[Slot], bool]) -> Slot:
    """The slot a blocked group should wait on: a full one if any, the one with the fewest groups.

    A small slot wakes few groups when it opens; a keyless cap that opened would wake
    every group it holds, and those blocked by their own key as well would only move.
    """
    full = [slot for slot in group.slots if slot.count >= slot.limit] or [s for s in group.slots if not room(s)]
    return full[0] if len(full) == 1 else min(full, key=lambda slot: slot.groups)


def _selector_labels(selector: LabelSelector) -> Iterator[str]:
    yield from selector.matchLabels or {}
    for requirement in selector.matchExpressions or ():
        yield requirement.key


class IncrementalPlanner:
    """What `admission.plan()` decides, kept up to date event by event (see the module's docstring)."""

    def __init__(
        self,
        policies: Iterable[ConcurrencyPolicy] = (),
        jobs: Iterable[JobView] = (),
        namespaces: NamespaceLabels = NO_NAMESPACES,
    ) -> None:
        self._policies: dict[PolicyRef, ConcurrencyPolicy] = {}
        self._cluster_wide = 0  # how many of them are ClusterConcurrencyPolicies
        self._namespace_labels: dict[str, Mapping[str, str]] = dict(namespaces)
        # Per namespace, indexed when a Job of it first needs it: the policies that reach it (its own,
        # then the cluster-wide whose namespaceSelector matches it), the labels their selectors read,
        # and for each combination of those labels' values, which policies select it.
        self._by_namespace: dict[str, list[ConcurrencyPolicy]] = {}
        self._selector_labels: dict[str, tuple[str, ...]] = {}
        self._selections: dict[str, dict[tuple[str | None, ...], Selection]] = {}
        self._slots: dict[PolicyRef, dict[Key, Slot]] = {}
        self._jobs: dict[str, _Tracked] = {}
        self._assumed: set[str] = set()
        self._pending: list[GroupEntry] = []  # groups to look at on the next pass
        self._pending_count = 0
        self._opened: set[Slot] = set()  # slots with room and groups waiting on them
        self._overfull: set[Slot] = set()  # slots over their limit with late Jobs: the backstop's work
        self._crowded: set[Slot] = set()  # ReplaceOldest queues with more queued Jobs than their bound
        self._releasable: dict[str, JobView] = {}
        self._emptied: list[Group] = []  # groups that lost their last Job: forgotten unless one comes back
        self._tie = itertools.count()
        # Per policy asked about (oldest_queued_since): its queued Jobs' (queued_since, entry), lazily deleted.
        self._since: dict[PolicyRef, list[tuple[float, QueueEntry]]] = {}
        for policy in policies:
            self._policies[(policy.namespace, policy.name)] = policy
        self._cluster_wide = sum(p.cluster_scoped for p in self._policies.values())
        self._load(jobs)

    # --- events -------------------------------------------------------------------------------------

    def upsert_job(self, view: JobView) -> None:
        """A Job was added or changed (the newest view wins: the caller filters stale events)."""
        self._upsert(view)
        self._forget_emptied()

    def remove_job(self, uid: str) -> None:
        """A Job was deleted, or stopped mattering."""
        self._remove(uid)
        self._forget_emptied()

    def upsert_policy(self, policy: ConcurrencyPolicy) -> bool:
        """Add or change a policy; returns whether it may govern other Jobs than before (not only limits)."""
        ref = (policy.namespace, policy.name)
        old = self._policies.get(ref)
        if old == policy:
            return False
        if (
            old is not None
            and old.spec.selector == policy.spec.selector
            and old.spec.keyLabels == policy.spec.keyLabels
            and old.created == policy.created
            and old.spec.replaces_oldest == policy.spec.replaces_oldest
            and old.namespace_selector == policy.namespace_selector
        ):
            # The same Jobs under the same keys: only limits (and a queue's bound) may differ.
            self._policies[ref] = policy
            for namespace, policies in self._by_namespace.items():
                if old in policies:
                    self._by_namespace[namespace] = [policy if p is old else p for p in policies]
            for slot in self._slots.get(ref, {}).values():
                slot.policy = policy
                slot.limit = policy.limit_for(slot.id[1])
                self._refresh(slot)
            return False
        # Whom it governs may differ: the Jobs of the namespaces it reached or reaches go out, and come
        # back under the new policies.
        views = self._take_out(lambda namespace: self._reaches(old, namespace) or self._reaches(policy, namespace))
        self._policies[ref] = policy
        self._cluster_wide = sum(p.cluster_scoped for p in self._policies.values())
        self._put_back(views)
        return True

    def remove_policy(self, ref: PolicyRef) -> None:
        old = self._policies.get(ref)
        if old is not None:
            views = self._take_out(lambda namespace: self._reaches(old, namespace))
            del self._policies[ref]
            self._cluster_wide = sum(p.cluster_scoped for p in self._policies.values())
            self._since.pop(ref, None)
            self._put_back(views)

    def upsert_namespace(self, name: str, labels: Mapping[str, str]) -> bool:
        """A Namespace was added or relabeled: the ClusterConcurrencyPolicies that reach it may differ.

        Returns whether they do (its Jobs were taken out and put back under them)."""
        old = self._namespace_labels.get(name, {})
        if old == labels:
            return False
        cluster_wide = [p for p in self._policies.values() if p.cluster_scoped]
        before = [p for p in cluster_wide if self._reaches(p, name)]
        self._namespace_labels[name] = dict(labels)
        if [p for p in cluster_wide if self._reaches(p, name)] == before:
            return False
        self._namespace_labels[name] = dict(old)
        views = self._take_out(lambda namespace: namespace == name)
        self._namespace_labels[name] = dict(labels)
        self._put_back(views)
        return True

    def remove_namespace(self, name: str) -> bool:
        """A Namespace was deleted: its labels are forgotten (its Jobs go with it)."""
        reached_otherwise = self.upsert_namespace(name, {})
        self._namespace_labels.pop(name, None)
        return reached_otherwise

    def follow_policies(self, current: Mapping[PolicyRef, ConcurrencyPolicy]) -> bool:
        """Make the planner's policies these: upsert the new and changed ones, remove the others.

        Returns whether a policy may govern other Jobs than before (a change of limits alone
        does not count). The caller skips this while its policies have not changed at all:
        it compares every policy.
        """
        governs_otherwise = False
        for ref in [ref for ref in self._policies if ref not in current]:
            self.remove_policy(ref)
            governs_otherwise = True
        for ref, policy in current.items():
            if self._policies.get(ref) is not policy and self._policies.get(ref) != policy:
                governs_otherwise |= self.upsert_policy(policy)
        return governs_otherwise

    # --- deciding -----------------------------------------------------------------------------------

    def plan(self, assumed: Collection[str] = ()) -> Plan:
        """Every admission that fits now, the intruders to re-suspend and the Jobs to release.

        `assumed`: admissions sent and not yet seen come back, as for `admission.plan()`.
        The pass reads only pending groups and the groups waiting on slots that have room.
        """
        if self._pending_count > BULK_PASS:  # the first pass after a LIST: it reads (and moves) them all
            with _collector_paused():
                return self._plan(assumed)
        return self._plan(assumed)

    def _plan(self, assumed: Collection[str]) -> Plan:
        self.sync_assumed(assumed)
        if not (self._pending_count or self._opened or self._overfull or self._releasable or self._crowded):
            return Plan()  # most events: a Job arrived behind a full key, or a status changed
        result = Plan()
        extra: dict[Slot, int] = {}  # this pass's admissions per slot
        looked_at: set[Slot] = set()
        # Merged in admission order: the head group of each source heap (job None), and the next Job
        # of each group that is admitting (source None).
        merge: list[tuple[QueueEntry, int, Group, QueueEntry | None, _Source | None]] = []
        put_back_groups: list[tuple[list[GroupEntry], GroupEntry]] = []
        put_back_jobs: list[tuple[Group, QueueEntry]] = []

        def room(slot: Slot) -> bool:
            return slot.count + extra.get(slot, 0) < slot.limit

        def fits(group: Group) -> bool:
            # `room` inlined, and no generator: this runs for every group a pass reads (12 % off p99 at 100,000).
            for slot in group.slots:  # noqa: SIM110
                if slot.count + extra.get(slot, 0) >= slot.limit:
                    return False
            return True

        def next_group(source: _Source) -> None:
            heap = source[0]
            while heap:
                entry = heappop(heap)
                if entry[2].entry is entry:
                    heappush(merge, (entry[0], next(self._tie), entry[2], None, source))
                    return

        def admit(group: Group, job: QueueEntry) -> None:
            put_back_jobs.append((group, job))
            result.admit.append(self._jobs[job[4]].view)
            for slot in group.slots:
                extra[slot] = extra.get(slot, 0) + 1
            following = self._pop_head(group)
            if following is not None:
                heappush(merge, (following, next(self._tie), group, following, None))

        next_group((self._pending, None))
        for slot in list(self._opened):
            if slot.full or not slot.homed:
                self._opened.discard(slot)
            else:
                next_group((slot.waiting, slot))

        while merge:
            _, _, group, job, source = heappop(merge)
            if job is not None:  # the next Job of a group that is admitting
                if fits(group):
                    admit(group, job)
                else:
                    put_back_jobs.append((group, job))  # and the rest of the group waits
                continue
            assert source is not None and group.entry is not None
            looked_at.update(group.slots)
            if fits(group):
                put_back_groups.append((source[0], group.entry))
                head = self._pop_head(group)
                assert head is not None and head == group.entry[0]
                admit(group, head)
            elif source[1] is not None and not room(source[1]):
                put_back_groups.append((source[0], group.entry))  # and stop reading this source:
                continue  # this pass filled the slot every group of its heap needs
            else:
                # Wait on a full slot. One this pass filled may not be full once the pass is over
                # (its admissions may never be sent): it counts as opened until it is full for real.
                self._home(group, _blocker(group, room))
            next_group(source)

        for heap, entry in put_back_groups:
            heappush(heap, entry)
        for group, job in put_back_jobs:
            heappush(group.queue, job)
        if self._crowded:
            result.evict = self._evictions(extra, {job.uid for job in result.admit})

        intruders: dict[str, JobView] = {}
        for slot in self._overfull:
            legit = slot.count - len(slot.late)
            room_left = max(0, slot.limit - legit)
            for view in sorted(slot.late.values(), key=_queue_entry)[room_left:]:
                intruders[view.uid] = view
        result.resuspend = sorted(intruders.values(), key=_queue_entry)
        result.release = sorted(self._releasable.values(), key=_queue_entry)
        result.running = {slot.id: slot.count for slot in looked_at | self._overfull if slot.count}
        return result

    def _evictions(self, admitted_per_slot: dict[Slot, int], admitted: set[str]) -> list[JobView]:
        """The Jobs that full ReplaceOldest queues push out: `admission.overflowing` over their Jobs alone.

        It evicts only from keys whose waiting Jobs (queued, less this pass's admissions)
        outnumber their bound, and counts those keys whole: given every waiting Job of
        those keys, and no other, it decides as it does given all of them.
        """
        over = [s for s in self._crowded if s.queued - admitted_per_slot.get(s, 0) > (s.policy.spec.maxQueued or 0)]
        waiting: dict[str, tuple[JobView, list[Governance]]] = {}
        for slot in over:
            assert slot.members is not None
            for group in slot.members:
                governors = [Governance(s.policy, s.id[1], ()) for s in group.slots]
                for entry in group.queue:
                    uid = entry[4]
                    if uid not in waiting and uid not in admitted and self._is_live(entry):
                        waiting[uid] = (self._jobs[uid].view, governors)
        return overflowing(waiting.values())

    def running_count(self, slot: SlotId) -> int:
        """Running Jobs (assumed admissions included) of one policy's key."""
        found = self._slots.get(slot[0], {}).get(slot[1])
        return found.count if found is not None else 0

    def key_counts(self, ref: PolicyRef) -> dict[Key, tuple[int, int]]:
        """(running, queued) per key of one policy, for the keys that have either."""
        return {key: (s.count, s.queued) for key, s in self._slots.get(ref, {}).items() if s.count or s.queued}

    def oldest_queued_since(self, ref: PolicyRef) -> float | None:
        """When the longest-waiting queued Job of a policy was queued (`queued_since`); None if none is.

        Kept only once asked for (the status writer asks about every policy, once a tick):
        the first call reads every tracked Job once for all the policies not kept yet (0.3 s
        at 100,000 Jobs here), later ones a heap that each queued Job enters.
        """
        if ref not in self._policies:
            return None
        if ref not in self._since:
            self._keep_since([other for other in self._policies if other not in self._since])
        heap = self._since[ref]
        live = sum(slot.queued for slot in self._slots.get(ref, {}).values())
        if len(heap) > 2 * live + COMPACT_ABOVE:
            heap[:] = [item for item in heap if self._is_live(item[1])]
            heapify(heap)
        while heap and not self._is_live(heap[0][1]):
            heappop(heap)
        return heap[0][0] if heap else None

    def _keep_since(self, refs: list[PolicyRef]) -> None:
        heaps: dict[PolicyRef, list[tuple[float, QueueEntry]]] = {ref: [] for ref in refs}
        for record in self._jobs.values():
            if record.entry is None or record.group is None:
                continue
            for slot in record.group.slots:
                heap = heaps.get(slot.id[0])
                if heap is not None:
                    heap.append((record.view.queued_since, record.entry))
        for heap in heaps.values():
            heapify(heap)
        self._since.update(heaps)

    def __len__(self) -> int:
        return len(self._jobs)

    # --- tracking -----------------------------------------------------------------------------------

    def _upsert(self, view: JobView) -> None:
        old = self._jobs.get(view.uid)
        state, group = self._classify(view)
        if (
            old is not None
            and old.state == state
            and old.group is group
            and (state != QUEUED or (old.view.order == view.order and old.view.queued_since == view.queued_since))
        ):
            if state == RUNNING:
                self._update_late(old.view, view, group)
            elif state == RELEASABLE:
                self._releasable[view.uid] = view
            old.view = view  # a plan hands out the newest view: patches test its resourceVersion
            return
        if old is not None:
            self._untrack(old)
        record = self._add(view, state, group, queue_in_bulk=False)
        if record.entry is not None and group is not None:
            if group.entry is None:
                self._home(group, _full_slot(group))  # it was empty
            elif record.entry < group.entry[0]:
                self._rekey(group)  # a new head

    def _remove(self, uid: str) -> None:
        old = self._jobs.pop(uid, None)
        if old is None:
            return
        self._untrack(old)

    def _load(self, views: Iterable[JobView]) -> None:
        """Track many Jobs at once: queues are heapified once at the end, not pushed into one by one."""
        with _collector_paused():
            self._load_all(views)

    def _load_all(self, views: Iterable[JobView]) -> None:
        touched: dict[Group, int] = {}  # the groups that took queued Jobs, and their size before
        known_already = []
        jobs = self._jobs
        for view in views:
            if view.uid in jobs:
                known_already.append(view)
                continue
            state, group = self._classify(view)
            if state == QUEUED and group is not None and group not in touched:
                touched[group] = group.size
            self._add(view, state, group, queue_in_bulk=True)
        fresh = []
        for group, size_before in touched.items():
            for slot in group.slots:
                slot.queued += group.size - size_before
                if slot.members is not None:
                    self._refresh(slot)
            heapify(group.queue)
            blocker = _full_slot(group)
            if group.entry is None and blocker is None:
                group.entry = (self._head(group), next(self._tie), group)
                fresh.append(group.entry)
            elif group.entry is None:
                self._home(group, blocker)
            else:
                self._rekey(group)
        if fresh:  # pending, all at once
            self._pending_count += len(fresh)
            self._pending.extend(fresh)
            heapify(self._pending)
        for view in known_already:
            self._upsert(view)
        self._forget_emptied()

    def _add(self, view: JobView, state: int, group: Group | None, *, queue_in_bulk: bool) -> _Tracked:
        """Record the Job and count it. A queued Job's entry is in its group's queue; its head may be new."""
        record = _Tracked(view, state, group, None)
        self._jobs[view.uid] = record
        if state == RELEASABLE:
            self._releasable[view.uid] = view
        if group is None:
            return record
        group.members += 1
        if state == RUNNING:
            for slot in group.slots:
                slot.count += 1
                if _is_late(view, slot.policy):
                    slot.late[view.uid] = view
                self._refresh(slot)
            return record
        record.entry = entry = _queue_entry(view)
        group.size += 1
        if self._since:
            for slot in group.slots:
                heap = self._since.get(slot.id[0])
                if heap is not None:
                    heappush(heap, (view.queued_since, entry))
        if queue_in_bulk:  # the caller counts and heapifies
            group.queue.append(entry)
        else:
            for slot in group.slots:
                slot.queued += 1
                if slot.members is not None:
                    self._refresh(slot)
            heappush(group.queue, entry)
            if len(group.queue) > 2 * group.size + COMPACT_ABOVE:
                group.queue = [e for e in group.queue if self._is_live(e)]
                heapify(group.queue)
        return record

    def _untrack(self, record: _Tracked) -> None:
        if record.state == RELEASABLE:
            del self._releasable[record.view.uid]
        group = record.group
        if group is None:
            return
        if record.state == RUNNING:
            for slot in group.slots:
                slot.count -= 1
                slot.late.pop(record.view.uid, None)
                self._refresh(slot)
        else:
            assert record.entry is not None
            was_head = group.entry is not None and record.entry == group.entry[0]
            record.entry = None
            group.size -= 1
            for slot in group.slots:
                slot.queued -= 1
                if slot.members is not None:
                    self._refresh(slot)
            if group.size == 0:
                self._leave_home(group)
                group.queue.clear()
            elif was_head:
                self._rekey(group)
        record.group = None
        group.members -= 1
        if group.members == 0:
            self._emptied.append(group)

    def _update_late(self, old: JobView, new: JobView, group: Group | None) -> None:
        assert group is not None
        for slot in group.slots:
            if _is_late(new, slot.policy):
                slot.late[new.uid] = new
            elif slot.late.pop(old.uid, None) is None:
                continue
            self._refresh(slot)

    def _classify(self, view: JobView) -> tuple[int, Group | None]:
        """What plan() makes of this Job now, and its group if it runs or queues under a policy."""
        if view.finished or view.foreign is not None:
            return IGNORED, None  # holds no slot; another controller's Job is never counted nor touched
        running = not view.suspended or view.uid in self._assumed
        if not running and not view.queued:
            return IGNORED, None  # held, or suspended by someone else (no queued mark)
        group = self._group_of(view)
        if group is None:
            if not running and view.admitted_at is None:
                return RELEASABLE, None
            return IGNORED, None
        return (RUNNING if running else QUEUED), group

    def sync_assumed(self, assumed: Collection[str]) -> None:
        """Count these admissions as running (a pass does this first; so may a reader of the counts)."""
        if len(assumed) == len(self._assumed) and all(uid in self._assumed for uid in assumed):
            return
        now = set(assumed)
        changed = now ^ self._assumed
        self._assumed = now
        for uid in changed:
            record = self._jobs.get(uid)
            if record is not None:
                self._upsert(record.view)
        self._forget_emptied()

    # --- groups and their homes ---------------------------------------------------------------------

    def _group_of(self, view: JobView) -> Group | None:
        """The Job's group: which policies select it is remembered per combination of the values of the
        labels their selectors read; its key under each is read from its labels."""
        namespace = view.namespace
        read = self._selector_labels.get(namespace)
        if read is None:
            if not self._policies:
                return None
            read = self._index_namespace(namespace)
        if not self._by_namespace[namespace]:
            return None
        labels = view.labels
        get = labels.get
        values = tuple([get(name) for name in read])
        known = self._selections[namespace]
        selection = known.get(values)
        if selection is None:
            if len(known) > SELECTIONS_KEPT:
                known.clear()  # combinations that may not be seen again: the next Jobs find theirs anew
            policies = self._by_namespace[namespace]
            selection = known[values] = Selection(p for p in policies if matches(p.spec.selector, labels))
        if not selection.policies:
            return None
        if selection.reads_namespace:
            key = job_key(selection.key_labels, namespace, labels)
        else:
            key = tuple([get(name, "") for name in selection.key_labels])
        group = selection.groups.get(key)
        if group is None:
            group = selection.groups[key] = self._new_group(selection, key)
        return group

    def _new_group(self, selection: Selection, key: tuple[str, ...]) -> Group:
        slots, at = [], 0
        for policy in selection.policies:
            width = len(policy.spec.keyLabels)
            ref, slot_key = (policy.namespace, policy.name), key[at : at + width]
            at += width
            keys = self._slots.get(ref)
            if keys is None:
                keys = self._slots[ref] = {}
            slot = keys.get(slot_key)
            if slot is None:  # with the policy as it is now: a selection outlives a change of limits
                slot = keys[slot_key] = Slot(self._policies[ref], slot_key)
            slots.append(slot)
        group = Group(selection, key, tuple(slots))
        for slot in slots:
            slot.groups += 1
            if slot.members is not None:
                slot.members.add(group)
        return group

    def _forget_emptied(self) -> None:
        """Forget the groups that lost their last Job, and slots no group needs: memory follows the Jobs."""
        while self._emptied:
            group = self._emptied.pop()
            if group.members or group.selection.groups.get(group.key) is not group:
                continue  # a Job came back, or it was forgotten already
            self._leave_home(group)
            del group.selection.groups[group.key]
            for slot in group.slots:
                slot.groups -= 1
                if slot.members is not None:
                    slot.members.discard(group)
                if slot.groups == 0:
                    ref, key = slot.id
                    del self._slots[ref][key]
                    if not self._slots[ref]:
                        del self._slots[ref]
                    self._opened.discard(slot)
                    self._overfull.discard(slot)
                    self._crowded.discard(slot)

    def _is_live(self, entry: QueueEntry) -> bool:
        record = self._jobs.get(entry[4])
        return record is not None and record.entry is entry

    def _pop_head(self, group: Group) -> QueueEntry | None:
        """Take the group's first live Job off its queue (the caller puts it back)."""
        queue = group.queue
        while queue:
            entry = heappop(queue)
            if self._is_live(entry):
                return entry
        return None

    def _head(self, group: Group) -> QueueEntry:
        queue = group.queue
        while not self._is_live(queue[0]):
            heappop(queue)
        return queue[0]

    def _home(self, group: Group, slot: Slot | None) -> None:
        """Make the group wait on `slot` (full now, or filled by the pass under way), or be looked at on
        the next pass (None)."""
        self._leave_home(group)
        group.home = slot
        group.entry = (self._head(group), next(self._tie), group)
        if slot is None:
            self._pending_count += 1
            self._push(self._pending, group.entry, self._pending_count)
        else:
            slot.homed += 1
            self._push(slot.waiting, group.entry, slot.homed)
            self._refresh_opened(slot)

    def _rekey(self, group: Group) -> None:
        """The group's head changed: its entry must sort by the new one."""
        group.entry = (self._head(group), next(self._tie), group)
        if group.home is None:
            self._push(self._pending, group.entry, self._pending_count)
        else:
            self._push(group.home.waiting, group.entry, group.home.homed)

    def _leave_home(self, group: Group) -> None:
        if group.entry is None:
            return
        group.entry = None
        if group.home is None:
            self._pending_count -= 1
        else:
            group.home.homed -= 1
            self._refresh_opened(group.home)
            group.home = None

    @staticmethod
    def _push(heap: list[GroupEntry], entry: GroupEntry, live: int) -> None:
        heappush(heap, entry)
        if len(heap) > 2 * live + COMPACT_ABOVE:
            # In place: a pass may hold this very list, to put back what it took from it.
            heap[:] = [e for e in heap if e[2].entry is e]
            heapify(heap)

    def _refresh_opened(self, slot: Slot) -> None:
        """`_refresh` for a change of `homed` alone: only whether the slot is opened can differ."""
        if slot.count < slot.limit and slot.homed:
            self._opened.add(slot)
        else:
            self._opened.discard(slot)

    def _refresh(self, slot: Slot) -> None:
        """Keep the sets of opened and overfull slots true to the slot's counts."""
        if slot.count < slot.limit and slot.homed:
            self._opened.add(slot)
        else:
            self._opened.discard(slot)
        if slot.count > slot.limit and slot.late:
            self._overfull.add(slot)
        else:
            self._overfull.discard(slot)
        if slot.members is not None and slot.queued > (slot.policy.spec.maxQueued or 0):
            self._crowded.add(slot)
        else:
            self._crowded.discard(slot)

    # --- policies -----------------------------------------------------------------------------------

    def _reaches(self, policy: ConcurrencyPolicy | None, namespace: str) -> bool:
        return policy is not None and reaches(policy, namespace, self._namespace_labels)

    def _index_namespace(self, namespace: str) -> tuple[str, ...]:
        """Index the policies that reach the namespace; return the labels their selectors read."""
        own = sorted((p for ref, p in self._policies.items() if ref[0] == namespace), key=lambda p: p.name)
        if self._cluster_wide:
            own += sorted(
                (p for p in self._policies.values() if p.cluster_scoped and self._reaches(p, namespace)),
                key=lambda p: p.name,
            )
        self._by_namespace[namespace] = own
        read = self._selector_labels[namespace] = tuple(
            sorted({name for p in own for name in _selector_labels(p.spec.selector)})
        )
        self._selections[namespace] = {}
        return read

    def _take_out(self, affected: Callable[[str], bool]) -> list[JobView]:
        """Untrack every Job of the affected namespaces (the policies that reach them are about to change),
        forget those namespaces' index, and return the Jobs' views."""
        views = [record.view for record in self._jobs.values() if affected(record.view.namespace)]
        for view in views:
            self._remove(view.uid)
        self._forget_emptied()
        for namespace in [n for n in self._by_namespace if affected(n)]:
            del self._by_namespace[namespace], self._selector_labels[namespace], self._selections[namespace]
        return views

    def _put_back(self, views: list[JobView]) -> None:
        self._load(views)
