"""The incremental planner decides what the full `plan()` decides, after every event of random histories."""

from __future__ import annotations

import dataclasses
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from jobgate.core import incremental
from jobgate.core.admission import Plan, plan, tally
from jobgate.core.incremental import IncrementalPlanner
from jobgate.core.jobs import QUEUED_LABEL, JobView
from jobgate.core.policy import (
    NAMESPACE_KEY,
    ClusterPolicySpec,
    ConcurrencyPolicy,
    LabelSelector,
    LabelSelectorRequirement,
    PolicySpec,
)
from tests.support.views import job, policy

NAMESPACES = ("a", "b")
VALUES = ("x", "y", "")  # "" stands for an absent label
# [] twice: keyless caps are common. The namespace as a key part, alone or with a label.
KEY_LABELS: tuple[list[str], ...] = (
    ["k1"],
    ["k2"],
    [],
    ["k1", "k2"],
    [],
    [NAMESPACE_KEY],
    ["k1", NAMESPACE_KEY],
    ["k1"],
)
# A ClusterConcurrencyPolicy's namespaceSelector, over the Namespaces' "team" label (NAMESPACE_LABELS).
NAMESPACE_SELECTORS = (
    LabelSelector(),
    LabelSelector(matchLabels={"team": "x"}),
    LabelSelector(matchExpressions=[LabelSelectorRequirement(key="team", operator="Exists")]),
    LabelSelector(matchExpressions=[LabelSelectorRequirement(key="team", operator="NotIn", values=["y"])]),
)
NAMESPACE_LABELS: tuple[dict[str, str], ...] = ({}, {"team": "x"}, {"team": "y"})
SELECTORS = (
    LabelSelector(matchLabels={"app": "x"}),
    LabelSelector(matchLabels={"app": "y"}),
    LabelSelector(),  # every Job of the namespace
    LabelSelector(matchExpressions=[LabelSelectorRequirement(key="tier", operator="Exists")]),
    LabelSelector(matchExpressions=[LabelSelectorRequirement(key="app", operator="In", values=["x", "y"])]),
    LabelSelector(matchLabels={"tier": "x"}),
)

# An event is five bytes, read by `History.apply`: hypothesis generates and shrinks bytes fastest.
Event = tuple[int, int, int, int, int]
EVENT_SIZE = 5


def events(least: int, most: int) -> st.SearchStrategy[list[Event]]:
    return st.binary(min_size=EVENT_SIZE * least, max_size=EVENT_SIZE * most).map(
        lambda data: [
            (data[i], data[i + 1], data[i + 2], data[i + 3], data[i + 4])
            for i in range(0, len(data) - EVENT_SIZE + 1, EVENT_SIZE)
        ]
    )


# Setting up: policies are created, Jobs arrive (queued, running or held), Namespaces are labeled.
SETUP_KINDS = (15, 0, 4, 15, 0, 0, 5, 0, 20)


