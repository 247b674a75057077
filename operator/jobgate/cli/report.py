"""What the CLI shows — per-key counts, queues, why a Job waits — from policies and Job views alone.

Pure: no client and no clock (the caller passes ``now``). Every count and
position comes from ``admission.tally``, ``admission.plan`` and ``JobView.order``,
the functions the operator decides with, so the CLI never disagrees with it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jobgate.core import admission
from jobgate.core.admission import describe_key
from jobgate.core.estimate import Estimate, estimate_start
from jobgate.core.jobs import HOLD, JobView
from jobgate.core.policy import NAMESPACE_KEY, ConcurrencyPolicy, LabelSelector
from jobgate.core.timestamps import format_kubernetes_time

Slot = Literal["free", "taken", "full", "paused"]
State = Literal["running", "finished", "held", "queued", "suspended", "not-jobgates"]
HISTORY = 20  # the most recent finished Jobs of a key that estimates learn run times from


def human_duration(seconds: float) -> str:
    """Like kubectl's ages: 45s, 3m20s, 42m, 5h10m, 20h, 3d4h, 30d, 2y10d."""
    s = max(0, int(seconds))
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    return f"{years}y{days % 365}d" if years < 8 and days % 365 else f"{years}y"


def waited(job: JobView, now: float) -> float:
    """Seconds since the Job was queued (jobgate.dev/queued-at, else creationTimestamp); never negative."""
    return max(0.0, now - job.queued_since)


class _Decision:
    """The tally and the plan for one set of policies and Jobs, computed once."""

    def __init__(
        self,
        policies: Sequence[ConcurrencyPolicy],
        jobs: Sequence[JobView],
        namespaces: admission.NamespaceLabels = admission.NO_NAMESPACES,
    ) -> None:
        self.index = admission.PolicyIndex(policies, namespaces)
        self.tally = admission.tally(policies, jobs, index=self.index)
        self.plan = admission.plan(policies, jobs, index=self.index)
        self.admit = {job.uid for job in self.plan.admit}
        # Admissions that the next decision makes in each slot: they take its free slots.
        self.admitted_in: dict[tuple[admission.PolicyRef, admission.Key], set[str]] = defaultdict(set)
        for job in self.plan.admit:
            for gov in self.index.governance_of(job):
                self.admitted_in[gov.slot].add(job.uid)

    def keys(self, policy: ConcurrencyPolicy) -> dict[admission.Key, admission.KeyState]:
        return self.tally[admission.policy_ref(policy)]

    def slot(self, policy: ConcurrencyPolicy, key: admission.Key, job: JobView) -> Slot:
        """The key's slots as ``job`` sees them at the next decision."""
        limit = policy.limit_for(key)
        running = len(self.keys(policy).get(key, admission.KeyState()).running)
        if limit == 0:
            return "paused"
        if running >= limit:
            return "full"
        others = self.admitted_in[(admission.policy_ref(policy), key)] - {job.uid}
        return "taken" if running + len(others) >= limit else "free"


# --- estimated starts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunTimes:
    """When a Job's pods started and when it finished, from its status (the CLI's reads; not in JobView)."""

    started: float | None  # status.startTime
    ended: float | None  # status.completionTime, else when its Complete or Failed condition became True


@dataclass(frozen=True)
class StartEstimate:
    """When a queued Job should start, and what that rests on: always an estimate, never a promise."""

    start_in: float | None  # seconds from now; None: unknown
    basis: str
    at: float | None = None  # now + start_in

    def as_dict(self) -> dict[str, Any]:
        return {
            "inSeconds": _seconds(self.start_in),
            "at": None if self.at is None else format_kubernetes_time(self.at),
            "basis": self.basis,
        }


