"""The pure decision core: which queued Jobs to admit, which intruders to re-suspend, which to release.

Everything here is a function of plain data — policies, Job views, and the
admissions this process has made but not yet seen come back through the watch
("assumed"). No Kopf, no API client, no clock. The operator, the CLI and the
property tests all call these same functions, so they never disagree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from jobgate.core.jobs import JobView
from jobgate.core.policy import NAMESPACE_KEY, ConcurrencyPolicy
from jobgate.core.selectors import matches

Key = tuple[str, ...]
PolicyRef = tuple[str, str]  # (namespace, name); ("", name) for a ClusterConcurrencyPolicy
# The labels of each Namespace, by name: what a ClusterConcurrencyPolicy's namespaceSelector reads.
# A namespace not in it counts as unlabeled.
NamespaceLabels = Mapping[str, Mapping[str, str]]
NO_NAMESPACES: NamespaceLabels = {}
KeyCounts = tuple[int, int]  # (running, queued) of one key


@dataclass(frozen=True, slots=True)
class Governance:
    """One policy that governs a Job, and the Job's key under it."""

    policy: ConcurrencyPolicy
    key: Key
    missing_labels: tuple[str, ...]  # keyLabels the Job lacks; they count as ""
    # (policy, key): made once, since every decision pass looks it up for every Job.
    slot: tuple[PolicyRef, Key] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "slot", ((self.policy.namespace, self.policy.name), self.key))

    @property
    def key_text(self) -> str:
        return describe_key(key_dict(self.policy, self.key))


def policy_ref(policy: ConcurrencyPolicy) -> PolicyRef:
    return (policy.namespace, policy.name)


def key_dict(policy: ConcurrencyPolicy, key: Key) -> dict[str, str]:
    return dict(zip(policy.spec.keyLabels, key, strict=True))


def describe_key(key: Mapping[str, str]) -> str:
    """``customer-id=42,region=eu`` (an empty value shown as ""); a policy without key labels has one key."""
    if not key:
        return "(all Jobs)"
    return ",".join(f"{label}={value}" if value else f'{label}=""' for label, value in key.items())


