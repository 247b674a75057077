"""Scenario 3. Scale: the operator's memory and start-up with tens of thousands of Jobs present.

One namespace holds `ungoverned` Jobs that no policy selects and `governed`
Jobs under one policy, all suspended (queued). The operator is started three
times, each time measured from outside (RSS from /proc, decisions from the
watch, Jobs returned to LISTs from the apiserver's own counters):

1. `empty`: no Jobs yet: the baseline RSS;
2. `ungoverned`: only the ungoverned Jobs exist: what they cost;
3. `all`: the governed Jobs too, and the policy raised from 0 to 1: time from
   the operator's start to its first admission and to one running per key, and
   the memory per tracked Job over the empty baseline.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import timeline
from bench.environment import process_memory_kib
from bench.harness import Bench, operator_pid, operator_probes, wait_until
from bench.scenarios import Document, target
from localcluster.manifests import job_manifest

LABEL, KEY = "bench", "key"
RUNS_FOR = "3600s"  # admitted Jobs keep their slots: the queue stays as it was
NOISE_BYTES = 256  # RSS per Job below this is no cost worth naming


@dataclass(frozen=True)
class Params:
    governed: int = 20000
    ungoverned: int = 20000
    keys: int = 200
    create_concurrency: int = 32
    settle_seconds: float = 5.0  # after the last decision, before memory is read
    timeout_seconds: float = 300.0

    @classmethod
    def tiny(cls) -> Params:
        return cls(governed=20, ungoverned=20, keys=4, settle_seconds=1.0, timeout_seconds=120.0)


def run(params: Params, log_dir: Path) -> dict[str, Document]:
    phases: dict[str, dict[str, Any]] = {}
    with Bench(log_dir, running_pods=params.keys * 2) as bench:
        namespace = bench.namespace("scale")
        policy = bench.create_policy(namespace, "scale", {LABEL: "governed"}, [KEY], 0)
        record = timeline.Timeline(KEY)
        with bench.watch(namespace) as watch:
            watch.govern(policy)
            watch.listeners.append(record)

            def start_and_measure(phase: str, limit: int | None) -> None:
                """Start the operator; if `limit` is set, raise the policy to it first and time the decisions."""
                if limit is not None:
                    watch.govern(bench.set_limit(namespace, "scale", limit))
                operator = bench.operator(namespace)
                listed_before = bench.apiserver_listed_jobs()
                started = time.monotonic()
                operator.start(timeout=params.timeout_seconds)
                healthy = time.monotonic() - started
                figures: dict[str, Any] = {"seconds_until_healthy": round(healthy, 2)}
                if limit is not None:
                    wait_until(  # each raise of the limit by one admits one more Job per key
                        lambda: len(timeline.admissions(record.since(started))) >= params.keys,
                        f"{params.keys} more Jobs running",
                        params.timeout_seconds,
                        interval=0.1,
                    )
                    with watch.changed:
                        admitted = sorted(timeline.admissions(record.since(started)))
                    figures["seconds_to_first_admission"] = round(admitted[0] - started, 2)
                    figures["seconds_to_one_more_per_key"] = round(admitted[-1] - started, 2)
                time.sleep(params.settle_seconds)
                figures.update(process_memory_kib(operator_pid(operator)))
                figures["tracked_jobs"] = operator_probes(operator).get("trackedJobs")
                figures["jobs_returned_by_lists"] = bench.apiserver_listed_jobs() - listed_before
                operator.stop()
                phases[phase] = figures

            start_and_measure("empty", None)
            create_ungoverned = _create(bench, namespace, "ungoverned", params.ungoverned, params)
            wait_until(lambda: len(watch.jobs) >= params.ungoverned, "the watch to see every Job", 120)
            start_and_measure("ungoverned", None)
            create_governed = _create(bench, namespace, "governed", params.governed, params)
            total = params.ungoverned + params.governed
            wait_until(lambda: len(watch.jobs) >= total, "the watch to see every Job", 120)
            start_and_measure("all", 1)
            with watch.changed:
                over_limit = list(watch.admitted_over_limit)
                peak = max(watch.peak.values(), default=0)

    document = scorecard(params, phases, peak, over_limit)
    document["results"]["create_rate_per_second"] = round(total / (create_ungoverned + create_governed), 1)
    document["parameters"]["nodes"] = bench.nodes
    return {"scale": document}


def scorecard(params: Params, phases: dict[str, dict[str, Any]], peak: int, over_limit: list[str]) -> Document:
    """Figures and targets from the phases' measurements.

    Memory per tracked Job is everything the operator holds with all the Jobs
    present, over the empty baseline: the ungoverned Jobs' share (nothing, if
    they are never sent to it) is counted in, not subtracted.
    """
    empty, ungoverned, everything = (phases[p] for p in ("empty", "ungoverned", "all"))
    per_governed = (everything["rss_kib"] - empty["rss_kib"]) * 1024 / params.governed
    per_ungoverned = (ungoverned["rss_kib"] - empty["rss_kib"]) * 1024 / max(params.ungoverned, 1)
    first = everything["seconds_to_first_admission"]
    listed_ungoverned = ungoverned["jobs_returned_by_lists"]
    results = {
        "phases": phases,
        "rss_bytes_per_governed_job": round(per_governed),
        "rss_bytes_per_ungoverned_job": round(per_ungoverned),
        "ungoverned_jobs_returned_to_the_operators_lists": listed_ungoverned,
        "peak_running_per_key": peak,
        "admissions_over_limit": over_limit,
    }
    targets = [
        target(
            "operator memory per tracked Job (RSS over the empty baseline, all Jobs present)",
            "≤ 2 KiB",
            f"{per_governed / 1024:.2f} KiB ({everything['rss_kib'] / 1024:.0f} MiB with {params.governed} "
            f"governed and {params.ungoverned} ungoverned Jobs, {empty['rss_kib'] / 1024:.0f} MiB empty)",
            per_governed <= 2048,
        ),
        target(
            f"first decision after start, {params.governed + params.ungoverned} Jobs present",
            "≤ 20 s",
            f"{first:.1f} s (one running per key after {everything['seconds_to_one_more_per_key']:.1f} s)",
            first <= 20,
        ),
        target(
            "ungoverned Jobs are neither listed nor kept",
            "cost nothing",
            f"{listed_ungoverned} of {params.ungoverned} returned to the operator's LISTs (apiserver's count), "
            f"tracked {ungoverned['tracked_jobs']}, RSS {ungoverned['rss_kib'] - empty['rss_kib']:+d} KiB over empty",
            listed_ungoverned == 0 and per_ungoverned <= NOISE_BYTES,
        ),
        target(
            "never over the limit",
            "≤ 1 running per key",
            f"peak {peak}, {len(over_limit)} admissions over",
            peak <= 1 and not over_limit,
        ),
    ]
    return {"parameters": asdict(params), "results": results, "targets": targets}


def _create(bench: Bench, namespace: str, kind: str, count: int, params: Params) -> float:
    # Ungoverned Jobs are suspended by their owner, without jobgate's queued mark: not jobgate's to touch.
    mark = kind != "ungoverned"
    manifests = [
        job_manifest(
            f"{kind}-{i:05d}", {LABEL: kind, KEY: f"k{i % params.keys:04d}"}, runs_for=RUNS_FOR, queued_mark=mark
        )
        for i in range(count)
    ]
    return bench.create_jobs(namespace, manifests, params.create_concurrency)
