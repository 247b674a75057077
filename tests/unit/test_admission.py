"""The decision core against a simple reference model, with hypothesis."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from jobgate.core.admission import governance, plan, tally
from jobgate.core.jobs import JobView
from jobgate.core.policy import ConcurrencyPolicy
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


# --- properties against a reference model ------------------------------------------------------------

LABEL_VALUES = st.sampled_from(["a", "b", "c"])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[ConcurrencyPolicy], list[JobView], set[str]]:
    policies = []
    for i in range(draw(st.integers(1, 3))):
        match = draw(st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), max_size=1))
        keys = draw(st.lists(st.sampled_from(["k1", "k2"]), unique=True, max_size=2))
        policies.append(policy(f"p{i}", match, keys, draw(st.integers(0, 3)), created=0.0))
    jobs = []
    for i in range(draw(st.integers(0, 25))):
        labels = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "app": st.sampled_from(["x", "y"]),
                    "tier": st.sampled_from(["x", "y"]),
                    "k1": LABEL_VALUES,
                    "k2": LABEL_VALUES,
                },
            )
        )
        jobs.append(
            job(
                f"j{i:02d}",
                labels,
                suspended=draw(st.booleans()),
                finished=draw(st.booleans()) and draw(st.booleans()),
                held=draw(st.booleans()) and draw(st.booleans()),
                priority=draw(st.integers(0, 2)),
                created=float(draw(st.integers(0, 5))),
                admitted=True,  # running Jobs were admitted by us: the backstop stays out of these properties
            )
        )
    assumed = {j.uid for j in jobs if j.suspended and draw(st.booleans()) and draw(st.booleans())}
    return policies, jobs, assumed


def running_counts(
    policies: list[ConcurrencyPolicy], jobs: list[JobView], assumed: set[str], admitted: set[str]
) -> Counter[tuple[str, tuple[str, ...]]]:
    counts: Counter[tuple[str, tuple[str, ...]]] = Counter()
    for j in jobs:
        holds = not j.finished and (not j.suspended or j.uid in assumed or j.uid in admitted)
        if holds:
            for gov in governance(policies, j):
                counts[(gov.policy.name, gov.key)] += 1
    return counts


def reference_admissions(policies: list[ConcurrencyPolicy], jobs: list[JobView], assumed: set[str]) -> list[str]:
    """Naive model: repeatedly admit the first Job, in admission order, that fits everywhere."""
    admitted: list[str] = []
    while True:
        counts = running_counts(policies, jobs, assumed, set(admitted))
        waiting = sorted(
            (
                j
                for j in jobs
                if j.queued and j.uid not in assumed and j.uid not in admitted and governance(policies, j)
            ),
            key=lambda j: j.order,
        )
        fits = [
            j
            for j in waiting
            if all(counts[(g.policy.name, g.key)] < g.policy.spec.maxConcurrent for g in governance(policies, j))
        ]
        if not fits:
            return admitted
        admitted.append(fits[0].uid)


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_plan_matches_the_reference_model(scenario: tuple[list[ConcurrencyPolicy], list[JobView], set[str]]) -> None:
    policies, jobs, assumed = scenario
    assert [j.uid for j in plan(policies, jobs, assumed).admit] == reference_admissions(policies, jobs, assumed)


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_never_over_admits_and_never_idles(scenario: tuple[list[ConcurrencyPolicy], list[JobView], set[str]]) -> None:
    policies, jobs, assumed = scenario
    admitted = {j.uid for j in plan(policies, jobs, assumed).admit}
    before = running_counts(policies, jobs, assumed, set())
    after = running_counts(policies, jobs, assumed, admitted)
    limits = {p.name: p.spec.maxConcurrent for p in policies}
    for slot, count in after.items():
        # Never over the limit because of an admission (a slot already over it gets none).
        assert count <= max(limits[slot[0]], before[slot])
        if count > before[slot]:
            assert count <= limits[slot[0]]
    # Work-conserving: every queued Job left waiting is blocked by a full slot somewhere.
    for j in jobs:
        if j.queued and j.uid not in assumed and j.uid not in admitted:
            govs = governance(policies, j)
            assert not govs or any(after[(g.policy.name, g.key)] >= g.policy.spec.maxConcurrent for g in govs)


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.randoms())
def test_the_plan_does_not_depend_on_the_order_jobs_arrive_in(
    scenario: tuple[list[ConcurrencyPolicy], list[JobView], set[str]], rnd: object
) -> None:
    policies, jobs, assumed = scenario
    shuffled = list(jobs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert plan(policies, shuffled, assumed).admit == plan(policies, jobs, assumed).admit