class _History:
    """Run durations of the finished Jobs still present, per policy and key, most recent first.

    Only what the API still holds: Jobs deleted after finishing (ttlSecondsAfterFinished,
    clean-ups) take their run times with them.
    """

    def __init__(self, index: admission.PolicyIndex, jobs: Iterable[JobView], runs: Mapping[str, RunTimes]) -> None:
        by_slot: dict[tuple[admission.PolicyRef, admission.Key], list[tuple[float, float]]] = defaultdict(list)
        by_policy: dict[admission.PolicyRef, list[tuple[float, float]]] = defaultdict(list)
        for job in jobs:
            times = runs.get(job.uid)
            if not job.finished or times is None or times.started is None or times.ended is None:
                continue
            if times.ended < times.started:
                continue
            for gov in index.governance_of(job):
                by_slot[gov.slot].append((times.ended, times.ended - times.started))
                by_policy[gov.slot[0]].append((times.ended, times.ended - times.started))
        self.by_slot = {slot: _recent(found) for slot, found in by_slot.items()}
        self.by_policy = {ref: _recent(found) for ref, found in by_policy.items()}

    def durations(self, policy: ConcurrencyPolicy, key: admission.Key) -> tuple[list[float], str]:
        """The key's recent run durations, else its policy's (other keys), and where they come from."""
        ref = admission.policy_ref(policy)
        own = self.by_slot.get((ref, key), [])
        if own:
            return own, "of this key"
        others = self.by_policy.get(ref, [])
        return others, f"of other keys of policy '{policy.name}' (none of this key)"


def _recent(found: list[tuple[float, float]]) -> list[float]:
    return [duration for _, duration in sorted(found, reverse=True)[:HISTORY]]


def _estimate(
    decision: _Decision,
    history: _History,
    runs: Mapping[str, RunTimes],
    job: JobView,
    now: float,
) -> StartEstimate:
    """The latest estimated start over every policy that governs ``job``: it needs a slot in each."""
    if job.uid in decision.admit:
        return StartEstimate(0.0, "a slot is free: jobgate admits it at its next decision", now)
    govs = decision.index.governance_of(job)
    found: list[tuple[Estimate, str]] = []
    for gov in govs:
        state = decision.keys(gov.policy).get(gov.key, admission.KeyState())
        line = [j.uid for j in state.queued]
        if job.uid not in line:
            continue
        position = line.index(job.uid) + 1
        elapsed = [_elapsed(runs.get(j.uid), now) for j in state.running]
        durations, source = history.durations(gov.policy, gov.key)
        slots = gov.policy.limit_for(gov.key)
        estimate = estimate_start(position, slots, elapsed, durations)
        found.append((estimate, _basis(gov.policy, position, len(elapsed), slots, estimate, source, len(govs) > 1)))
    if not found:
        return StartEstimate(None, "unknown: it is not in any queue")
    unknown = [(e, basis) for e, basis in found if not e.known]
    if unknown:
        return StartEstimate(None, unknown[0][1])
    latest, basis = max(found, key=lambda f: f[0].start_in or 0.0)
    start_in = latest.start_in or 0.0
    return StartEstimate(start_in, basis, now + start_in)


def _elapsed(times: RunTimes | None, now: float) -> float:
    """How long a running Job has run; 0 if it has no startTime yet (just admitted)."""
    if times is None or times.started is None:
        return 0.0
    return max(0.0, now - times.started)


def _basis(
    policy: ConcurrencyPolicy, position: int, running: int, slots: int, estimate: Estimate, source: str, several: bool
) -> str:
    where = f"policy '{policy.name}': " if several else ""
    if estimate.unknown == "paused":
        return f"unknown: {where}policy '{policy.name}' is paused (maxConcurrent 0)"
    if estimate.unknown == "no-history":
        return f"unknown: {where}no finished Job of policy '{policy.name}' is left to learn run times from"
    ahead = f"{position - 1} queued ahead" if position > 1 else "next in line"
    run = "" if estimate.run_seconds is None else f"; median run {human_duration(estimate.run_seconds)}"
    runs = "" if estimate.run_seconds is None else f" of {estimate.runs} recent run(s) {source}"
    return f"{where}{ahead}, {running}/{slots} running{run}{runs}"


