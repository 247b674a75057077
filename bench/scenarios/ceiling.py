"""Scenario 5. The ceiling of this machine: how fast a plain client can admit Jobs, and jobgate beside it.

Twice, each time on a fresh control plane with the same suspended Jobs: first
a plain `kubernetes.aio` client sends jobgate's own admission patch (test
suspended, unsuspend, annotate) to every Job with `concurrency` requests in
flight and no operator; then jobgate admits the same number of Jobs when their
paused policy is raised so that all fit at once. Both rates are timed by the
same independent watch, from the moment the work may start to the last Job
seen unsuspended.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import timeline
from bench.harness import JSON_PATCH, Bench, Request, wait_until
from bench.scenarios import Document, target
from jobgate.core import patches
from localcluster.manifests import job_manifest

LABEL, KEY = "bench", "key"
RV = "/metadata/resourceVersion"
RUNS_FOR = "3600s"  # admitted pods keep running: no completions stir the control plane while it is timed


@dataclass(frozen=True)
class Params:
    jobs: int = 2000
    keys: int = 200
    concurrency: int = 16  # as jobgate's engine: EngineSettings.write_concurrency
    create_concurrency: int = 32
    timeout_seconds: float = 300.0

    @classmethod
    def tiny(cls) -> Params:
        return cls(jobs=20, keys=4, timeout_seconds=120.0)


def run(params: Params, log_dir: Path) -> dict[str, Document]:
    raw = _raw_patches(params, log_dir)
    ours = _jobgate(params, log_dir)
    ratio = ours["admission_rate_per_second"] / raw["admission_rate_per_second"]
    results = {
        "raw_patch": raw,
        "jobgate": ours,
        "jobgate_over_ceiling": round(ratio, 3),
    }
    targets = [
        target(
            "jobgate's admission rate vs the raw patch ceiling",
            "≥ 50 %",
            f"{ours['admission_rate_per_second']:.0f}/s vs {raw['admission_rate_per_second']:.0f}/s "
            f"({ratio * 100:.0f} %)",
            ratio >= 0.5,
        ),
        target(
            "raw patch ceiling (client-side)",
            "(reference)",
            f"{raw['client_rate_per_second']:.0f} patches/s with {params.concurrency} in flight",
            None,
        ),
    ]
    return {"ceiling": {"parameters": asdict(params), "results": results, "targets": targets}}


def _manifests(params: Params, prefix: str) -> list[dict[str, object]]:
    return [
        job_manifest(f"{prefix}-{i:05d}", {LABEL: prefix, KEY: f"k{i % params.keys:04d}"}, runs_for=RUNS_FOR)
        for i in range(params.jobs)
    ]


def _raw_patches(params: Params, log_dir: Path) -> dict[str, float | int]:
    with Bench(log_dir, running_pods=params.jobs) as bench:
        namespace = bench.namespace("ceiling")
        record = timeline.Timeline(KEY)
        with bench.watch(namespace) as watch:
            watch.listeners.append(record)
            bench.create_jobs(namespace, _manifests(params, "raw"), params.create_concurrency)
            wait_until(lambda: record.count["queued"] >= params.jobs, "the watch to see every Job", 120)
            path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
            with watch.changed:
                views = list(watch.jobs.values())
            now = time.time()
            # jobgate's patch, less its resourceVersion test: the Job controller may have written the
            # Job's status since the watch saw it, and a plain client has no cache to decide from.
            requests = [
                Request(
                    "PATCH",
                    f"{path}/{job.name}",
                    [op for op in patches.admit(job, now) if op["path"] != RV],
                    JSON_PATCH,
                )
                for job in views
            ]
            t0 = time.monotonic()
            client_seconds = bench.send_all(requests, params.concurrency)
            wait_until(lambda: record.count["running"] >= params.jobs, "every Job seen running", params.timeout_seconds)
            with watch.changed:
                seen = timeline.became_running(record.since(t0))
    return {
        "jobs": params.jobs,
        "client_seconds": round(client_seconds, 3),
        "client_rate_per_second": round(params.jobs / client_seconds, 1),
        "seen_seconds": round(max(seen) - t0, 3),
        "admission_rate_per_second": round(params.jobs / (max(seen) - t0), 1),
    }


def _jobgate(params: Params, log_dir: Path) -> dict[str, float | int]:
    with Bench(log_dir, running_pods=params.jobs) as bench:
        namespace = bench.namespace("ceiling")
        policy = bench.create_policy(namespace, "ceiling", {LABEL: "jobgate"}, [KEY], 0)
        operator = bench.operator(namespace).start()
        record = timeline.Timeline(KEY)
        with bench.watch(namespace) as watch:
            watch.govern(policy)
            watch.listeners.append(record)
            bench.create_jobs(namespace, _manifests(params, "jobgate"), params.create_concurrency)
            bench.wait_until_queued(namespace, "ceiling", params.jobs, timeout=120)
            limit = -(-params.jobs // params.keys)  # every Job fits at once
            watch.govern(bench.set_limit(namespace, "ceiling", limit))
            t0 = time.monotonic()
            wait_until(lambda: record.count["running"] >= params.jobs, "every Job seen running", params.timeout_seconds)
            with watch.changed:
                seen = timeline.admissions(record.since(t0))
                over_limit = len(watch.admitted_over_limit)
        operator.stop()
    return {
        "jobs": params.jobs,
        "seen_seconds": round(max(seen) - t0, 3),
        "admission_rate_per_second": round(len(seen) / (max(seen) - t0), 1),
        "admissions_over_limit": over_limit,
    }