@dataclasses.dataclass
class History:
    """The cluster as jobgate sees it, changed one event at a time, and both planners fed the same events."""

    policies: dict[tuple[str, str], ConcurrencyPolicy] = dataclasses.field(default_factory=dict)
    jobs: dict[str, JobView] = dataclasses.field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    assumed: set[str] = dataclasses.field(default_factory=set)
    planner: IncrementalPlanner = dataclasses.field(default_factory=IncrementalPlanner)
    last: Plan = dataclasses.field(default_factory=Plan)
    serial: int = 0

    def put_policy(self, p: ConcurrencyPolicy) -> None:
        self.policies[(p.namespace, p.name)] = p
        self.planner.upsert_policy(p)

    def label_namespace(self, name: str, labels: dict[str, str]) -> None:
        self.namespaces[name] = labels
        self.planner.upsert_namespace(name, labels)

    def put_job(self, view: JobView) -> None:
        self.serial += 1
        view = dataclasses.replace(view, resource_version=self.serial)
        self.jobs[view.uid] = view
        self.planner.upsert_job(view)

    def pick(self, n: int) -> JobView | None:
        if not self.jobs:
            return None
        return list(self.jobs.values())[n % len(self.jobs)]

    def apply(self, event: Event) -> None:
        kind, a, b, c, d = event
        kind %= 22
        picked = self.pick(a)
        match kind:
            case 0 | 1 | 2 | 3 | 4 | 5:  # a Job arrives: queued by the webhook, running (not ours to hold), or held
                labels = {
                    name: VALUES[(b >> shift) % 3]
                    for name, shift in (("app", 0), ("k1", 2), ("k2", 4))
                    if VALUES[(b >> shift) % 3]
                }
                if c & 1:
                    labels["tier"] = "x"
                # Most are marked as the webhook marks them; some by the label alone, some not at all
                # (someone else suspended them), some are another controller's.
                mark = (d >> 3) % 8
                if mark == 5:
                    labels[QUEUED_LABEL] = "true"
                self.serial += 1
                view = job(
                    f"j{self.serial}",
                    labels,
                    namespace=NAMESPACES[a % 2],
                    suspended=kind != 4,
                    priority=(c >> 1) % 3 - 1,
                    created=float((c >> 3) % 4) * 5,
                    marked=mark < 5 and (kind != 4 or bool(c & 32)),
                    held=kind == 5,
                    foreign="kueue" if mark == 7 else None,
                )
                self.put_job(view)
            case 6 | 7 | 8 if picked is not None:  # it completes
                self.put_job(dataclasses.replace(picked, finished=True))
            case 9 if picked is not None:  # it is deleted
                del self.jobs[picked.uid]
                self.assumed.discard(picked.uid)
                self.planner.remove_job(picked.uid)
            case 10 if picked is not None:  # relabeled
                labels = dict(picked.labels)
                name = ("app", "k1", "k2", "tier")[b % 4]
                value = VALUES[c % 3]
                if value:
                    labels[name] = value
                else:
                    labels.pop(name, None)
                self.put_job(dataclasses.replace(picked, labels=labels))
            case 11 | 12 if self.assumed:  # an admission lands, or is refused
                uid = sorted(self.assumed)[a % len(self.assumed)]
                self.assumed.discard(uid)
                if b % 4:
                    self.put_job(dataclasses.replace(self.jobs[uid], suspended=False, admitted_at=5.0))
            case 13 if picked is not None:  # someone unsuspends or suspends it by hand, or (un)holds it
                if b % 2:
                    self.put_job(dataclasses.replace(picked, suspended=not picked.suspended))
                else:
                    self.put_job(dataclasses.replace(picked, held=not picked.held))
            case 14 if picked is not None:  # its priority changes
                self.put_job(dataclasses.replace(picked, priority=b % 3))
            case 15 | 16:  # a policy is created (or replaced), or changes its limits or its queue's bound
                # One in three is a ClusterConcurrencyPolicy (namespace "").
                ref = (("", *NAMESPACES)[a % 3], f"p{b % 3}")
                existing = self.policies.get(ref)
                if existing is not None and kind == 16:
                    spec = existing.spec.model_dump(exclude_none=True)
                    spec["maxConcurrent"] = c % 4
                    if "maxQueued" in spec:
                        spec["maxQueued"] = (c >> 2) % 3
                    if spec["limits"] and d & 8:
                        spec["limits"][0]["maxConcurrent"] = (c >> 4) % 3
                    created, generation = existing.created, existing.generation + 1
                else:
                    keys = KEY_LABELS[(c >> 3) % len(KEY_LABELS)]
                    spec = {
                        "selector": SELECTORS[c % len(SELECTORS)].model_dump(exclude_none=True),
                        "keyLabels": keys,
                        "maxConcurrent": b % 4,
                    }
                    if keys and d & 8:  # one key with its own limit
                        spec["limits"] = [{"key": dict.fromkeys(keys, "x"), "maxConcurrent": (b >> 2) % 3}]
                    if d & 16:  # a bounded queue
                        spec["maxQueued"] = (b >> 4) % 3
                        spec["overflow"] = "ReplaceOldest" if d & 32 else "Reject"
                    if not ref[0]:
                        selector = NAMESPACE_SELECTORS[(d >> 6) % len(NAMESPACE_SELECTORS)]
                        spec["namespaceSelector"] = selector.model_dump(exclude_none=True)
                    created, generation = float((d >> 2) % 2) * 7, 1
                self.put_policy(
                    ConcurrencyPolicy(
                        namespace=ref[0],
                        name=ref[1],
                        uid=f"uid-{ref}",
                        generation=generation,
                        created=created,
                        spec=(ClusterPolicySpec if not ref[0] else PolicySpec).model_validate(spec),
                    )
                )
            case 17 if self.policies:  # a policy is deleted
                ref = sorted(self.policies)[a % len(self.policies)]
                del self.policies[ref]
                self.planner.remove_policy(ref)
            case 18 if picked is not None:  # a status write: a new resourceVersion, nothing else
                self.put_job(picked)
            case 19 if picked is not None and picked.suspended:  # the watch shows an admission before its answer
                self.assumed.discard(picked.uid)
                self.put_job(dataclasses.replace(picked, suspended=False, admitted_at=5.0))
            case 20 | 21:  # a Namespace is labeled, relabeled or unlabeled
                self.label_namespace(NAMESPACES[a % 2], NAMESPACE_LABELS[b % len(NAMESPACE_LABELS)])
            case _:
                pass

    def check(self) -> None:
        """Both planners agree on every decision."""
        expected = plan(
            list(self.policies.values()), list(self.jobs.values()), self.assumed, namespaces=self.namespaces
        )
        got = self.planner.plan(self.assumed)
        assert [(j.uid, j.resource_version) for j in got.admit] == [(j.uid, j.resource_version) for j in expected.admit]
        assert [j.uid for j in got.resuspend] == [j.uid for j in expected.resuspend]
        assert sorted(j.uid for j in got.release) == sorted(j.uid for j in expected.release)
        assert [j.uid for j in got.evict] == [j.uid for j in expected.evict]
        for slot, count in got.running.items():
            assert expected.running.get(slot, 0) == count
        for slot, count in expected.running.items():
            assert self.planner.running_count(slot) == count
        # What the status writer reads: (running, queued) per key, and the longest wait, per policy.
        tallied = tally(list(self.policies.values()), self.jobs.values(), self.assumed, namespaces=self.namespaces)
        for ref, keys in tallied.items():
            assert self.planner.key_counts(ref) == {key: s.counts for key, s in keys.items() if s.counts != (0, 0)}
            oldest = min((j.queued_since for s in keys.values() for j in s.queued), default=None)
            assert self.planner.oldest_queued_since(ref) == oldest
        self.last = expected

    def assume(self) -> None:
        """What the engine does with a plan: its admissions hold their slots until they land."""
        self.assumed.update(j.uid for j in self.last.admit)