# --- status --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyStatus:
    key: dict[str, str]
    running: int
    queued: int
    held: int
    oldest_wait: float | None  # seconds the longest-waiting queued Job has waited
    admissible: int  # queued Jobs the next decision admits
    max_concurrent: int  # the key's limit: its own (spec.limits) or the policy's
    own_limit: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "running": self.running,
            "queued": self.queued,
            "held": self.held,
            "oldestWaitSeconds": _seconds(self.oldest_wait),
            "admissible": self.admissible,
            "maxConcurrent": self.max_concurrent,
            "ownLimit": self.own_limit,
        }


@dataclass(frozen=True)
class PolicySummary:
    namespace: str
    name: str
    key_labels: list[str]
    max_concurrent: int
    running: int
    queued: int
    held: int
    keys: int  # keys with running or queued Jobs
    busiest_keys: list[KeyStatus]  # the first --limit of them, most queued first
    max_queued: int | None = None  # spec.maxQueued: the bound of each key's queue
    overflow: str = "Reject"

    @property
    def more_keys(self) -> int:
        return self.keys - len(self.busiest_keys)

    def as_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "keyLabels": self.key_labels,
            "maxConcurrent": self.max_concurrent,
            "running": self.running,
            "queued": self.queued,
            "held": self.held,
            "keys": self.keys,
            "moreKeys": self.more_keys,
            "busiestKeys": [k.as_dict() for k in self.busiest_keys],
            "maxQueued": self.max_queued,
            "overflow": self.overflow,
        }


@dataclass(frozen=True)
class StatusReport:
    namespace: str | None  # None: all namespaces
    policies: list[PolicySummary]

    def as_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "policies": [p.as_dict() for p in self.policies]}


def status_report(
    namespace: str | None,
    policies: Sequence[ConcurrencyPolicy],
    jobs: Sequence[JobView],
    now: float,
    limit: int = 0,
    only: Iterable[ConcurrencyPolicy] | None = None,
    namespaces: admission.NamespaceLabels = admission.NO_NAMESPACES,
) -> StatusReport:
    """Per policy (``only`` these, all by default) and key: running, queued, held, oldest wait.

    ``namespace`` is the one that was read (None: all); ``policies`` and ``jobs`` are all of it.

    Keys are sorted as in the policy's ``status.busiestKeys`` (most queued, then
    most running); ``limit`` keeps that many per policy, 0 keeps all. ``namespaces``: the
    Namespaces' labels, for ClusterConcurrencyPolicies (namespace "" in the summary).
    """
    decision = _Decision(policies, jobs, namespaces)
    summaries = []
    for policy in sorted(policies if only is None else only, key=admission.policy_ref):
        keys = decision.keys(policy)
        active = [(key, keys[key]) for key, _ in admission.busiest_first({k: s.counts for k, s in keys.items()})]
        shown = active if limit <= 0 else active[:limit]
        summaries.append(
            PolicySummary(
                namespace=policy.namespace,
                name=policy.name,
                key_labels=list(policy.spec.keyLabels),
                max_concurrent=policy.spec.maxConcurrent,
                running=sum(len(s.running) for s in keys.values()),
                queued=sum(len(s.queued) for s in keys.values()),
                held=sum(len(s.held) for s in keys.values()),
                keys=len(active),
                busiest_keys=[
                    KeyStatus(
                        key=admission.key_dict(policy, key),
                        running=len(s.running),
                        queued=len(s.queued),
                        held=len(s.held),
                        oldest_wait=max((waited(j, now) for j in s.queued), default=None),
                        admissible=sum(1 for j in s.queued if j.uid in decision.admit),
                        max_concurrent=policy.limit_for(key),
                        own_limit=policy.has_own_limit(key),
                    )
                    for key, s in shown
                ],
                max_queued=policy.spec.maxQueued,
                overflow=policy.spec.queue_overflow,
            )
        )
    return StatusReport(namespace, summaries)


# --- queue ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueEntry:
    name: str
    key: dict[str, str]
    rank: int  # 1-based, in the admission order of the policy's whole queue
    position: int  # 1-based in its key's queue: 1 is the next to be admitted for its key
    key_queued: int  # length of its key's queue
    running: int  # running Jobs of its key
    priority: int
    waiting: float  # seconds since queued
    admit_next: bool  # the next decision admits it
    estimate: StartEstimate
    max_concurrent: int  # its key's limit: its own (spec.limits) or the policy's

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "rank": self.rank,
            "position": self.position,
            "keyQueued": self.key_queued,
            "running": self.running,
            "maxConcurrent": self.max_concurrent,
            "priority": self.priority,
            "waitingSeconds": _seconds(self.waiting),
            "admitNext": self.admit_next,
            "estimatedStart": self.estimate.as_dict(),
        }