class Labeled(Protocol):
    """What governance looks at: a Job view, or a Job not yet created (in the webhook)."""

    @property
    def namespace(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


def job_key(key_labels: Sequence[str], namespace: str, labels: Mapping[str, str]) -> Key:
    """A Job's key under a policy keyed on `key_labels`: the one definition, which every decision uses.

    Each label's value, "" when the Job lacks it; NAMESPACE_KEY stands for the Job's namespace.
    A ClusterConcurrencyPolicy's key has no namespace otherwise: its slots span the namespaces.
    """
    return tuple(namespace if label == NAMESPACE_KEY else labels.get(label, "") for label in key_labels)


def reaches(policy: ConcurrencyPolicy, namespace: str, namespaces: NamespaceLabels) -> bool:
    """Whether the policy may govern Jobs of the namespace: its own, or one its namespaceSelector selects."""
    selector = policy.namespace_selector
    if selector is None:
        return policy.namespace == namespace
    return matches(selector, namespaces.get(namespace, {}))


def governance(
    policies: Iterable[ConcurrencyPolicy], job: Labeled, namespaces: NamespaceLabels = NO_NAMESPACES
) -> list[Governance]:
    """The policies that govern the Job (its namespace is theirs or selected, selector matches), with its key
    under each. `namespaces`: the Namespaces' labels, for ClusterConcurrencyPolicies."""
    found = []
    for policy in policies:
        if not reaches(policy, job.namespace, namespaces) or not matches(policy.spec.selector, job.labels):
            continue
        labels = policy.spec.keyLabels
        key = job_key(labels, job.namespace, job.labels)
        missing = tuple(label for label in labels if label not in job.labels and label != NAMESPACE_KEY)
        found.append(Governance(policy, key, missing))
    return found


class PolicyIndex:
    """Policies grouped by namespace, so that finding a Job's governors costs only its namespace's.

    A namespace's policies are its own and the ClusterConcurrencyPolicies whose
    namespaceSelector matches its labels (`namespaces`, read when first needed). A Job
    view's governance is remembered until its labels change: a decision pass over every
    tracked Job then costs a lookup per Job, not a selector match. The engine keeps one
    index for as long as neither the policies nor the Namespaces' labels change.
    """

    def __init__(self, policies: Iterable[ConcurrencyPolicy], namespaces: NamespaceLabels = NO_NAMESPACES) -> None:
        self.by_namespace: dict[str, list[ConcurrencyPolicy]] = defaultdict(list)
        self.cluster_wide: list[ConcurrencyPolicy] = []
        for policy in policies:
            if policy.cluster_scoped:
                self.cluster_wide.append(policy)
            else:
                self.by_namespace[policy.namespace].append(policy)
        self.namespaces = namespaces
        self._reaching: dict[str, list[ConcurrencyPolicy]] = {}  # by namespace, own and cluster-wide
        self._known: dict[str, tuple[Mapping[str, str], list[Governance]]] = {}  # by Job uid

    def policies_of(self, namespace: str) -> list[ConcurrencyPolicy]:
        """The policies that may govern the namespace's Jobs: its own, then the cluster-wide that reach it."""
        if not self.cluster_wide:
            return self.by_namespace.get(namespace, [])
        found = self._reaching.get(namespace)
        if found is None:
            found = self._reaching[namespace] = self.by_namespace.get(namespace, []) + [
                p for p in self.cluster_wide if reaches(p, namespace, self.namespaces)
            ]
        return found

    def governance(self, job: Labeled) -> list[Governance]:
        return governance(self.policies_of(job.namespace), job, self.namespaces)

    def governance_of(self, job: JobView) -> list[Governance]:
        known = self._known.get(job.uid)
        # The same view comes back pass after pass: identity settles most lookups without comparing labels.
        if known is not None and (known[0] is job.labels or known[0] == job.labels):
            return known[1]
        found = self.governance(job)
        self._known[job.uid] = (job.labels, found)
        return found

    def forget(self, uid: str) -> None:
        self._known.pop(uid, None)


@dataclass
class KeyState:
    """Jobs of one key under one policy, as the decision sees them."""

    running: list[JobView] = field(default_factory=list)
    queued: list[JobView] = field(default_factory=list)  # in admission order once tallied
    held: list[JobView] = field(default_factory=list)  # on hold, or suspended by someone else

    @property
    def counts(self) -> KeyCounts:
        return (len(self.running), len(self.queued))


def busiest_first(keys: Mapping[Key, KeyCounts]) -> list[tuple[Key, KeyCounts]]:
    """The keys with running or queued Jobs, most queued first, then most running, then by key.

    The order of the policy's status.busiestKeys and of `kubectl jobgate status`.
    """
    active = ((key, counts) for key, counts in keys.items() if counts[0] or counts[1])
    return sorted(active, key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))


def is_running(job: JobView, assumed: Collection[str]) -> bool:
    """Holds a slot: unsuspended and not finished, or admitted by us and not yet seen unsuspended."""
    return not job.finished and (not job.suspended or job.uid in assumed)


def is_queued(job: JobView, assumed: Collection[str]) -> bool:
    return job.queued and job.uid not in assumed


def tally(
    policies: Sequence[ConcurrencyPolicy],
    jobs: Iterable[JobView],
    assumed: Collection[str] = (),
    index: PolicyIndex | None = None,
    namespaces: NamespaceLabels = NO_NAMESPACES,
) -> dict[PolicyRef, dict[Key, KeyState]]:
    """Per policy and key: the running, queued (in admission order) and held Jobs.

    `index`, if given, must index exactly `policies` and `namespaces`: the engine passes the one it keeps.
    """
    index = index or PolicyIndex(policies, namespaces)
    states: dict[PolicyRef, dict[Key, KeyState]] = {policy_ref(p): {} for p in policies}
    for job in jobs:
        if job.finished or job.foreign is not None:
            continue
        for gov in index.governance_of(job):
            ref, key = gov.slot
            state = states[ref].setdefault(key, KeyState())
            if is_running(job, assumed):
                state.running.append(job)
            elif is_queued(job, assumed):
                state.queued.append(job)
            else:
                state.held.append(job)
    for keys in states.values():
        for state in keys.values():
            state.queued.sort(key=lambda j: j.order)
            state.running.sort(key=lambda j: j.order)
    return states


