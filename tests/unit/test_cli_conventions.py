"""The CLI's kubectl conventions without a cluster: flags anywhere, output formats, estimates in the
reports, the annotation patches, shell completion."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobgate.cli.annotate import Change, ChangeReport, annotation_patch, wanted
from jobgate.cli.completion import complete, script
from jobgate.cli.jsonpath import TemplateError, check_template, render_template
from jobgate.cli.main import build_parser, parse_args
from jobgate.cli.render import render
from jobgate.cli.report import RunTimes, queue_list, queue_report, why_report
from jobgate.core.jobs import HOLD, PRIORITY
from tests.support.views import job, policy

NOW = 10_000.0
EXPORTS = policy("exports", {"app": "export"}, ["customer"], 1)


def export(customer: str) -> dict[str, str]:
    return {"app": "export", "customer": customer}


# --- flags before or after the command -----------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--kubeconfig", "k", "--context", "c", "-n", "ns", "--request-timeout", "5s", "queue", "p"],
        ["queue", "p", "--kubeconfig", "k", "--context", "c", "-n", "ns", "--request-timeout", "5s"],
        ["--kubeconfig", "k", "queue", "--context", "c", "p", "--namespace=ns", "--request-timeout=5"],
    ],
)
def test_cluster_flags_go_before_or_after_the_command(argv: list[str]) -> None:
    args = parse_args(argv)
    assert (args.kubeconfig, args.context, args.namespace, args.request_timeout) == ("k", "c", "ns", 5.0)
    assert (args.command, args.policy, args.all_namespaces) == ("queue", "p", False)


def test_after_the_command_wins() -> None:
    assert parse_args(["-n", "first", "status", "-n", "second"]).namespace == "second"
    assert parse_args(["-A", "queue"]).all_namespaces


def test_run_takes_them_before_too() -> None:
    args = parse_args(["--kubeconfig", "k", "-n", "billing", "run"])
    assert (args.kubeconfig, args.namespaces) == ("k", ["billing"])


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0.0), ("30", 30.0), ("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("2h", 7200.0)]
)
def test_request_timeout_is_a_duration(text: str, seconds: float) -> None:
    assert parse_args(["status", "--request-timeout", text]).request_timeout == seconds


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-n", "a", "status", "-A"], "-n/--namespace and -A/--all-namespaces cannot be used together"),
        (["status", "--request-timeout", "soon"], "expected a duration such as 30s"),
        (["status", "-o", "xml"], "unknown output format 'xml'"),
        (["status", "-o", "jsonpath={.a"], "bad jsonpath template: unclosed action"),
        (["hold"], "hold: name at least one Job, or give -l SELECTOR"),
        (["hold", "x", "-l", "a=b"], "hold: name Jobs or give -l, not both"),
        (["prioritize", "x", "1000001"], "priority must be from -1000000 to 1000000"),
        (["prioritize", "x", "high"], "expected an integer priority"),
        (["--request-timeout", "1s", "run"], "--request-timeout is for the commands that read or write"),
        (["queue", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("jobgate ")


def test_the_cli_does_not_import_kopf() -> None:
    probe = "import sys, jobgate.cli.main as m; m.parse_args(['status']); print('kopf' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "False"


# --- estimates in the reports --------------------------------------------------------------------

# Customer a: one Job running for 20 s of a typical 60 s; two queued. Customer b: nothing ever finished.
HISTORY_JOBS = [
    job("done-a1", export("a"), suspended=False, finished=True, created=10),
    job("done-a2", export("a"), suspended=False, finished=True, created=20),
    job("run-a", export("a"), suspended=False, admitted=True, created=30),
    job("wait-a1", export("a"), created=40),
    job("wait-a2", export("a"), created=50),
    job("run-b", export("b"), suspended=False, admitted=True, created=60),
    job("wait-b", export("b"), created=70),
]
RUNS = {
    "uid-billing-done-a1": RunTimes(started=NOW - 500, ended=NOW - 440),
    "uid-billing-done-a2": RunTimes(started=NOW - 300, ended=NOW - 240),
    "uid-billing-run-a": RunTimes(started=NOW - 20, ended=None),
    "uid-billing-run-b": RunTimes(started=NOW - 5, ended=None),
}


def test_queue_estimates_from_the_slot_holder_and_the_keys_history() -> None:
    report = queue_report(EXPORTS, [EXPORTS], HISTORY_JOBS, NOW, runs=RUNS)
    by_name = {e.name: e.estimate for e in report.entries}
    assert by_name["wait-a1"].start_in == 40.0  # run-a ends in 60 - 20
    assert by_name["wait-a2"].start_in == 100.0  # then wait-a1 runs 60
    assert by_name["wait-a1"].at == NOW + 40
    assert by_name["wait-a2"].basis == "1 queued ahead, 1/1 running; median run 60s of 2 recent run(s) of this key"
    # No finished Job of b: its estimate learns from a's, and says so.
    assert by_name["wait-b"].start_in == 55.0
    assert "of other keys of policy 'exports' (none of this key)" in by_name["wait-b"].basis


def test_no_history_at_all_is_unknown() -> None:
    report = queue_report(EXPORTS, [EXPORTS], HISTORY_JOBS[2:], NOW, runs=RUNS)
    assert {e.estimate.start_in for e in report.entries} == {None}
    assert "unknown" in render(report, "table")


def test_a_job_admitted_next_starts_now() -> None:
    free = [job("q", export("z"))]
    [entry] = queue_report(EXPORTS, [EXPORTS], free, NOW).entries
    assert entry.estimate.start_in == 0.0
    assert "now" in render(queue_report(EXPORTS, [EXPORTS], free, NOW), "table")


def test_the_latest_policy_decides_the_estimate() -> None:
    cap = policy("cap", {"app": "export"}, [], 1)  # one at a time over all customers: b waits for a too
    report = why_report(HISTORY_JOBS[6], [EXPORTS, cap], HISTORY_JOBS, NOW, RUNS)
    assert report.estimate is not None
    assert report.estimate.basis.startswith("policy 'cap': ")


def test_why_says_when_and_on_what_basis() -> None:
    report = why_report(HISTORY_JOBS[4], [EXPORTS], HISTORY_JOBS, NOW, RUNS)
    text = render(report, "table", width=200)
    assert "Estimated start: in about 100s (at " in text
    assert "; 1 queued ahead, 1/1 running; median run 60s of 2 recent run(s) of this key." in text
    assert "run-a (20s)" in text
    as_json = json.loads(render(report, "json"))
    assert as_json["estimatedStart"]["inSeconds"] == 100.0
    assert as_json["policies"][0]["runningSeconds"] == [20.0]


# --- output formats ------------------------------------------------------------------------------


def test_output_name() -> None:
    report = queue_report(EXPORTS, [EXPORTS], HISTORY_JOBS, NOW, runs=RUNS)
    assert render(report, "name") == "job.batch/wait-a1\njob.batch/wait-a2\njob.batch/wait-b\n"


def test_output_jsonpath() -> None:
    report = queue_report(EXPORTS, [EXPORTS], HISTORY_JOBS, NOW, runs=RUNS)
    template = '{range .jobs[?(@.position == 1)]}{.name}={.estimatedStart.inSeconds}{"\\n"}{end}'
    assert render(report, f"jsonpath={template}") == "wait-a1=40.0\nwait-b=55.0\n"
    assert render(report, "jsonpath={.jobs[*].name}") == "wait-a1 wait-a2 wait-b"


def test_output_wide_shows_the_basis() -> None:
    report = queue_report(EXPORTS, [EXPORTS], HISTORY_JOBS, NOW, runs=RUNS)
    assert "BASIS" not in render(report, "table")
    assert "BASIS" in render(report, "wide") and "median run 60s" in render(report, "wide")


def test_queue_of_every_policy_is_a_list() -> None:
    other = policy("other", {"app": "other"}, [], 1)
    queues = queue_list("billing", [EXPORTS, other], [EXPORTS, other], HISTORY_JOBS, NOW, runs=RUNS)
    assert [q["policy"] for q in queues.as_dict()["queues"]] == ["exports", "other"]
    assert "billing/other: max 1 for all its Jobs; 0 queued\nNo queued Jobs." in render(queues, "table")


@pytest.mark.parametrize(
    ("template", "data", "text"),
    [
        ("{.a.b}", {"a": {"b": "x"}}, "x"),
        ("{.a[0]} {.a[-1]} {.a[1:]}", {"a": [1, 2, 3]}, "1 3 2 3"),
        ("{.a['b-c']}", {"a": {"b-c": True}}, "true"),
        ("{..n}", {"a": {"n": 1}, "b": [{"n": 2}]}, "1 2"),
        ("{range .a[*]}[{.k}]{end}", {"a": [{"k": 1}, {"k": None}]}, "[1][]"),
        ("{.missing}x{.a}", {"a": {"k": [1]}}, 'x{"k": [1]}'),
        ('{.a[?(@.s != "x")].n}', {"a": [{"s": "x", "n": 1}, {"s": "y", "n": 2}]}, "2"),
        ("{.a[?(@.v > 1)].n}", {"a": [{"v": 1, "n": 1}, {"v": 2, "n": 2}]}, "2"),
        ("{$.a}{'\\t'}", {"a": 1}, "1\t"),
    ],
)
def test_jsonpath_dialect(template: str, data: object, text: str) -> None:
    assert render_template(template, data) == text


@pytest.mark.parametrize("template", ["{.a", "{range .a}", "{end}", "{.a[?(@.x == 1)}"])
def test_jsonpath_errors(template: str) -> None:
    with pytest.raises(TemplateError):
        check_template(template)


# --- the annotation patches ----------------------------------------------------------------------


def body(annotations: dict[str, str] | None) -> dict[str, object]:
    meta: dict[str, object] = {"uid": "u1", "name": "j", "namespace": "ns"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": {"suspend": True}}


def test_hold_without_annotations_tests_that_there_are_none() -> None:
    assert annotation_patch(body(None), HOLD, "true") == [
        {"op": "test", "path": "/metadata/uid", "value": "u1"},
        {"op": "test", "path": "/metadata/annotations", "value": None},
        {"op": "add", "path": "/metadata/annotations", "value": {HOLD: "true"}},
    ]


def test_a_patch_tests_the_value_it_read() -> None:
    assert annotation_patch(body({"other": "x"}), PRIORITY, "10") == [
        {"op": "test", "path": "/metadata/uid", "value": "u1"},
        {"op": "test", "path": "/metadata/annotations/jobgate.dev~1priority", "value": None},
        {"op": "add", "path": "/metadata/annotations/jobgate.dev~1priority", "value": "10"},
    ]
    assert annotation_patch(body({HOLD: "true"}), HOLD, None) == [
        {"op": "test", "path": "/metadata/uid", "value": "u1"},
        {"op": "test", "path": "/metadata/annotations/jobgate.dev~1hold", "value": "true"},
        {"op": "remove", "path": "/metadata/annotations/jobgate.dev~1hold"},
    ]


def test_nothing_to_write_when_it_is_so_already() -> None:
    assert annotation_patch(body({HOLD: "true"}), HOLD, "true") is None
    assert annotation_patch(body(None), HOLD, None) is None
    assert annotation_patch(body({}), HOLD, None) is None


def test_what_each_command_writes() -> None:
    assert wanted("hold") == (HOLD, "true")
    assert wanted("unhold") == (HOLD, None)
    assert wanted("prioritize", -5) == (PRIORITY, "-5")
    with pytest.raises(ValueError):
        wanted("prioritize", 10**7)


def test_changes_print_what_changed() -> None:
    report = ChangeReport(
        [
            Change("ns", "a", HOLD, None, "true", True),
            Change("ns", "b", HOLD, "true", None, True),
            Change("ns", "c", PRIORITY, "1", "10", True, "it is running: a priority acts only while a Job is queued"),
            Change("ns", "d", HOLD, "true", "true", False),
        ]
    )
    assert render(report, "table").splitlines() == [
        'job.batch/a held (jobgate.dev/hold: "true"; was not set)',
        'job.batch/b unheld (jobgate.dev/hold removed; was "true")',
        'job.batch/c prioritized (jobgate.dev/priority: "10"; was "1"); it is running: a priority acts only while '
        "a Job is queued",
        'job.batch/d unchanged (jobgate.dev/hold: "true")',
    ]
    assert render(report, "name") == "job.batch/a\njob.batch/b\njob.batch/c\njob.batch/d\n"


# --- completion ----------------------------------------------------------------------------------


def no_cluster(what: str, flags: dict[str, str]) -> list[str]:
    return {"jobs": ["export-1", "export-2", "other"], "policies": ["exports"]}.get(what, [])


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["q"], ["queue"]),
        (["-n", "billing", "w"], ["why"]),
        (["why", "exp"], ["export-1", "export-2"]),
        (["queue", ""], ["exports"]),
        (["queue", "exports", ""], []),
        (["queue", "-o", "j"], ["json", "jsonpath="]),
        (["queue", "--li"], ["--limit"]),
        (["--kube"], ["--kubeconfig"]),
        (["prioritize", "export-1", ""], []),
        (["completion", ""], ["bash", "fish", "zsh"]),
    ],
)
def test_completion_candidates(words: list[str], expected: list[str]) -> None:
    assert complete(build_parser(), words, no_cluster)[0] == expected


def test_completion_passes_the_typed_cluster_flags() -> None:
    seen: list[dict[str, str]] = []
    complete(build_parser(), ["--context", "prod", "why", "-n", "billing", ""], lambda w, f: seen.append(f) or [])
    assert seen == [{"context": "prod", "namespace": "billing"}]


def test_bash_completion_script(tmp_path: Path) -> None:
    """The script as bash runs it: COMP_WORDS in, COMPREPLY out, through `jobgate __complete`."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    jobgate = Path(sys.executable).parent / "jobgate"
    (tmp_path / "completion.bash").write_text(script("bash", "jobgate"))
    probe = (
        f"source {tmp_path / 'completion.bash'}; COMP_WORDS=({jobgate} queue -o j); COMP_CWORD=3; "
        '_jobgate_complete; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["json", "jsonpath="]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_other_shells_scripts_parse(shell: str, tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    path = tmp_path / f"jobgate.{shell}"
    path.write_text(script(shell, "jobgate"))
    subprocess.run([shell, "-n", str(path)], check=True, timeout=60)