@dataclass(frozen=True)
class QueueReport:
    namespace: str
    policy: str
    key_labels: list[str]
    max_concurrent: int
    key_filter: dict[str, str]
    queued: int  # in the whole policy, before the key filter
    matching: int  # entries that pass the key filter, before the limit
    entries: list[QueueEntry]

    @property
    def more(self) -> int:
        return self.matching - len(self.entries)

    def as_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "policy": self.policy,
            "keyLabels": self.key_labels,
            "maxConcurrent": self.max_concurrent,
            "keyFilter": self.key_filter,
            "queued": self.queued,
            "matching": self.matching,
            "more": self.more,
            "jobs": [e.as_dict() for e in self.entries],
        }


@dataclass(frozen=True)
class QueueList:
    """The queues of several policies: ``queue`` without a policy name, or with -A."""

    namespace: str | None  # None: all namespaces
    queues: list[QueueReport]

    def as_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "queues": [q.as_dict() for q in self.queues]}


def queue_report(
    policy: ConcurrencyPolicy,
    policies: Sequence[ConcurrencyPolicy],
    jobs: Sequence[JobView],
    now: float,
    key_filter: Mapping[str, str] | None = None,
    limit: int = 0,
    runs: Mapping[str, RunTimes] | None = None,
    selected: Collection[str] | None = None,
    namespaces: admission.NamespaceLabels = admission.NO_NAMESPACES,
) -> QueueReport:
    """The policy's queued Jobs in admission order, with their rank, their position in their key, and estimates.

    ``policies`` are all those that may govern the Jobs (overlaps decide what
    is admitted next); ``key_filter`` keeps the Jobs whose key has these values,
    ``selected`` (uids, from a label selector) the Jobs it names; ranks and
    positions stay those in the whole queue. ``runs`` has the start and end of
    the Jobs that have them: estimates learn run times from them.
    """
    return queue_list(None, [policy], policies, jobs, now, key_filter, limit, runs, selected, namespaces).queues[0]


def queue_list(
    namespace: str | None,
    shown: Sequence[ConcurrencyPolicy],
    policies: Sequence[ConcurrencyPolicy],
    jobs: Sequence[JobView],
    now: float,
    key_filter: Mapping[str, str] | None = None,
    limit: int = 0,
    runs: Mapping[str, RunTimes] | None = None,
    selected: Collection[str] | None = None,
    namespaces: admission.NamespaceLabels = admission.NO_NAMESPACES,
) -> QueueList:
    """``queue_report`` for each of the ``shown`` policies, deciding once.

    A ClusterConcurrencyPolicy's queue holds Jobs of several namespaces: they are named "namespace/name".
    """
    decision = _Decision(policies, jobs, namespaces)
    runs = runs or {}
    history = _History(decision.index, jobs, runs)
    wanted = dict(key_filter or {})
    queues = []
    for policy in sorted(shown, key=admission.policy_ref):
        placed: list[tuple[JobView, admission.Key, int, admission.KeyState]] = []
        for key, state in decision.keys(policy).items():
            placed.extend((job, key, position, state) for position, job in enumerate(state.queued, start=1))
        placed.sort(key=lambda p: p[0].order)
        entries: list[QueueEntry] = []
        matching = 0
        for rank, (job, key, position, state) in enumerate(placed, start=1):
            named = admission.key_dict(policy, key)
            if any(named.get(label) != value for label, value in wanted.items()):
                continue
            if selected is not None and job.uid not in selected:
                continue
            matching += 1
            if limit > 0 and len(entries) >= limit:
                continue  # counted, not shown: no estimate needed
            entries.append(
                QueueEntry(
                    name=_job_name(policy, job),
                    key=named,
                    rank=rank,
                    position=position,
                    key_queued=len(state.queued),
                    running=len(state.running),
                    priority=job.priority,
                    waiting=waited(job, now),
                    admit_next=job.uid in decision.admit,
                    estimate=_estimate(decision, history, runs, job, now),
                    max_concurrent=policy.limit_for(key),
                )
            )
        queues.append(
            QueueReport(
                namespace=policy.namespace,
                policy=policy.name,
                key_labels=list(policy.spec.keyLabels),
                max_concurrent=policy.spec.maxConcurrent,
                key_filter=wanted,
                queued=len(placed),
                matching=matching,
                entries=entries,
            )
        )
    return QueueList(namespace, queues)