@dataclass
class Plan:
    admit: list[JobView] = field(default_factory=list)  # in admission order
    resuspend: list[JobView] = field(default_factory=list)  # unsuspended behind our back, over the limit
    release: list[JobView] = field(default_factory=list)  # queued by us, governed by nothing any more
    # Queued Jobs pushed out of a full queue (spec.overflow: ReplaceOldest), oldest first: to be deleted.
    evict: list[JobView] = field(default_factory=list)
    # Running Jobs (assumed admissions included) per policy and key, as the plan found them.
    running: dict[tuple[PolicyRef, Key], int] = field(default_factory=dict)


def plan(
    policies: Sequence[ConcurrencyPolicy],
    jobs: Iterable[JobView],
    assumed: Collection[str] = (),
    index: PolicyIndex | None = None,
    namespaces: NamespaceLabels = NO_NAMESPACES,
) -> Plan:
    """Decide every admission that fits now, in one pass.

    A queued Job is admitted when every policy that governs it has a free slot for
    its key. Jobs are considered in admission order, and a Job that does not fit
    is skipped, not waited for: it blocks no Job of another key, and since it
    takes nothing it cannot deadlock overlapping policies. A key's limit is
    `ConcurrencyPolicy.limit_for(key)`: its own entry in spec.limits, else
    spec.maxConcurrent.

    Then bounded queues: of the Jobs left waiting, those that full ReplaceOldest
    queues push out are to be deleted (`overflowing`). Reject queues are the
    webhook's (`queue_full`): the operator never deletes for them.

    A ClusterConcurrencyPolicy governs the Jobs of the namespaces whose labels
    (`namespaces`) its namespaceSelector matches, and its keys span them: a Job
    needs a free slot in it as in each namespaced policy that governs it.

    `index`, if given, must index exactly `policies` and `namespaces`: the engine passes the one it keeps.
    """
    index = index or PolicyIndex(policies, namespaces)
    result = Plan()
    running: dict[tuple[PolicyRef, Key], list[JobView]] = defaultdict(list)
    candidates: list[tuple[JobView, list[Governance]]] = []
    policies_by_ref: dict[PolicyRef, ConcurrencyPolicy] = {policy_ref(p): p for p in policies}
    created: dict[PolicyRef, float] = {policy_ref(p): p.created for p in policies}

    governance_of = index.governance_of
    for job in jobs:
        if job.finished or job.foreign is not None:
            continue  # holds no slot; another controller's Job is never counted nor touched
        govs = governance_of(job)
        if not job.suspended or job.uid in assumed:  # is_running, inlined: this loop sees every Job
            for gov in govs:
                running[gov.slot].append(job)
        elif not job.queued:
            continue  # held, or suspended by someone else (no queued mark): never unsuspended
        elif not govs:
            if job.admitted_at is None:
                result.release.append(job)
        else:
            candidates.append((job, govs))

    # Backstop: Jobs unsuspended without our admission, after the policy existed,
    # beyond its limit. They keep counting as running until the watch shows them
    # suspended, so a failed re-suspension can never lead to over-admission.
    intruders: set[str] = set()
    for slot, members in running.items():
        ref, _ = slot
        limit = policies_by_ref[ref].limit_for(slot[1])
        if len(members) <= limit:
            continue
        legit = [j for j in members if j.admitted_at is not None or j.created <= created[ref] or j.suspended]
        late = sorted((j for j in members if j not in legit), key=lambda j: j.order)
        room = max(0, limit - len(legit))
        intruders.update(j.uid for j in late[room:])
    if intruders:
        seen: set[str] = set()
        for members in running.values():
            for job in members:
                if job.uid in intruders and job.uid not in seen:
                    seen.add(job.uid)
                    result.resuspend.append(job)
        result.resuspend.sort(key=lambda j: j.order)

    counts = {slot: len(members) for slot, members in running.items()}
    result.running = dict(counts)
    candidates.sort(key=lambda c: c[0].order)
    waiting: list[tuple[JobView, list[Governance]]] = []
    for job, govs in candidates:
        if all(counts.get(gov.slot, 0) < gov.policy.limit_for(gov.key) for gov in govs):
            result.admit.append(job)
            for gov in govs:
                counts[gov.slot] = counts.get(gov.slot, 0) + 1
        else:
            waiting.append((job, govs))
    if any(p.spec.replaces_oldest for p in policies):
        result.evict = overflowing(waiting)
    return result


