"""The decision core: one example per rule, and properties against an independent reference model."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jobgate.core.admission import governance, plan, queue_full, tally
from jobgate.core.jobs import JobView
from jobgate.core.policy import ClusterPolicySpec, ConcurrencyPolicy, PolicySpec
from tests.support.views import NS, job, policy


def names(jobs: list[JobView]) -> list[str]:
    return [j.name for j in jobs]


# --- examples: one per rule -------------------------------------------------------------------------


def test_one_per_key_admits_the_oldest_of_each_key() -> None:
    p = policy("exports", {"app": "export"}, ["customer"], 1)
    jobs = [
        job("a2", {"app": "export", "customer": "a"}, created=2),
        job("a1", {"app": "export", "customer": "a"}, created=1),
        job("b1", {"app": "export", "customer": "b"}, created=3),
    ]
    assert names(plan([p], jobs).admit) == ["a1", "b1"]


def test_running_jobs_take_the_slots() -> None:
    p = policy("exports", {"app": "export"}, ["customer"], 2)
    jobs = [
        job("r1", {"app": "export", "customer": "a"}, suspended=False, admitted=True),
        job("q1", {"app": "export", "customer": "a"}, created=2),
        job("q2", {"app": "export", "customer": "a"}, created=3),
    ]
    assert names(plan([p], jobs).admit) == ["q1"]


def test_finished_jobs_free_their_slot() -> None:
    p = policy("exports", {"app": "export"}, ["customer"], 1)
    jobs = [
        job("done", {"app": "export", "customer": "a"}, suspended=False, finished=True, admitted=True),
        job("next", {"app": "export", "customer": "a"}, created=2),
    ]
    assert names(plan([p], jobs).admit) == ["next"]


def test_empty_key_labels_make_one_global_key() -> None:
    p = policy("all", {"app": "export"}, [], 2)
    jobs = [job(f"j{i}", {"app": "export", "customer": str(i)}, created=i) for i in range(5)]
    assert names(plan([p], jobs).admit) == ["j0", "j1"]


def test_missing_key_label_counts_as_the_empty_value() -> None:
    p = policy("exports", {"app": "export"}, ["customer"], 1)
    bare = job("bare", {"app": "export"})
    [gov] = governance([p], bare)
    assert gov.key == ("",)
    assert gov.missing_labels == ("customer",)
    assert names(plan([p], [bare, job("bare2", {"app": "export"}, created=2)]).admit) == ["bare"]


def test_priority_goes_first_then_age_then_name() -> None:
    p = policy("all", {"app": "x"}, [], 1)
    jobs = [
        job("old", {"app": "x"}, created=1),
        job("urgent", {"app": "x"}, created=9, priority=10),
    ]
    assert names(plan([p], jobs).admit) == ["urgent"]
    ties = [job("b", {"app": "x"}, created=1), job("a", {"app": "x"}, created=1)]
    assert names(plan([p], ties).admit) == ["a"]


def test_a_job_needs_a_slot_in_every_governing_policy() -> None:
    per_customer = policy("per-customer", {"app": "x"}, ["customer"], 1)
    per_db = policy("per-db", {"app": "x"}, ["db"], 1)
    jobs = [
        job("running", {"app": "x", "customer": "a", "db": "main"}, suspended=False, admitted=True),
        job("blocked-by-db", {"app": "x", "customer": "b", "db": "main"}, created=2),
        job("free", {"app": "x", "customer": "c", "db": "other"}, created=3),
    ]
    assert names(plan([per_customer, per_db], jobs).admit) == ["free"]


def test_a_blocked_job_does_not_block_other_keys() -> None:
    p = policy("exports", {"app": "x"}, ["customer"], 1)
    jobs = [
        job("busy", {"app": "x", "customer": "a"}, suspended=False, admitted=True),
        job("waits", {"app": "x", "customer": "a"}, created=1, priority=100),
        job("goes", {"app": "x", "customer": "b"}, created=5),
    ]
    assert names(plan([p], jobs).admit) == ["goes"]


def test_max_zero_pauses_and_lowering_never_preempts() -> None:
    paused = policy("p", {"app": "x"}, [], 0)
    jobs = [job("r", {"app": "x"}, suspended=False, admitted=True), job("q", {"app": "x"}, created=2)]
    result = plan([paused], jobs)
    assert result.admit == [] and result.resuspend == []


def test_held_jobs_are_never_admitted() -> None:
    p = policy("p", {"app": "x"}, [], 5)
    result = plan([p], [job("held", {"app": "x"}, held=True)])
    assert result.admit == [] and result.release == []


def test_assumed_admissions_hold_their_slot() -> None:
    p = policy("p", {"app": "x"}, [], 1)
    first, second = job("first", {"app": "x"}, created=1), job("second", {"app": "x"}, created=2)
    assert plan([p], [first, second], assumed={first.uid}).admit == []


def test_jobs_of_other_namespaces_are_not_governed() -> None:
    p = policy("p", {"app": "x"}, [], 1)
    assert plan([p], [job("elsewhere", {"app": "x"}, namespace="other", queued_at=None)]).admit == []


def test_queued_jobs_that_nothing_governs_any_more_are_released() -> None:
    ours = job("ours", {"app": "gone"}, queued_at=1.0)
    theirs = job("theirs", {"app": "gone"}, marked=False)  # its owner suspended it
    assert names(plan([], [ours, theirs]).release) == ["ours"]


def test_backstop_resuspends_late_intruders_beyond_the_limit_only() -> None:
    p = policy("p", {"app": "x"}, [], 1, created=10)
    before = job("before", {"app": "x"}, suspended=False, created=5, queued_at=None)
    intruder = job("intruder", {"app": "x"}, suspended=False, created=20, queued_at=None)
    result = plan([p], [before, intruder])
    assert names(result.resuspend) == ["intruder"]
    # Pre-existing Jobs are left alone even when they alone exceed the limit.
    assert plan([p], [before, job("before2", {"app": "x"}, suspended=False, created=6)]).resuspend == []
    # An intruder within the limit stays.
    assert plan([p], [intruder]).resuspend == []


def test_resuspended_intruders_keep_counting_until_seen_suspended() -> None:
    p = policy("p", {"app": "x"}, [], 1, created=10)
    a = job("a", {"app": "x"}, suspended=False, created=20, queued_at=None)
    b = job("b", {"app": "x"}, suspended=False, created=21, queued_at=None)
    queued = job("q", {"app": "x"}, created=1)
    result = plan([p], [a, b, queued])
    assert names(result.resuspend) == ["b"] and result.admit == []


def test_tally_orders_each_key_queue() -> None:
    p = policy("p", {"app": "x"}, ["k"], 1)
    jobs = [
        job("late", {"app": "x", "k": "1"}, created=3),
        job("early", {"app": "x", "k": "1"}, created=2),
        job("run", {"app": "x", "k": "1"}, suspended=False),
    ]
    state = tally([p], jobs)[(NS, "p")][("1",)]
    assert names(state.queued) == ["early", "late"] and names(state.running) == ["run"]


# --- per-key limits ----------------------------------------------------------------------------------


def test_a_named_key_has_its_own_limit_and_the_others_keep_the_default() -> None:
    p = policy("exports", {"app": "x"}, ["customer"], 1, limits=[{"key": {"customer": "acme"}, "maxConcurrent": 3}])
    jobs = [job(f"{c}{i}", {"app": "x", "customer": c}, created=i) for c in ("acme", "globex") for i in range(5)]
    assert names(plan([p], jobs).admit) == ["acme0", "globex0", "acme1", "acme2"]


def test_a_named_key_with_limit_zero_is_paused_alone() -> None:
    p = policy("exports", {"app": "x"}, ["customer"], 2, limits=[{"key": {"customer": "acme"}, "maxConcurrent": 0}])
    jobs = [job("acme", {"app": "x", "customer": "acme"}), job("globex", {"app": "x", "customer": "globex"})]
    assert names(plan([p], jobs).admit) == ["globex"]


def test_a_per_key_limit_may_name_the_empty_value_of_a_missing_label() -> None:
    p = policy("exports", {"app": "x"}, ["customer"], 1, limits=[{"key": {"customer": ""}, "maxConcurrent": 2}])
    jobs = [job(f"bare{i}", {"app": "x"}, created=i) for i in range(3)]
    assert names(plan([p], jobs).admit) == ["bare0", "bare1"]


def test_multi_label_keys_are_matched_on_every_label() -> None:
    a_in_eu = {"key": {"region": "eu", "customer": "a"}, "maxConcurrent": 2}
    p = policy("p", {"app": "x"}, ["customer", "region"], 1, limits=[a_in_eu])
    jobs = [
        *(job(f"a-eu{i}", {"app": "x", "customer": "a", "region": "eu"}, created=i) for i in range(3)),
        *(job(f"a-us{i}", {"app": "x", "customer": "a", "region": "us"}, created=i) for i in range(3)),
    ]
    assert names(plan([p], jobs).admit) == ["a-eu0", "a-us0", "a-eu1"]


def test_the_backstop_uses_the_keys_own_limit() -> None:
    p = policy("p", {"app": "x"}, ["k"], 1, created=10, limits=[{"key": {"k": "big"}, "maxConcurrent": 2}])
    intruders = [job(f"i{n}", {"app": "x", "k": "big"}, suspended=False, created=20 + n) for n in range(3)]
    assert names(plan([p], intruders).resuspend) == ["i2"]


# --- bounded queues ----------------------------------------------------------------------------------


def replace_oldest(limit: int, queued: int, **extra: object) -> ConcurrencyPolicy:
    return policy("p", {"app": "x"}, ["k"], limit, maxQueued=queued, overflow="ReplaceOldest", **extra)


def test_replace_oldest_deletes_the_oldest_queued_jobs_beyond_the_bound() -> None:
    running = job("running", {"app": "x", "k": "a"}, suspended=False, admitted=True, created=0)
    queued = [job(f"q{i}", {"app": "x", "k": "a"}, created=i + 1) for i in range(4)]
    result = plan([replace_oldest(1, 2)], [running, *queued])
    assert result.admit == []
    assert names(result.evict) == ["q0", "q1"]  # q2 and q3, the newest two, stay queued


def test_admissions_come_first_and_never_count_against_the_queue() -> None:
    queued = [job(f"q{i}", {"app": "x", "k": "a"}, created=i) for i in range(4)]
    result = plan([replace_oldest(2, 1)], queued)
    assert names(result.admit) == ["q0", "q1"] and names(result.evict) == ["q2"]


def test_replace_oldest_goes_by_age_not_priority() -> None:
    old_urgent = job("old-urgent", {"app": "x", "k": "a"}, created=1, priority=10)
    new = job("new", {"app": "x", "k": "a"}, created=2)
    result = plan([replace_oldest(0, 1)], [old_urgent, new])
    assert names(result.evict) == ["old-urgent"]


def test_held_running_and_assumed_jobs_are_neither_counted_nor_evicted() -> None:
    held = job("held", {"app": "x", "k": "a"}, created=0, held=True)
    assumed = job("assumed", {"app": "x", "k": "a"}, created=0.5)
    running = job("running", {"app": "x", "k": "a"}, suspended=False, created=0.1)
    queued = job("queued", {"app": "x", "k": "a"}, created=1)
    result = plan([replace_oldest(0, 1)], [held, assumed, running, queued], assumed={assumed.uid})
    assert result.evict == []


def test_each_key_has_its_own_queue() -> None:
    jobs = [job(f"{k}{i}", {"app": "x", "k": k}, created=i) for k in ("a", "b") for i in range(3)]
    assert names(plan([replace_oldest(0, 2)], jobs).evict) == ["a0", "b0"]


def test_reject_queues_are_left_to_the_webhook() -> None:
    p = policy("p", {"app": "x"}, ["k"], 0, maxQueued=1, overflow="Reject")
    jobs = [job(f"q{i}", {"app": "x", "k": "a"}, created=i) for i in range(3)]
    assert plan([p], jobs).evict == []
    assert policy("p", {"app": "x"}, [], 0, maxQueued=1).spec.queue_overflow == "Reject"  # the default


def test_a_job_in_two_full_queues_is_evicted_once_for_both() -> None:
    by_customer = policy("by-customer", {"app": "x"}, ["customer"], 0, maxQueued=1, overflow="ReplaceOldest")
    by_db = policy("by-db", {"app": "x"}, ["db"], 0, maxQueued=1, overflow="ReplaceOldest")
    jobs = [
        job("a-main", {"app": "x", "customer": "a", "db": "main"}, created=1),
        job("a-other", {"app": "x", "customer": "a", "db": "other"}, created=2),
        job("b-main", {"app": "x", "customer": "b", "db": "main"}, created=3),
    ]
    # a-main is the oldest of customer a and of db main: deleting it brings both back to one.
    assert names(plan([by_customer, by_db], jobs).evict) == ["a-main"]


def test_queue_full_counts_the_keys_queue_beyond_its_free_slots() -> None:
    p = policy("p", {"app": "x"}, ["k"], 2, maxQueued=1)
    new = job("new", {"app": "x", "k": "a"})
    [gov] = governance([p], new)
    running = [job(f"r{i}", {"app": "x", "k": "a"}, suspended=False) for i in range(2)]
    queued = job("q", {"app": "x", "k": "a"})
    other_key = [job(f"o{i}", {"app": "x", "k": "b"}) for i in range(5)]
    assert queue_full(gov, [*running[:1], *other_key]) is None  # a free slot: it would start at once
    assert queue_full(gov, running) is None  # no free slot, an empty queue with room for one
    full = queue_full(gov, [*running, queued, *other_key])
    assert full is not None
    assert full.message.startswith(
        "the queue of ConcurrencyPolicy p for k=a is full (1/1 queued, 2/2 running; overflow: Reject)"
    )
    held = job("h", {"app": "x", "k": "a"}, held=True)
    done = job("d", {"app": "x", "k": "a"}, finished=True)
    assert queue_full(gov, [*running, held, done]) is None  # neither held nor finished Jobs are queued


def test_queue_full_with_max_queued_zero_takes_only_what_starts_at_once() -> None:
    p = policy("p", {"app": "x"}, [], 1, maxQueued=0)
    [gov] = governance([p], job("new", {"app": "x"}))
    assert queue_full(gov, []) is None
    assert queue_full(gov, [job("r", {"app": "x"}, suspended=False)]) is not None


def test_replace_oldest_queues_are_not_refused() -> None:
    [gov] = governance([replace_oldest(0, 0)], job("new", {"app": "x", "k": "a"}))
    assert queue_full(gov, [job("q", {"app": "x", "k": "a"})]) is None


# --- properties against an independent reference model ------------------------------------------------
#
# The reference shares only data with the code under test: from the specs as a user writes them and
# the Jobs' plain attributes, it matches selectors, derives keys, looks limits up, orders and
# classifies Jobs itself, and decides by brute force (admit the first Job that fits, again and again).

NAMESPACES = ("billing", "other", "ops")
VALUES = ("a", "b", "c")
NAMESPACE_KEY = "jobgate.dev/namespace"


@dataclass(frozen=True)
class RefPolicy:
    namespace: str  # "": a ClusterConcurrencyPolicy, with spec.namespaceSelector
    name: str
    created: float
    spec: dict[str, Any]

    def model(self) -> ConcurrencyPolicy:
        return ConcurrencyPolicy(
            namespace=self.namespace,
            name=self.name,
            uid=f"uid-{self.name}",
            generation=1,
            created=self.created,
            spec=(ClusterPolicySpec if not self.namespace else PolicySpec).model_validate(self.spec),
        )


@dataclass(frozen=True)
class RefJob:
    namespace: str
    name: str
    labels: dict[str, str]
    suspended: bool
    finished: bool
    held: bool
    priority: int
    created: float
    admitted: bool  # carries jobgate.dev/admitted-at
    marked: bool  # carries jobgate's queued mark (jobgate.dev/queued-at)
    foreign: str | None  # why another controller owns its suspension (Kueue, managedBy, a JobSet)

    @property
    def uid(self) -> str:
        return f"uid-{self.namespace}-{self.name}"

    def view(self) -> JobView:
        return job(
            self.name,
            self.labels,
            suspended=self.suspended,
            finished=self.finished,
            held=self.held,
            priority=self.priority,
            created=self.created,
            marked=self.marked,
            admitted=self.admitted,
            namespace=self.namespace,
            foreign=self.foreign,
        )


@dataclass(frozen=True)
class World:
    policies: list[RefPolicy]
    jobs: list[RefJob]
    assumed: frozenset[str]
    namespaces: dict[str, dict[str, str]]  # the Namespaces' labels; one not here has none

    def models(self) -> list[ConcurrencyPolicy]:
        return [p.model() for p in self.policies]

    def views(self) -> list[JobView]:
        return [j.view() for j in self.jobs]


def ref_selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(label) != value for label, value in selector.get("matchLabels", {}).items()):
        return False
    for requirement in selector.get("matchExpressions", []):
        label, values = requirement["key"], requirement.get("values", [])
        present = label in labels
        held = {
            "In": present and labels.get(label) in values,
            "NotIn": not (present and labels.get(label) in values),
            "Exists": present,
            "DoesNotExist": not present,
        }[requirement["operator"]]
        if not held:
            return False
    return True


Slot = tuple[str, tuple[str, ...]]  # (policy name, key values)


def ref_slots_in(policies: list[RefPolicy], j: RefJob, namespaces: dict[str, dict[str, str]]) -> list[Slot]:
    """The (policy, key) slots the Job needs: its namespace's policies and the cluster policies whose
    namespaceSelector its namespace's labels match, that select it; missing labels count as "", and
    jobgate.dev/namespace is the Job's namespace."""

    def reaches(p: RefPolicy) -> bool:
        if p.namespace:
            return p.namespace == j.namespace
        return ref_selects(p.spec["namespaceSelector"], namespaces.get(j.namespace, {}))

    def value(label: str) -> str:
        return j.namespace if label == NAMESPACE_KEY else j.labels.get(label, "")

    return [
        (p.name, tuple(value(label) for label in p.spec.get("keyLabels", [])))
        for p in policies
        if reaches(p) and ref_selects(p.spec["selector"], j.labels)
    ]