# --- why -----------------------------------------------------------------------------------------


def _job_name(policy: ConcurrencyPolicy, job: JobView) -> str:
    """A Job as a policy's lists name it: "namespace/name" under a cluster policy, whose keys span namespaces."""
    return f"{job.namespace}/{job.name}" if policy.cluster_scoped else job.name


def _across(policy: ConcurrencyPolicy) -> bool:
    """Whether a key's Jobs may be in several namespaces: a cluster policy not keyed on jobgate.dev/namespace."""
    return policy.cluster_scoped and NAMESPACE_KEY not in policy.spec.keyLabels


@dataclass(frozen=True)
class Governor:
    """One policy that governs the Job: its key there, the slot's occupants, the Job's place in line."""

    policy: str
    key: dict[str, str]
    missing_labels: list[str]
    running: int
    max_concurrent: int  # the key's own limit (spec.limits) or the policy's
    own_limit: bool
    running_jobs: list[str]  # the Jobs holding the key's slots, in admission order
    running_for: list[float]  # how long each has run (since its status.startTime)
    queued: int
    position: int | None  # in the key's queue, when the Job is queued
    slot: Slot  # at the next decision: free, taken (by Jobs before it), full, or paused (max 0)
    cluster_scoped: bool = False  # a ClusterConcurrencyPolicy
    across_namespaces: bool = False  # its key counts Jobs of every namespace it selects

    @property
    def title(self) -> str:
        return f"cluster policy '{self.policy}'" if self.cluster_scoped else f"policy '{self.policy}'"

    @property
    def where(self) -> str:
        return " across namespaces" if self.across_namespaces else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "clusterScoped": self.cluster_scoped,
            "acrossNamespaces": self.across_namespaces,
            "key": self.key,
            "missingLabels": self.missing_labels,
            "running": self.running,
            "maxConcurrent": self.max_concurrent,
            "ownLimit": self.own_limit,
            "runningJobs": self.running_jobs,
            "runningSeconds": [_seconds(e) for e in self.running_for],
            "queued": self.queued,
            "position": self.position,
            "slot": self.slot,
        }


@dataclass(frozen=True)
class Unmatched:
    """A policy of the namespace that does not govern the Job, and why."""

    policy: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "reason": self.reason}