def run_history(setup: list[Event], steps: list[Event]) -> None:
    history = History()
    for kind, *rest in setup:
        history.apply((SETUP_KINDS[kind % len(SETUP_KINDS)], *rest))  # type: ignore[arg-type]
    # Half of the time the planner starts from a LIST of what is there, as after a restart.
    if setup and setup[0][1] % 2:
        history.planner = IncrementalPlanner(history.policies.values(), history.jobs.values(), history.namespaces)
    history.check()
    for event in steps:
        history.apply(event)
        history.check()
        if event[4] % 4:  # now and then the next event comes before the admissions are sent
            history.assume()


EXAMPLES = 10_000


@settings(max_examples=EXAMPLES, deadline=None)
@given(events(3, 12), events(4, 24))
def test_incremental_decisions_equal_the_full_plan_after_every_event(setup: list[Event], events: list[Event]) -> None:
    run_history(setup, events)


@settings(max_examples=EXAMPLES // 5, deadline=None)
@given(events(3, 12), events(4, 24))
def test_the_same_with_heaps_compacted_at_every_chance(setup: list[Event], events: list[Event]) -> None:
    """Lazily deleted heap entries are swept once they outnumber the live ones (past a margin kept at 0 here)."""
    with mock.patch.object(incremental, "COMPACT_ABOVE", 0):
        run_history(setup, events)


# --- examples: the cases a random history reaches rarely -------------------------------------------


def test_a_completion_under_a_keyless_cap_admits_the_oldest_job_of_an_open_key() -> None:
    cap = policy("cap", {}, [], 2)
    per_customer = policy("per-customer", {}, ["customer"], 1)
    jobs = [job(f"r{c}", {"customer": c}, suspended=False, admitted=True) for c in "ab"]
    jobs += [job(f"q{c}{i}", {"customer": c}, created=float(i)) for c in "abcd" for i in range(3)]
    planner = IncrementalPlanner([cap, per_customer], jobs)
    assert planner.plan().admit == []
    finished = dataclasses.replace(jobs[1], finished=True)  # rb completes: the cap has room, and b does
    planner.upsert_job(finished)
    expected = plan([cap, per_customer], [jobs[0], finished, *jobs[2:]])
    assert [j.name for j in planner.plan().admit] == [j.name for j in expected.admit] == ["qb0"]


def test_a_limit_raised_opens_every_key_of_the_policy() -> None:
    p = policy("p", {}, ["k"], 1)
    jobs = [job(f"r{k}", {"k": k}, suspended=False, admitted=True) for k in "ab"]
    jobs += [job(f"q{k}", {"k": k}, created=2.0) for k in "ab"]
    planner = IncrementalPlanner([p], jobs)
    assert planner.plan().admit == []
    raised = p.model_copy(update={"spec": p.spec.model_copy(update={"maxConcurrent": 2})})
    planner.upsert_policy(raised)
    assert [j.name for j in planner.plan().admit] == ["qa", "qb"]


def test_a_pass_reads_only_the_keys_that_changed() -> None:
    """With every key full, a completion makes the next pass look at that key alone, however long the queues."""
    p = policy("p", {}, ["k"], 1)
    running = [job(f"r{k}", {"k": str(k)}, suspended=False, admitted=True) for k in range(100)]
    queued = [job(f"q{k}-{i}", {"k": str(k)}, created=float(i)) for k in range(100) for i in range(50)]
    planner = IncrementalPlanner([p], [*running, *queued])
    assert planner.plan().running == {}  # every key full: nothing to read, not even on the first pass
    planner.upsert_job(dataclasses.replace(running[7], finished=True))
    decided = planner.plan()
    assert [j.name for j in decided.admit] == ["q7-0"]
    assert set(decided.running) <= {(("billing", "p"), ("7",))}


def test_a_policy_recreated_after_an_intruder_started_leaves_it_running() -> None:
    first = policy("p", {}, [], 1, created=10)
    jobs = [job(name, {}, suspended=False, created=20, queued_at=None) for name in ("a", "b")]
    planner = IncrementalPlanner([first], jobs)
    assert [j.name for j in planner.plan().resuspend] == ["b"]
    recreated = first.model_copy(update={"created": 30.0, "uid": "uid-again"})
    planner.upsert_policy(recreated)
    assert planner.plan().resuspend == plan([recreated], jobs).resuspend == []