def ref_limit(p: RefPolicy, key: tuple[str, ...]) -> int:
    named = dict(zip(p.spec.get("keyLabels", []), key, strict=True))
    for entry in p.spec.get("limits", []):
        if entry["key"] == named:
            return int(entry["maxConcurrent"])
    return int(p.spec["maxConcurrent"])


def ref_order(j: RefJob) -> tuple[int, float, str, str]:
    return (-j.priority, j.created, j.namespace, j.name)


def ref_holds_slot(j: RefJob, assumed: frozenset[str]) -> bool:
    """Another controller's Job is never counted; any other unfinished Job runs unless suspended (or is assumed)."""
    return j.foreign is None and not j.finished and (not j.suspended or j.uid in assumed)


def ref_waits(j: RefJob, assumed: frozenset[str]) -> bool:
    """Queued: suspended with jobgate's mark, not another controller's, not finished, on hold, or being admitted."""
    return j.suspended and j.marked and j.foreign is None and not j.finished and not j.held and j.uid not in assumed


@dataclass
class RefPlan:
    admit: list[str]
    resuspend: list[str]
    release: list[str]
    evict: list[str]


def reference_plan(world: World) -> RefPlan:
    policies, assumed = world.policies, world.assumed

    def ref_slots(policies: list[RefPolicy], j: RefJob) -> list[Slot]:
        return ref_slots_in(policies, j, world.namespaces)

    by_name = {p.name: p for p in policies}

    def limit(slot: Slot) -> int:
        return ref_limit(by_name[slot[0]], slot[1])

    running: dict[Slot, list[RefJob]] = {}
    for j in world.jobs:
        if ref_holds_slot(j, assumed):
            for slot in ref_slots(policies, j):
                running.setdefault(slot, []).append(j)

    # Backstop: beyond a limit, Jobs that started without jobgate after the policy existed go back.
    intruders: set[str] = set()
    for slot, members in running.items():
        if len(members) > limit(slot):
            created = by_name[slot[0]].created
            legit = [m for m in members if m.admitted or m.created <= created or m.suspended]
            late = sorted((m for m in members if m not in legit), key=ref_order)
            intruders.update(m.uid for m in late[max(0, limit(slot) - len(legit)) :])
    resuspend = [j.name for j in sorted(world.jobs, key=ref_order) if j.uid in intruders]

    release = [j.name for j in world.jobs if ref_waits(j, assumed) and not ref_slots(policies, j) and not j.admitted]

    admitted: list[RefJob] = []
    while True:
        counts = {slot: len(members) for slot, members in running.items()}
        for a in admitted:
            for slot in ref_slots(policies, a):
                counts[slot] = counts.get(slot, 0) + 1
        line = sorted(
            (j for j in world.jobs if ref_waits(j, assumed) and j not in admitted and ref_slots(policies, j)),
            key=ref_order,
        )
        fits = [j for j in line if all(counts.get(s, 0) < limit(s) for s in ref_slots(policies, j))]
        if not fits:
            break
        admitted.append(fits[0])

    # Bounded queues: while some ReplaceOldest key holds more waiting Jobs than maxQueued,
    # delete the oldest waiting Job that is in such a key.
    def bounded(slot: Slot) -> int | None:
        spec = by_name[slot[0]].spec
        return spec.get("maxQueued") if spec.get("overflow") == "ReplaceOldest" else None

    left = [j for j in world.jobs if ref_waits(j, assumed) and j not in admitted and ref_slots(policies, j)]
    evicted: list[RefJob] = []
    while True:
        remaining = [j for j in left if j not in evicted]
        waiting_in: dict[Slot, int] = {}
        for j in remaining:
            for slot in ref_slots(policies, j):
                waiting_in[slot] = waiting_in.get(slot, 0) + 1
        full = {s for s, n in waiting_in.items() if (b := bounded(s)) is not None and n > b}
        over = [j for j in remaining if full & set(ref_slots(policies, j))]
        if not over:
            break
        evicted.append(min(over, key=lambda j: (j.created, j.namespace, j.name)))

    return RefPlan([j.name for j in admitted], resuspend, release, [j.name for j in evicted])