@dataclass(frozen=True)
class WhyReport:
    namespace: str
    name: str
    state: State  # "suspended": suspended, not held, and no policy governs it; "not-jobgates": see `ignored`
    admit_next: bool  # the next decision admits it
    release: bool  # ungoverned, queued by jobgate: the next decision unsuspends it
    resuspend: bool  # unsuspended without jobgate, over a limit: the next decision suspends it
    evict: bool  # queued beyond a full ReplaceOldest queue: the next decision deletes it
    waiting: float | None  # seconds since queued, for a suspended Job
    estimate: StartEstimate | None  # for a queued Job
    governors: list[Governor]
    unmatched: list[Unmatched]  # the namespace's other policies
    ignored: str | None = None  # why jobgate leaves this Job alone, for state "not-jobgates"

    @property
    def summary(self) -> str:
        """One or two sentences that answer "why"."""
        job = f"Job '{self.name}'"
        slots = " and ".join(
            f"{g.title} ({describe_key(g.key)}: {g.running}/{g.max_concurrent} running{g.where}"
            f"{' under its own limit' if g.own_limit else ''})"
            for g in self.governors
        )
        if self.state == "finished":
            text = f"{job} has finished: it holds no slot."
        elif self.state == "not-jobgates":
            text = f"{job} is not jobgate's to gate: {self.ignored}. jobgate never suspends, starts or counts it."
        elif self.state == "running" and self.resuspend:
            text = (
                f"{job} was unsuspended without jobgate's admission beyond the limit of {slots}: "
                "jobgate will suspend it again."
            )
        elif self.state == "running":
            text = (
                f"{job} is running: it holds a slot in {slots}."
                if slots
                else f"{job} is running; no policy governs it."
            )
        elif self.state == "held":
            text = (
                f'{job} is on hold (annotation {HOLD}: "true"): '
                "jobgate will not admit it until the annotation is removed."
            )
        elif self.state == "suspended":
            if self.unmatched:
                where = f"no ConcurrencyPolicy in namespace '{self.namespace}' governs it"
            else:
                where = f"namespace '{self.namespace}' has no ConcurrencyPolicy"
            outcome = (
                "jobgate will release it (unsuspend it) at its next decision"
                if self.release
                else "jobgate will not start it; set spec.suspend to false to start it"
            )
            text = f"{job} is suspended, and {where}: {outcome}."
        elif self.evict:
            text = (
                f"{job} is queued, and newer Jobs fill its key's queue (overflow: ReplaceOldest): "
                "jobgate will delete it at its next decision."
            )
        elif self.admit_next:
            text = (
                f"{job} is queued and will be admitted at jobgate's next decision: "
                "every policy that governs it has a free slot for its key."
            )
        else:
            blockers = "; and for ".join(_blocker(g) for g in self.governors if g.slot != "free")
            text = f"{job} is queued and waits for {blockers or 'a free slot'}."
        missing = sorted({label for g in self.governors for label in g.missing_labels})
        if missing:
            text += f" It lacks the label(s) {', '.join(missing)}, which count as the empty value."
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "state": self.state,
            "summary": self.summary,
            "admitNext": self.admit_next,
            "release": self.release,
            "resuspend": self.resuspend,
            "evict": self.evict,
            "waitingSeconds": _seconds(self.waiting),
            "estimatedStart": None if self.estimate is None else self.estimate.as_dict(),
            "policies": [g.as_dict() for g in self.governors],
            "unmatchedPolicies": [u.as_dict() for u in self.unmatched],
        }


def why_report(
    job: JobView,
    policies: Sequence[ConcurrencyPolicy],
    jobs: Sequence[JobView],
    now: float,
    runs: Mapping[str, RunTimes] | None = None,
    namespaces: admission.NamespaceLabels = admission.NO_NAMESPACES,
) -> WhyReport:
    """Why ``job`` waits, runs, or is left alone; ``policies`` and ``jobs`` are those of its namespace
    (of every namespace, when a ClusterConcurrencyPolicy reaches it: ``namespaces`` has their labels).

    ``runs``: the start and end of the Jobs that have them, for the estimated start.
    """
    jobs = [*(j for j in jobs if j.uid != job.uid), job]
    decision = _Decision(policies, jobs, namespaces)
    runs = runs or {}
    govs = admission.governance(policies, job, namespaces)
    governors = []
    for gov in govs:
        occupants = decision.keys(gov.policy).get(gov.key, admission.KeyState())
        line = [j.uid for j in occupants.queued]
        governors.append(
            Governor(
                policy=gov.policy.name,
                key=admission.key_dict(gov.policy, gov.key),
                missing_labels=list(gov.missing_labels),
                running=len(occupants.running),
                max_concurrent=gov.policy.limit_for(gov.key),
                own_limit=gov.policy.has_own_limit(gov.key),
                running_jobs=[_job_name(gov.policy, j) for j in occupants.running],
                running_for=[_elapsed(runs.get(j.uid), now) for j in occupants.running],
                queued=len(occupants.queued),
                position=line.index(job.uid) + 1 if job.uid in line else None,
                slot=decision.slot(gov.policy, gov.key, job),
                cluster_scoped=gov.policy.cluster_scoped,
                across_namespaces=_across(gov.policy),
            )
        )
    governing = {admission.policy_ref(gov.policy) for gov in govs}
    state: State
    ignored = job.foreign if governors else None
    if governors and job.suspended and not job.finished and not job.held and not job.marked and ignored is None:
        ignored = (
            "it was suspended without jobgate's queued mark (label jobgate.dev/queued), so by someone else; "
            "set spec.suspend to false to start it"
        )
    if job.finished:
        state = "finished"
    elif ignored is not None:
        state = "not-jobgates"
    elif job.running:
        state = "running"
    elif job.held:
        state = "held"
    else:
        state = "queued" if governors else "suspended"
    return WhyReport(
        namespace=job.namespace,
        name=job.name,
        state=state,
        admit_next=job.uid in decision.admit,
        release=any(j.uid == job.uid for j in decision.plan.release),
        resuspend=any(j.uid == job.uid for j in decision.plan.resuspend),
        evict=any(j.uid == job.uid for j in decision.plan.evict),
        waiting=waited(job, now) if job.suspended and not job.finished else None,
        estimate=_estimate(decision, _History(decision.index, jobs, runs), runs, job, now)
        if state == "queued"
        else None,
        governors=governors,
        ignored=ignored if state == "not-jobgates" else None,
        unmatched=[
            Unmatched(p.name, _mismatch(p, job, namespaces))
            for p in sorted(policies, key=lambda p: (p.cluster_scoped, p.name))
            if p.namespace in (job.namespace, "") and admission.policy_ref(p) not in governing
        ],
    )