def age(job: JobView) -> tuple[float, str, str]:
    """Which queued Job is the oldest, for ReplaceOldest: creation time, then namespace and name; not priority."""
    return (job.created, job.namespace, job.name)


def overflowing(waiting: Iterable[tuple[JobView, Sequence[Governance]]]) -> list[JobView]:
    """The queued Jobs that full ReplaceOldest queues push out, oldest first.

    `waiting`: the queued Jobs that this decision leaves waiting (admissions are
    made first: a Job that can start now never counts against a queue), each with
    its governance. Held, running and assumed Jobs are never in it, so they are
    neither counted nor evicted.

    For each policy with maxQueued and overflow ReplaceOldest, a key whose waiting
    Jobs outnumber maxQueued must lose its oldest ones (by `age`, whatever their
    priority) until maxQueued remain. Jobs are visited oldest first over all keys,
    and one is evicted while some bounded key it is in still has too many; an
    eviction counts in every bounded key of the Job. So a Job in two bounded keys
    is deleted once, and with a single bounded policy per Job exactly the oldest
    surplus of each key goes.
    """
    queued: dict[tuple[PolicyRef, Key], int] = defaultdict(int)
    bounds: dict[tuple[PolicyRef, Key], int] = {}
    for _, govs in waiting:
        for gov in govs:
            spec = gov.policy.spec
            if spec.replaces_oldest and spec.maxQueued is not None:
                queued[gov.slot] += 1
                bounds[gov.slot] = spec.maxQueued
    surplus = {slot: count - bounds[slot] for slot, count in queued.items() if count > bounds[slot]}
    if not surplus:
        return []
    evicted = []
    for job, govs in sorted(waiting, key=lambda w: age(w[0])):
        slots = [gov.slot for gov in govs if gov.slot in surplus]
        if any(surplus[slot] > 0 for slot in slots):
            evicted.append(job)
            for slot in slots:
                surplus[slot] -= 1
    return evicted


@dataclass(frozen=True)
class QueueFull:
    """A key's bounded queue with overflow Reject, too full for one more Job."""

    policy: ConcurrencyPolicy
    key: Key
    queued: int
    running: int

    @property
    def message(self) -> str:
        limit = self.policy.limit_for(self.key)
        return (
            f"the queue of {self.policy.kind} {self.policy.name}{for_key(self.policy, self.key)} is full "
            f"({self.queued}/{self.policy.spec.maxQueued} queued, {self.running}/{limit} running; "
            "overflow: Reject): try again when a queued Job has started"
        )


def for_key(policy: ConcurrencyPolicy, key: Key) -> str:
    """`` for customer-id=acme``; nothing for a policy without keyLabels (one key for all its Jobs)."""
    return f" for {describe_key(key_dict(policy, key))}" if key else ""


def queue_full(
    gov: Governance, jobs: Iterable[JobView], namespaces: NamespaceLabels = NO_NAMESPACES
) -> QueueFull | None:
    """Whether a new Job of `gov`'s key must be refused: its policy bounds queues with overflow Reject, and
    the key's queue already holds maxQueued Jobs beyond the key's free slots.

    `jobs`: Jobs that may be in the key (others are skipped; `namespaces` tells which a
    ClusterConcurrencyPolicy reaches). A new Job that would
    start at once never counts against the queue, so with maxQueued 0 a Job is
    accepted only while its key has a free slot.
    """
    spec = gov.policy.spec
    if spec.maxQueued is None or spec.queue_overflow != "Reject":
        return None
    running = queued = 0
    for job in jobs:
        if job.finished or job.foreign is not None:
            continue  # holds no slot, as in `plan`; another controller's Job is never counted
        if not any(g.slot == gov.slot for g in governance([gov.policy], job, namespaces)):
            continue
        if job.running:
            running += 1
        elif job.queued:
            queued += 1
    free = max(0, gov.policy.limit_for(gov.key) - running)
    return QueueFull(gov.policy, gov.key, queued, running) if queued >= spec.maxQueued + free else None