LABEL_NAMES = ("app", "tier", "k1", "k2")


@st.composite
def selectors(draw: st.DrawFn) -> dict[str, Any]:
    selector: dict[str, Any] = {}
    match = draw(st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), max_size=1))
    if match:
        selector["matchLabels"] = match
    expressions = []
    for _ in range(draw(st.integers(0, 2))):
        operator = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
        requirement: dict[str, Any] = {"key": draw(st.sampled_from(LABEL_NAMES)), "operator": operator}
        if operator in ("In", "NotIn"):
            requirement["values"] = draw(st.lists(st.sampled_from(["x", "y", *VALUES]), min_size=1, max_size=2))
        expressions.append(requirement)
    if expressions:
        selector["matchExpressions"] = expressions
    return selector


@st.composite
def namespace_selectors(draw: st.DrawFn) -> dict[str, Any]:
    return draw(
        st.sampled_from(
            [
                {},
                {"matchLabels": {"team": "a"}},
                {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
                {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["b"]}]},
                {"matchLabels": {"kubernetes.io/metadata.name": "billing"}},
            ]
        )
    )


@st.composite
def ref_policies(draw: st.DrawFn, index: int) -> RefPolicy:
    keys = draw(st.lists(st.sampled_from(["k1", "k2", "k1", "k2", NAMESPACE_KEY]), unique=True, max_size=2))
    spec: dict[str, Any] = {"selector": draw(selectors()), "keyLabels": keys, "maxConcurrent": draw(st.integers(0, 3))}
    values = {label: ["", *NAMESPACES] if label == NAMESPACE_KEY else ["", *VALUES] for label in keys}
    named = draw(st.lists(st.tuples(*(st.sampled_from(values[label]) for label in keys)), unique=True, max_size=2))
    if named:
        limits = [{"key": dict(zip(keys, key, strict=True)), "maxConcurrent": draw(st.integers(0, 3))} for key in named]
        spec["limits"] = limits
    if draw(st.booleans()):
        spec["maxQueued"] = draw(st.integers(0, 2))
        overflow = draw(st.sampled_from([None, "Reject", "ReplaceOldest", "ReplaceOldest"]))
        if overflow:
            spec["overflow"] = overflow
    namespace = draw(st.sampled_from([*NAMESPACES, ""]))  # one in four is a ClusterConcurrencyPolicy
    if not namespace:
        spec["namespaceSelector"] = draw(namespace_selectors())
    return RefPolicy(namespace, f"p{index}", float(draw(st.integers(0, 3))), spec)


