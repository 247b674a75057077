"""The CLI's reports and their rendering, from hand-made policies and Job views."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from jobgate.cli.main import parse_args
from jobgate.cli.render import Report, render, use_colour
from jobgate.cli.report import human_duration, queue_report, selector_mismatch, status_report, why_report
from jobgate.core.admission import plan
from jobgate.core.jobs import JobView
from jobgate.core.policy import ClusterPolicySpec, ConcurrencyPolicy, LabelSelector, LabelSelectorRequirement
from tests.support.views import NS, job, policy

NOW = 10_000.0


def export(customer: str) -> dict[str, str]:
    return {"app": "export", "customer": customer}


EXPORTS = policy("exports", {"app": "export"}, ["customer"], 1)
JOBS = [
    job("run-a", export("a"), suspended=False, admitted=True, created=100),
    job("wait-a1", export("a"), created=200, queued_at=250),
    job("wait-a2", export("a"), created=300, priority=5),
    job("wait-b", export("b"), created=400),
    job("hold-a", export("a"), held=True, created=150),
    job("done-a", export("a"), suspended=False, finished=True, created=50),
    job("stray", {"app": "other"}, created=500, queued_at=500),
]


def by_name(name: str) -> JobView:
    return next(j for j in JOBS if j.name == name)


# --- status --------------------------------------------------------------------------------------


def test_status_counts_each_key_busiest_first() -> None:
    report = status_report(NS, [EXPORTS], JOBS, NOW)
    [summary] = report.policies
    assert (summary.running, summary.queued, summary.held, summary.keys) == (1, 3, 1, 2)
    a, b = summary.busiest_keys
    assert a.key == {"customer": "a"}
    assert (a.running, a.queued, a.held, a.admissible) == (1, 2, 1, 0)
    # The longest wait: wait-a1 was queued at 250 (its queued-at beats its creation at 200).
    assert a.oldest_wait == NOW - 250
    assert b.key == {"customer": "b"}
    assert (b.running, b.queued, b.admissible) == (0, 1, 1)
    assert summary.more_keys == 0


def test_status_pages_keys_and_says_how_many_more() -> None:
    jobs = [job(f"j{i}", export(str(i)), created=i) for i in range(30)]
    [summary] = status_report(NS, [EXPORTS], jobs, NOW, limit=20).policies
    assert len(summary.busiest_keys) == 20
    assert summary.more_keys == 10
    assert "... and 10 more key(s)" in render(status_report(NS, [EXPORTS], jobs, NOW, limit=20), "table")


def test_status_shows_only_the_named_policy_but_decides_with_all() -> None:
    other = policy("everything", {}, [], 100)
    report = status_report(NS, [EXPORTS, other], JOBS, NOW, only=[other])
    assert [p.name for p in report.policies] == ["everything"]


def test_status_of_a_namespace_without_policies() -> None:
    assert render(status_report(NS, [], [], NOW), "table") == "No ConcurrencyPolicies in namespace 'billing'.\n"


# --- queue ---------------------------------------------------------------------------------------


def test_queue_is_in_admission_order_with_positions_in_each_key() -> None:
    report = queue_report(EXPORTS, [EXPORTS], JOBS, NOW)
    rows = [(e.name, e.rank, e.position, e.key_queued, e.priority, e.admit_next) for e in report.entries]
    assert rows == [
        ("wait-a2", 1, 1, 2, 5, False),  # priority first
        ("wait-a1", 2, 2, 2, 0, False),
        ("wait-b", 3, 1, 1, 0, True),  # b has a free slot: admitted next
    ]
    assert report.entries[1].waiting == NOW - 250
    assert report.entries[2].waiting == NOW - 400
    assert report.queued == 3


def test_queue_admit_next_is_exactly_the_plan() -> None:
    report = queue_report(EXPORTS, [EXPORTS], JOBS, NOW)
    assert {e.name for e in report.entries if e.admit_next} == {j.name for j in plan([EXPORTS], JOBS).admit}


def test_queue_filtered_by_key_keeps_ranks_and_positions() -> None:
    report = queue_report(EXPORTS, [EXPORTS], JOBS, NOW, key_filter={"customer": "a"})
    assert [(e.name, e.rank, e.position) for e in report.entries] == [("wait-a2", 1, 1), ("wait-a1", 2, 2)]
    assert (report.queued, report.matching, report.more) == (3, 2, 0)


def test_queue_limit() -> None:
    report = queue_report(EXPORTS, [EXPORTS], JOBS, NOW, limit=1)
    assert [e.name for e in report.entries] == ["wait-a2"]
    assert report.more == 2


# --- why -----------------------------------------------------------------------------------------


def why(name: str, policies: list[ConcurrencyPolicy] | None = None, jobs: list[JobView] | None = None) -> str:
    jobs = JOBS if jobs is None else jobs
    target = next(j for j in jobs if j.name == name)
    return why_report(target, [EXPORTS] if policies is None else policies, jobs, NOW).summary


def test_why_a_queued_job_waits_for_a_full_slot() -> None:
    report = why_report(by_name("wait-a1"), [EXPORTS], JOBS, NOW)
    assert report.state == "queued"
    assert not report.admit_next
    [gov] = report.governors
    assert (gov.policy, gov.key, gov.running, gov.max_concurrent) == ("exports", {"customer": "a"}, 1, 1)
    assert gov.running_jobs == ["run-a"]
    assert (gov.position, gov.queued, gov.slot) == (2, 2, "full")
    assert report.waiting == NOW - 250
    assert report.summary == (
        "Job 'wait-a1' is queued and waits for a slot in policy 'exports' for customer=a "
        "(1/1 running: run-a; position 2 of 2)."
    )


def test_why_a_job_that_fits_is_admitted_next() -> None:
    report = why_report(by_name("wait-b"), [EXPORTS], JOBS, NOW)
    assert report.admit_next
    assert report.governors[0].slot == "free"
    assert "will be admitted at jobgate's next decision" in report.summary


def test_why_running_finished_held() -> None:
    assert why("run-a") == "Job 'run-a' is running: it holds a slot in policy 'exports' (customer=a: 1/1 running)."
    assert why("done-a") == "Job 'done-a' has finished: it holds no slot."
    assert why("hold-a").startswith("Job 'hold-a' is on hold (annotation jobgate.dev/hold: \"true\")")


def test_why_an_ungoverned_job_names_the_policies_that_do_not_match() -> None:
    report = why_report(by_name("stray"), [EXPORTS], JOBS, NOW)
    assert report.state == "suspended"
    assert not report.governors
    assert report.release  # jobgate queued it (queued-at) and nothing governs it now
    assert [(u.policy, u.reason) for u in report.unmatched] == [("exports", "needs app=export, the Job has app=other")]
    assert "no ConcurrencyPolicy in namespace 'billing' governs it" in report.summary
    assert "jobgate will release it" in report.summary


def test_why_in_a_namespace_without_policies() -> None:
    mine = job("mine", {"app": "x"}, created=1, marked=False)
    report = why_report(mine, [], [mine], NOW)
    assert not report.release
    assert report.summary == (
        "Job 'mine' is suspended, and namespace 'billing' has no ConcurrencyPolicy: "
        "jobgate will not start it; set spec.suspend to false to start it."
    )


def test_why_a_paused_policy() -> None:
    paused = policy("exports", {"app": "export"}, ["customer"], 0)
    q = job("q", export("z"))
    report = why_report(q, [paused], [q], NOW)
    assert report.governors[0].slot == "paused"
    assert "which is paused (maxConcurrent: 0; position 1 of 1)" in report.summary


def test_why_a_free_slot_taken_by_a_job_before_it() -> None:
    two = policy("exports", {"app": "export"}, ["customer"], 2)
    jobs = [
        job("r", export("a"), suspended=False, admitted=True),
        job("first", export("a"), created=2),
        job("second", export("a"), created=3),
    ]
    report = why_report(jobs[2], [two], jobs, NOW)
    assert report.governors[0].slot == "taken"
    assert (report.governors[0].position, report.governors[0].queued) == (2, 2)
    assert "whose free slots go to other Jobs at the next decision" in report.summary


def test_why_names_every_policy_that_blocks_and_not_the_free_ones() -> None:
    per_customer = policy("exports", {"app": "export"}, ["customer"], 1)
    global_cap = policy("cap", {"app": "export"}, [], 1)
    jobs = [job("r", export("a"), suspended=False, admitted=True), job("q", export("b"), created=2)]
    report = why_report(jobs[1], [per_customer, global_cap], jobs, NOW)
    assert {g.policy: g.slot for g in report.governors} == {"exports": "free", "cap": "full"}
    assert "policy 'cap' for (all Jobs) (1/1 running: r; position 1 of 1)" in report.summary
    assert "policy 'exports'" not in report.summary


def test_why_mentions_a_missing_key_label() -> None:
    bare = job("bare", {"app": "export"})
    report = why_report(bare, [EXPORTS], [bare], NOW)
    assert report.governors[0].key == {"customer": ""}
    assert report.summary.endswith("It lacks the label(s) customer, which count as the empty value.")


def test_why_a_job_unsuspended_behind_jobgates_back() -> None:
    jobs = [
        job("legit", export("a"), suspended=False, admitted=True, created=10),
        job("intruder", export("a"), suspended=False, created=20),
    ]
    report = why_report(jobs[1], [EXPORTS], jobs, NOW)
    assert report.resuspend
    assert "jobgate will suspend it again" in report.summary


def test_selector_mismatch_names_each_failing_requirement() -> None:
    selector = LabelSelector(
        matchLabels={"app": "export", "tier": "batch"},
        matchExpressions=[
            LabelSelectorRequirement(key="region", operator="In", values=["eu", "us"]),
            LabelSelectorRequirement(key="debug", operator="DoesNotExist"),
            LabelSelectorRequirement(key="owner", operator="Exists"),
            LabelSelectorRequirement(key="stage", operator="NotIn", values=["dev"]),
        ],
    )
    labels = {"app": "import", "region": "ap", "debug": "1", "stage": "dev"}
    assert selector_mismatch(selector, labels).split("; ") == [
        "needs app=export, the Job has app=import",
        "needs label tier=batch, which the Job lacks",
        "needs region in (eu, us), the Job has region=ap",
        "excludes Jobs with label debug, which the Job has",
        "needs label owner, which the Job lacks",
        "excludes stage in (dev), the Job has stage=dev",
    ]


# The CLI never disagrees with the operator: "admitted next" is the plan, and a queued Job that is
# not admitted always has a policy to blame.
label_values = st.sampled_from(["a", "b", "c"])


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(
        st.tuples(st.sampled_from([[], ["customer"], ["customer", "region"]]), st.integers(0, 2)),
        min_size=1,
        max_size=3,
    ),
    jobs=st.lists(
        st.tuples(label_values, label_values, st.booleans(), st.booleans(), st.integers(0, 2)),
        max_size=12,
    ),
)
def test_why_and_queue_agree_with_the_plan(
    specs: list[tuple[list[str], int]], jobs: list[tuple[str, str, bool, bool, int]]
) -> None:
    policies = [policy(f"p{i}", {"app": "export"}, keys, limit) for i, (keys, limit) in enumerate(specs)]
    views = [
        job(f"j{i}", {"app": "export", "customer": c, "region": r}, suspended=s, held=h, priority=p, created=i)
        for i, (c, r, s, h, p) in enumerate(jobs)
    ]
    admitted = {j.name for j in plan(policies, views).admit}
    for view in views:
        report = why_report(view, policies, views, NOW)
        assert report.admit_next == (view.name in admitted)
        if report.state == "queued" and not report.admit_next:
            assert any(g.slot != "free" for g in report.governors)
            assert "a free slot." not in report.summary
    for p in policies:
        queue = queue_report(p, policies, views, NOW)
        assert {e.name for e in queue.entries if e.admit_next} <= admitted
        for entry in queue.entries:
            assert why_report(next(v for v in views if v.name == entry.name), policies, views, NOW).governors


# --- rendering -----------------------------------------------------------------------------------


REPORTS: list[Report] = [
    status_report(NS, [EXPORTS], JOBS, NOW),
    queue_report(EXPORTS, [EXPORTS], JOBS, NOW),
    why_report(by_name("wait-a1"), [EXPORTS], JOBS, NOW),
    why_report(by_name("stray"), [EXPORTS], JOBS, NOW),
]


@pytest.mark.parametrize("report", REPORTS, ids=["status", "queue", "why", "why-ungoverned"])
def test_json_and_yaml_parse_to_the_documented_fields(report: Report) -> None:
    as_dict = report.as_dict()
    assert json.loads(render(report, "json")) == as_dict
    assert yaml.safe_load(render(report, "yaml")) == as_dict


def test_json_field_names() -> None:
    status = json.loads(render(REPORTS[0], "json"))
    assert set(status["policies"][0]) == {
        "namespace",
        "name",
        "keyLabels",
        "maxConcurrent",
        "running",
        "queued",
        "held",
        "keys",
        "moreKeys",
        "busiestKeys",
        "maxQueued",
        "overflow",
    }
    assert set(status["policies"][0]["busiestKeys"][0]) == {
        "key",
        "running",
        "queued",
        "held",
        "oldestWaitSeconds",
        "admissible",
        "maxConcurrent",
        "ownLimit",
    }
    queue = json.loads(render(REPORTS[1], "json"))
    assert queue["jobs"][0] == {
        "name": "wait-a2",
        "key": {"customer": "a"},
        "rank": 1,
        "position": 1,
        "keyQueued": 2,
        "running": 1,
        "maxConcurrent": 1,
        "priority": 5,
        "waitingSeconds": NOW - 300,
        "admitNext": False,
        "estimatedStart": {
            "inSeconds": None,
            "at": None,
            "basis": "unknown: no finished Job of policy 'exports' is left to learn run times from",
        },
    }
    why = json.loads(render(REPORTS[2], "json"))
    assert why["state"] == "queued"
    assert why["policies"][0]["runningJobs"] == ["run-a"]
    assert why["policies"][0]["position"] == 2


@pytest.mark.parametrize("report", REPORTS, ids=["status", "queue", "why", "why-ungoverned"])
def test_tables_have_colour_only_when_asked(report: Report) -> None:
    assert "\x1b[" not in render(report, "table", colour=False)
    assert "\x1b[" in render(report, "table", colour=True)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_needs_a_terminal_and_no_NO_COLOR() -> None:
    assert not use_colour(io.StringIO(), {})
    assert use_colour(FakeTerminal(), {})
    assert not use_colour(FakeTerminal(), {"NO_COLOR": "1"})


def test_tables_align_their_columns() -> None:
    text = render(REPORTS[1], "table")
    lines = text.splitlines()
    header = lines[1]
    assert header.split() == ["#", "JOB", "KEY", "POSITION", "PRIORITY", "WAITING", "RUNNING", "EST.", "START", "NOTE"]
    for line in lines[2:]:
        assert line[header.index("KEY")] != " "
        assert line[header.index("POSITION")] != " "
    assert lines[4].rstrip().endswith("admitted next")
    assert "2 of 2" in lines[3]


def test_why_table_lists_the_slot_holders() -> None:
    text = render(REPORTS[2], "table")
    assert "POLICY   KEY         RUNNING  POSITION  SLOT  RUNNING JOBS" in text
    assert "exports  customer=a  1/1      2 of 2    full  run-a (0s)" in text
    assert "Waiting for 162m." in text  # 9750s, as kubectl shows ages


def test_a_table_drops_an_empty_note_column() -> None:
    report = queue_report(EXPORTS, [EXPORTS], JOBS, NOW, key_filter={"customer": "a"})
    assert "NOTE" not in render(report, "table")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-5, "0s"),
        (59, "59s"),
        (119, "119s"),
        (125, "2m5s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (20 * 3600, "20h"),
        (3 * 86400 + 3600, "3d1h"),
        (30 * 86400, "30d"),
        (800 * 86400, "2y70d"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


# --- command line --------------------------------------------------------------------------------


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["queue", "exports", "--key", "no-equals"], ["status", "--limit", "x"], ["status", "-n", "a", "-A"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(argv)
        assert exit_info.value.code == 2
    assert "expected LABEL=VALUE" in capsys.readouterr().err


def test_key_filters_parse() -> None:
    args = parse_args(["queue", "-n", NS, "exports", "--key", "customer=a", "--key", "region="])
    assert args.key == [("customer", "a"), ("region", "")]
    assert args.output == "table"


def test_why_a_job_suspended_by_someone_else_or_owned_elsewhere_is_not_jobgates() -> None:
    exports = policy("exports", {"app": "x"}, ["customer"], 1)
    theirs = job("theirs", {"app": "x", "customer": "a"}, marked=False)
    kueue = job("kueue", {"app": "x", "customer": "a"}, foreign="Kueue queues it (label kueue.x-k8s.io/queue-name)")
    for ignored, reason in ((theirs, "without jobgate's queued mark"), (kueue, "Kueue queues it")):
        report = why_report(ignored, [exports], [theirs, kueue], NOW)
        assert report.state == "not-jobgates"
        assert reason in report.summary and "never suspends, starts or counts it" in report.summary


# --- policy shapes: per-key limits and bounded queues ----------------------------------------------

ACME = {"key": {"customer": "acme"}, "maxConcurrent": 2}


def test_status_and_why_show_a_keys_own_limit() -> None:
    tiered = policy("exports", {"app": "export"}, ["customer"], 1, limits=[ACME])
    jobs = [
        job("acme-1", export("acme"), suspended=False, created=1),
        job("acme-2", export("acme"), suspended=False, created=2),
        job("acme-3", export("acme"), created=3),
        job("b-1", export("b"), suspended=False, created=4),
    ]
    table = render(status_report(NS, [tiered], jobs, NOW), "table")
    assert "customer=acme  2/2      1       0     " in table and "own limit" in table
    assert "customer=b     1/1" in table
    why = why_report(jobs[2], [tiered], jobs, NOW)
    assert "for customer=acme (2/2 running under its own limit: acme-1, acme-2; position 1 of 1)" in why.summary
    queue = render(queue_report(tiered, [tiered], jobs, NOW), "table")
    [row] = [line for line in queue.splitlines() if "acme-3" in line]
    assert " 2/2 " in row  # running/max of its own key, not the policy's default 1


def test_status_says_when_a_queue_is_full_and_why_says_which_job_goes() -> None:
    bounded = policy("exports", {"app": "export"}, ["customer"], 1, maxQueued=1, overflow="ReplaceOldest")
    jobs = [
        job("running", export("a"), suspended=False, created=1),
        job("older", export("a"), created=2),
        job("newer", export("a"), created=3),
    ]
    table = render(status_report(NS, [bounded], jobs, NOW), "table")
    assert "max 1 per customer, queue 1 (ReplaceOldest)" in table
    assert "queue full (2/1, ReplaceOldest)" in table
    assert "jobgate will delete it at its next decision" in why_report(jobs[1], [bounded], jobs, NOW).summary
    assert why_report(jobs[2], [bounded], jobs, NOW).evict is False


def test_a_cluster_policy_counts_a_key_across_namespaces_in_status_queue_and_why() -> None:
    per_team = ConcurrencyPolicy(
        namespace="",
        name="per-team",
        uid="uid-per-team",
        generation=1,
        created=0.0,
        spec=ClusterPolicySpec.model_validate(
            {"selector": {}, "namespaceSelector": {"matchLabels": {"tenant": "true"}}, "keyLabels": ["team"]}
            | {"maxConcurrent": 2}
        ),
    )
    tenants = {"a": {"tenant": "true"}, "b": {"tenant": "true"}, "c": {}}
    red = {"team": "red"}
    jobs = [
        job("r1", red, namespace="a", suspended=False, admitted=True, created=1),
        job("r2", red, namespace="b", suspended=False, admitted=True, created=2),
        job("q1", red, namespace="b", created=3),
        job("elsewhere", red, namespace="c", created=4),
    ]
    [summary] = status_report(None, [per_team], jobs, NOW, namespaces=tenants).policies
    assert (summary.namespace, summary.running, summary.queued) == ("", 2, 1)
    table = render(status_report(None, [per_team], jobs, NOW, namespaces=tenants), "table")
    assert table.startswith("per-team (cluster-wide): max 2 per team across namespaces; 2 running, 1 queued")
    queue = queue_report(per_team, [per_team], jobs, NOW, namespaces=tenants)
    assert [e.name for e in queue.entries] == ["b/q1"]
    why = why_report(jobs[2], [per_team], jobs, NOW, namespaces=tenants)
    assert why.summary.startswith(
        "Job 'q1' is queued and waits for a slot in cluster policy 'per-team' for team=red "
        "(2/2 running across namespaces: a/r1, b/r2; position 1 of 1)."
    )
    outside = why_report(jobs[3], [per_team], jobs, NOW, namespaces=tenants)
    assert outside.state == "suspended"
    assert [u.reason for u in outside.unmatched] == [
        "cluster policy: its namespaceSelector does not select namespace 'c'"
    ]
