"""Scenario 2. Burst: Jobs created as fast as the API accepts them, one running per key.

The operator and the policy are ready before the first Job exists; the Jobs
then arrive as fast as `create_concurrency` requests in flight allow, key after
key, so the first round of Jobs covers every key. The watch times each
admission and when each key first had a Job running. The run ends
`tail_seconds` after that: following all the Jobs to the end would time the
control plane's throughput, which the refill scenario already shows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import timeline
from bench.environment import process_memory_kib
from bench.harness import Bench, operator_pid, operator_request_counts, wait_until
from bench.scenarios import Document, target
from localcluster.manifests import job_manifest

LABEL, KEY = "bench", "key"


@dataclass(frozen=True)
class Params:
    jobs: int = 5000
    keys: int = 1000
    limit: int = 1
    run_seconds: float = 1.0
    create_concurrency: int = 32
    tail_seconds: float = 20.0
    timeout_seconds: float = 600.0

    @classmethod
    def tiny(cls) -> Params:
        return cls(jobs=20, keys=5, tail_seconds=2.0, timeout_seconds=120.0)


def run(params: Params, log_dir: Path) -> dict[str, Document]:
    with Bench(log_dir, running_pods=params.keys * params.limit) as bench:
        namespace = bench.namespace("burst")
        policy = bench.create_policy(namespace, "burst", {LABEL: "burst"}, [KEY], params.limit)
        operator = bench.operator(namespace).start()
        record = timeline.Timeline(KEY)
        with bench.watch(namespace) as watch:
            watch.govern(policy)
            watch.listeners.append(record)
            manifests = [
                job_manifest(
                    f"burst-{i:05d}",
                    {LABEL: "burst", KEY: f"k{i % params.keys:04d}"},
                    runs_for=f"{params.run_seconds:g}s",
                )
                for i in range(params.jobs)
            ]
            cpu_before = bench.cpu_seconds()
            operator_before = operator_request_counts(operator.metrics())
            apiserver_before = bench.apiserver_requests()
            t0 = time.monotonic()
            create_seconds = bench.create_jobs(namespace, manifests, params.create_concurrency)
            wait_until(
                lambda: len(record.first_running) >= params.keys,
                f"every one of {params.keys} keys to have a Job running",
                params.timeout_seconds,
                interval=0.1,
            )
            # What each process used of the 2 CPUs until then: what bounds the rate.
            window = time.monotonic() - t0
            shares = {name: (used - cpu_before.get(name, 0.0)) / window for name, used in bench.cpu_seconds().items()}
            cpu_share = {name: round(share, 2) for name, share in sorted(shares.items(), key=lambda item: -item[1])}
            # Then a while longer, to see refills begin; the rest would only time the control plane.
            time.sleep(params.tail_seconds)
            memory = process_memory_kib(operator_pid(operator))
            # Under load, each admission must still be one PATCH: jobgate's counter counts refused ones too.
            job_patches = (
                operator_request_counts(operator.metrics())[("patch", "jobs")] - operator_before[("patch", "jobs")]
            )
            apiserver_patches = (
                bench.apiserver_requests()[("PATCH", "jobs", "")] - apiserver_before[("PATCH", "jobs", "")]
            )
            with watch.changed:
                changes = list(record.changes)
                first_running = dict(record.first_running)
                over_limit = list(watch.admitted_over_limit)
                peak = max(watch.peak.values(), default=0)
        operator.stop()

    admitted = timeline.admissions(changes)
    created_by = t0 + create_seconds
    during_creation = [t for t in admitted if t <= created_by]
    end = max(c.at for c in changes)
    every_key = max(first_running.values()) - t0
    first_round = sorted(first_running.values())
    results = {
        "create_seconds": round(create_seconds, 2),
        "create_rate_per_second": round(params.jobs / create_seconds, 1),
        "admissions": len(admitted),
        "admission_rate_per_second": _round(timeline.rate(admitted, start=t0)),
        "admission_rate_while_creating_per_second": round(len(during_creation) / create_seconds, 1),
        "first_round_admission_rate_per_second": _round(timeline.rate(first_round, start=t0)),
        "peak_admissions_in_one_second": timeline.peak_rate(admitted),
        "seconds_until_every_key_runs": round(every_key, 2),
        "seconds_from_last_create_until_every_key_runs": round(max(first_running.values()) - created_by, 2),
        "finished_by_the_end": sum(1 for c in changes if c.after == "finished"),
        "peak_running_per_key": peak,
        "admissions_over_limit": over_limit,
        "cpu_share_until_every_key_runs": cpu_share,  # CPU-seconds per second, by process
        "job_writes_per_admission": round(job_patches / max(len(admitted), 1), 3),
        "apiserver_job_patches_per_admission": round(apiserver_patches / max(len(admitted), 1), 3),
        "operator_rss_kib_at_end": memory["rss_kib"],
        "operator_peak_rss_kib": memory["peak_rss_kib"],
    }
    targets = [
        target(
            "admissions per second (first round, one per key)",
            "≥ 50 % of the raw patch ceiling (see ceiling)",
            f"{results['first_round_admission_rate_per_second']}/s while Jobs arrive at "
            f"{results['create_rate_per_second']}/s",
            None,
        ),
        target(
            "time until every key has a Job running",
            "(no target)",
            f"{every_key:.1f} s after the first create ({results['seconds_from_last_create_until_every_key_runs']} s "
            "after the last)",
            None,
        ),
        target(
            "CPU used until every key runs (of 2 CPUs)",
            "(what bounds the rate)",
            ", ".join(f"{name} {share * 100:.0f} %" for name, share in cpu_share.items()),
            None,
        ),
        target(
            "Job writes per admission, under load",
            "exactly 1",
            f"{results['job_writes_per_admission']:.3f} (jobgate) / "
            f"{results['apiserver_job_patches_per_admission']:.3f} (apiserver PATCH jobs)",
            job_patches == len(admitted),
        ),
        target(
            "never over the limit",
            f"≤ {params.limit} running per key",
            f"peak {peak}, {len(over_limit)} admissions over",
            peak <= params.limit and not over_limit,
        ),
    ]
    return {
        "burst": {
            "parameters": {**asdict(params), "nodes": bench.nodes},
            "results": results,
            "targets": targets,
            "series": timeline.series(changes, t0, end),
        }
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