@st.composite
def namespace_labels(draw: st.DrawFn) -> dict[str, dict[str, str]]:
    """Some namespaces known with a team label or none (and the label every Namespace has), some unknown."""
    found = {}
    for namespace in NAMESPACES:
        if draw(st.integers(0, 4)):
            labels = {"kubernetes.io/metadata.name": namespace}
            team = draw(st.sampled_from(["a", "b", None]))
            if team:
                labels["team"] = team
            found[namespace] = labels
    return found


@st.composite
def worlds(draw: st.DrawFn) -> World:
    policies = [draw(ref_policies(i)) for i in range(draw(st.integers(1, 3)))]
    jobs = []
    for i in range(draw(st.integers(0, 25))):
        labels = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "app": st.sampled_from(["x", "y"]),
                    "tier": st.sampled_from(["x", "y"]),
                    "k1": st.sampled_from(VALUES),
                    "k2": st.sampled_from(VALUES),
                },
            )
        )
        jobs.append(
            RefJob(
                namespace=draw(st.sampled_from(NAMESPACES)),
                name=f"j{i:02d}",
                labels=labels,
                suspended=draw(st.booleans()),
                finished=draw(st.booleans()) and draw(st.booleans()),
                held=draw(st.booleans()) and draw(st.booleans()),
                priority=draw(st.integers(0, 2)),
                created=float(draw(st.integers(0, 5))),
                admitted=draw(st.booleans()),  # running without it, after the policy: the backstop's business
                marked=draw(st.booleans()) or draw(st.booleans()),
                foreign="managed by kueue" if draw(st.integers(0, 9)) == 0 else None,
            )
        )
    assumed = frozenset(j.uid for j in jobs if j.suspended and draw(st.booleans()) and draw(st.booleans()))
    return World(policies, jobs, assumed, draw(namespace_labels()))


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_plan_matches_the_reference_model(world: World) -> None:
    result = plan(world.models(), world.views(), world.assumed, namespaces=world.namespaces)
    expected = reference_plan(world)
    assert names(result.admit) == expected.admit
    assert names(result.resuspend) == expected.resuspend
    assert names(result.release) == expected.release
    assert names(result.evict) == expected.evict


