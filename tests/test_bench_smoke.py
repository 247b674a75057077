"""Every benchmark scenario at a tiny size, so that `make bench` cannot rot. No timing is asserted:
benchmarks are not tests. Each scenario starts its own local control plane, like `make bench`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.runner import SCENARIOS, run_scenarios
from localcluster.build import EXTRA_TOOLS, tool_dir

pytestmark = pytest.mark.cluster

EXPECTED_RESULTS = {
    "refill": {
        "makespan_seconds",
        "ideal_seconds",
        "utilisation_while_queued",
        "decision_latency_ms",
        "peak_running_per_key",
        "admissions_over_limit",
    },
    "api_cost": {
        "operator_requests_per_admission",
        "apiserver_requests",
        "job_writes_per_admission",
        "status_writes",
        "list_calls_steady_state_operator",
    },
    "burst": {
        "admission_rate_per_second",
        "peak_admissions_in_one_second",
        "seconds_until_every_key_runs",
        "admissions_over_limit",
    },
    "scale": {
        "phases",
        "rss_bytes_per_governed_job",
        "rss_bytes_per_ungoverned_job",
        "ungoverned_jobs_returned_to_the_operators_lists",
        "admissions_over_limit",
    },
    "ceiling": {"raw_patch", "jobgate", "jobgate_over_ceiling"},
    "core": {"by_queue_length"},
    "watches": {"job_watches_held_by_the_operator", "streams_without_bounds", "admissions_over_limit"},
    "kueue": {"tables", "markdown"},
    "reaction": {"by_tracked_jobs"},
}
# The plots each scenario draws (the others have none).
PLOTS = {
    "refill": ("refill.png", "refill-latency.png"),
    "burst": ("burst.png",),
    "scale": ("scale-memory.png",),
    "core": ("core-cost-per-event.png",),
}


def kueue_is_built() -> bool:
    return all((tool_dir("kueue") / output).exists() for output in EXTRA_TOOLS["kueue"].outputs)


# One test per scenario, so that the workers share them out (all in one took 3 minutes on one worker).
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_scenario_runs_at_tiny_size(name: str, tmp_path: Path) -> None:
    # Kueue takes minutes to build: `make bench` builds it; here it runs beside jobgate only once built.
    overrides = {} if kueue_is_built() else {"kueue": {"gates": "jobgate"}}
    documents = run_scenarios([name], tmp_path, tiny=True, overrides=overrides)

    assert name in documents
    for scenario, document in documents.items():
        on_disk = json.loads((tmp_path / f"{scenario}.json").read_text())
        assert on_disk == document
        assert {"machine", "versions", "parameters", "results", "targets", "bench_seconds"} <= on_disk.keys()
        assert {"nproc", "memory_gib", "cpu_model"} <= on_disk["machine"].keys()
        assert {"kubernetes", "python", "kopf"} <= on_disk["versions"].keys()
        assert EXPECTED_RESULTS[scenario] <= on_disk["results"].keys(), scenario
        for row in on_disk["targets"]:
            assert {"figure", "target", "measured", "met"} == row.keys()
        assert on_disk["results"].get("admissions_over_limit", []) == [], scenario

    results = documents[name]["results"]
    if name == "scale":
        assert set(results["phases"]) == {"empty", "ungoverned", "all"}
        # Correctness, not timing: ungoverned Jobs are neither sent to the operator nor kept.
        assert results["phases"]["ungoverned"]["tracked_jobs"] == 0
        assert results["phases"]["ungoverned"]["jobs_returned_by_lists"] == 0
    if name == "refill":
        assert results["decision_latency_ms"]["count"] > 0
        assert set(documents) == {"refill", "api_cost"}
    if name == "core":
        for figures in results["by_queue_length"].values():
            assert figures["full_plan_agrees"]
    if name == "watches":
        assert results["job_watches_held_by_the_operator"] <= 2
    if name == "reaction":
        for figures in results["by_tracked_jobs"].values():
            assert figures["completions"] > 0

    summary = (tmp_path / "README.md").read_text()
    assert "## Scorecard" in summary
    for plot in PLOTS.get(name, ()):
        assert (tmp_path / plot).stat().st_size > 0
        assert f"]({plot})" in summary


def test_every_scenario_is_smoke_tested() -> None:
    assert set(EXPECTED_RESULTS) == set(SCENARIOS) | {"api_cost"}