def _mismatch(policy: ConcurrencyPolicy, job: JobView, namespaces: admission.NamespaceLabels) -> str:
    """Why a policy of the Job's namespace, or a cluster policy, does not govern it."""
    if not admission.reaches(policy, job.namespace, namespaces):
        return f"cluster policy: its namespaceSelector does not select namespace '{job.namespace}'"
    return ("cluster policy: " if policy.cluster_scoped else "") + selector_mismatch(policy.spec.selector, job.labels)


def _blocker(g: Governor) -> str:
    line = f"position {g.position} of {g.queued}" if g.position is not None else "not in line"
    if g.slot == "paused":
        return f"{g.title}, which is paused (maxConcurrent: 0; {line})"
    shown = ", ".join(g.running_jobs[:3]) + (", ..." if len(g.running_jobs) > 3 else "")
    holders = f": {shown}" if g.running_jobs else ""
    if g.slot == "full":
        own = " under its own limit" if g.own_limit else ""
        return (
            f"a slot in {g.title} for {describe_key(g.key)} "
            f"({g.running}/{g.max_concurrent} running{g.where}{own}{holders}; {line})"
        )
    return (
        f"a slot in {g.title} for {describe_key(g.key)}, whose free slots go to other Jobs "
        f"at the next decision ({g.running}/{g.max_concurrent} running{g.where}{holders}; {line})"
    )


def selector_mismatch(selector: LabelSelector, labels: Mapping[str, str]) -> str:
    """Why a selector does not select these labels, naming every requirement that fails."""
    reasons = []
    for label, value in (selector.matchLabels or {}).items():
        if label not in labels:
            reasons.append(f"needs label {label}={value}, which the Job lacks")
        elif labels[label] != value:
            reasons.append(f"needs {label}={value}, the Job has {label}={labels[label]}")
    for req in selector.matchExpressions or ():
        values = ", ".join(req.values or [])
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in (req.values or [])):
            has = f"the Job has {req.key}={labels[req.key]}" if present else "the Job lacks it"
            reasons.append(f"needs {req.key} in ({values}), {has}")
        elif req.operator == "NotIn" and present and labels[req.key] in (req.values or []):
            reasons.append(f"excludes {req.key} in ({values}), the Job has {req.key}={labels[req.key]}")
        elif req.operator == "Exists" and not present:
            reasons.append(f"needs label {req.key}, which the Job lacks")
        elif req.operator == "DoesNotExist" and present:
            reasons.append(f"excludes Jobs with label {req.key}, which the Job has")
    return "; ".join(reasons) or "its selector matches the Job"


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