def ref_counts(world: World, admitted: set[str]) -> Counter[Slot]:
    counts: Counter[Slot] = Counter()
    for j in world.jobs:
        if ref_holds_slot(j, world.assumed) or j.name in admitted:
            counts.update(ref_slots_in(world.policies, j, world.namespaces))
    return counts


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_never_over_admits_never_idles_and_never_evicts_beyond_the_bound(world: World) -> None:
    result = plan(world.models(), world.views(), world.assumed, namespaces=world.namespaces)
    admitted = set(names(result.admit))
    by_name = {p.name: p for p in world.policies}
    before, after = ref_counts(world, set()), ref_counts(world, admitted)
    for slot, count in after.items():
        # An admission never takes a slot over its limit (one already over it gets none).
        if count > before[slot]:
            assert count <= ref_limit(by_name[slot[0]], slot[1])
    waiting = [j for j in world.jobs if ref_waits(j, world.assumed) and j.name not in admitted]
    # Work-conserving: every queued Job left waiting is blocked by a full slot somewhere.
    for j in waiting:
        slots = ref_slots_in(world.policies, j, world.namespaces)
        assert not slots or any(after[s] >= ref_limit(by_name[s[0]], s[1]) for s in slots)
    # Only Jobs left waiting are deleted; after the deletions, every ReplaceOldest key holds at most maxQueued.
    evicted = set(names(result.evict))
    assert evicted <= {j.name for j in waiting}
    left: Counter[Slot] = Counter()
    for j in waiting:
        if j.name not in evicted:
            left.update(ref_slots_in(world.policies, j, world.namespaces))
    for slot, count in left.items():
        spec = by_name[slot[0]].spec
        if spec.get("overflow") == "ReplaceOldest":
            assert count <= spec["maxQueued"]


@settings(max_examples=100, deadline=None)
@given(worlds(), st.randoms())
def test_the_plan_does_not_depend_on_the_order_jobs_arrive_in(world: World, rnd: random.Random) -> None:
    shuffled = world.views()
    rnd.shuffle(shuffled)
    models = world.models()
    first = plan(models, world.views(), world.assumed, namespaces=world.namespaces)
    second = plan(models, shuffled, world.assumed, namespaces=world.namespaces)
    assert (first.admit, first.evict) == (second.admit, second.evict)
