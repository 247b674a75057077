"""Scenarios 1 and 4. Refill: how fast freed slots are refilled, and what each admission costs in API calls.

All Jobs are created while the policy is paused (`maxConcurrent: 0`); once the
operator reports them all queued, the limit is raised at t0. From then on, the
independent watch times every completion and the admission that refills its
slot. The operator's and the apiserver's request counters are read just before
t0 and after the last Job finished.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import timeline
from bench.environment import process_memory_kib
from bench.harness import Bench, Counts, operator_pid, operator_request_counts, wait_until
from bench.scenarios import Document, ms, target
from localcluster.manifests import job_manifest

LABEL, KEY = "bench", "key"


@dataclass(frozen=True)
class Params:
    jobs: int = 2000
    keys: int = 200
    limit: int = 2
    run_seconds: float = 1.0
    create_concurrency: int = 16
    timeout_seconds: float = 600.0

    @classmethod
    def tiny(cls) -> Params:
        return cls(jobs=20, keys=4, limit=2, timeout_seconds=120.0)


def run(params: Params, log_dir: Path) -> dict[str, Document]:
    with Bench(log_dir, running_pods=params.keys * params.limit) as bench:
        namespace = bench.namespace("refill")
        policy = bench.create_policy(namespace, "refill", {LABEL: "refill"}, [KEY], 0)
        operator = bench.operator(namespace).start()
        record = timeline.Timeline(KEY)
        with bench.watch(namespace) as watch:
            watch.govern(policy)
            watch.listeners.append(record)
            manifests = [
                job_manifest(
                    f"refill-{i:05d}",
                    {LABEL: "refill", KEY: f"k{i % params.keys:04d}"},
                    runs_for=f"{params.run_seconds:g}s",
                )
                for i in range(params.jobs)
            ]
            create_seconds = bench.create_jobs(namespace, manifests, params.create_concurrency)
            bench.wait_until_queued(namespace, "refill", params.jobs, timeout=120)

            operator_before = operator_request_counts(operator.metrics())
            apiserver_before = bench.apiserver_requests()
            watch.govern(bench.set_limit(namespace, "refill", params.limit))  # only now may Jobs run
            t0 = time.monotonic()
            wait_until(
                lambda: record.count["finished"] >= params.jobs,
                f"all {params.jobs} Jobs to finish",
                params.timeout_seconds,
                interval=0.1,
            )
            done = time.monotonic()
            operator_after = operator_request_counts(operator.metrics())
            apiserver_after = bench.apiserver_requests()
            memory = process_memory_kib(operator_pid(operator))
            with watch.changed:
                changes = list(record.changes)
                over_limit = list(watch.admitted_over_limit)
                peak = max(watch.peak.values(), default=0)
        operator.stop()

    after_t0 = [c for c in changes if c.at >= t0]
    finished_at = max(c.at for c in after_t0 if c.after == "finished")
    makespan = finished_at - t0
    per_key = timeline.keys_of(changes)
    rounds = max(math.ceil(n / params.limit) for n in per_key.values())
    ideal = rounds * params.run_seconds
    run_times = timeline.run_times(after_t0)
    mean_run = sum(run_times) / len(run_times)
    refills = timeline.refills(changes)  # from the first change: the queue before t0 counts too
    latency = timeline.summary([r.latency for r in refills], scale=1000)
    decided = [(r, r.decided) for r in refills if r.decided is not None]
    util = timeline.utilisation(changes, params.limit, t0)
    admitted = timeline.admissions(after_t0)
    first_round = sorted(admitted)[: min(len(admitted), params.keys * params.limit)]

    # The ideal again, from what each key's Jobs really took: its slot time over its slots. Only
    # waiting between Jobs (jobgate's part) and uneven slots can put the makespan above the busiest.
    busiest_work = max(timeline.work_per_key(after_t0).values()) / params.limit
    reacting = timeline.summary([at - r.freed for r, at in decided], scale=1000)
    writing = timeline.summary([r.seen - at for r, at in decided], scale=1000)
    results = {
        "makespan_seconds": round(makespan, 2),
        "ideal_seconds": ideal,
        "makespan_over_ideal": round(makespan / ideal, 3),
        "rounds_on_busiest_key": rounds,
        "job_run_time_seconds": timeline.summary(run_times, digits=3),
        "ideal_with_measured_run_time_seconds": round(rounds * mean_run, 2),
        "makespan_over_ideal_with_measured_run_time": round(makespan / (rounds * mean_run), 3),
        "busiest_key_run_time_per_slot_seconds": round(busiest_work, 2),
        "makespan_over_busiest_key_run_time_per_slot": round(makespan / busiest_work, 3),
        "utilisation_while_queued": None if util is None else round(util, 4),
        "decision_latency_ms": latency,
        # Split at jobgate's admitted-at (its clock when it decided): reacting, then writing and being seen.
        "freed_to_decided_ms": reacting,
        "decided_to_seen_ms": writing,
        "first_round_seconds": round(max(first_round) - t0, 3) if first_round else None,
        "admissions": len(admitted),
        "peak_running_per_key": peak,
        "admissions_over_limit": over_limit,
        "create_seconds": round(create_seconds, 2),
        "create_rate_per_second": round(params.jobs / create_seconds, 1),
        "operator_rss_kib_at_end": memory["rss_kib"],
        "operator_peak_rss_kib": memory["peak_rss_kib"],
        "bench_wall_seconds_after_t0": round(done - t0, 2),
    }
    targets = [
        target("decision latency p99", "≤ 50 ms", ms(latency["p99"]), _at_most(latency["p99"], 50)),
        target(
            "of which jobgate reacting (Complete seen → its admitted-at)",
            "(part of the above)",
            f"p50 {ms(reacting['p50'])}, p99 {ms(reacting['p99'])}",
            None,
        ),
        target(
            "of which the admission patch written and seen (admitted-at → seen running)",
            "(part of the above)",
            f"p50 {ms(writing['p50'])}, p99 {ms(writing['p99'])}",
            None,
        ),
        target(
            "makespan vs ideal (nominal 1 s Jobs)",
            "≤ 105 % of ideal",
            f"{makespan:.1f} s vs {ideal:.1f} s ({makespan / ideal:.2f}x)",
            makespan <= 1.05 * ideal,
        ),
        target(
            "makespan vs ideal with the measured Job run time",
            "≤ 105 % of ideal",
            f"{makespan:.1f} s vs {rounds * mean_run:.1f} s ({makespan / (rounds * mean_run):.2f}x)",
            makespan <= 1.05 * rounds * mean_run,
        ),
        target(
            "makespan vs the busiest key's own Jobs (their run times seen, over its slots)",
            "≤ 105 % of ideal",
            f"{makespan:.1f} s vs {busiest_work:.1f} s ({makespan / busiest_work:.2f}x)",
            makespan <= 1.05 * busiest_work,
        ),
        target(
            "never over the limit",
            f"≤ {params.limit} running per key",
            f"peak {peak}, {len(over_limit)} admissions over",
            peak <= params.limit and not over_limit,
        ),
        target("slot utilisation while queued", "(no target)", f"{(util or 0) * 100:.1f} %", None),
    ]
    refill = {
        "parameters": {**asdict(params), "nodes": bench.nodes},
        "results": results,
        "targets": targets,
        "series": timeline.series(changes, t0, finished_at),
        "latencies_ms": sorted(round(r.latency * 1000, 2) for r in refills),
    }
    cost = api_cost(params, len(admitted), makespan, operator_before, operator_after, apiserver_before, apiserver_after)
    return {"refill": refill, "api_cost": cost}


def api_cost(
    params: Params,
    admitted: int,
    seconds: float,
    operator_before: Counts,
    operator_after: Counts,
    apiserver_before: Counts,
    apiserver_after: Counts,
) -> Document:
    """Scenario 4: requests per admission during the refill run, as jobgate and as the apiserver count them."""
    ours = operator_after.copy()
    ours.subtract(operator_before)
    theirs = apiserver_after.copy()
    theirs.subtract(apiserver_before)
    ours_by_verb = {f"{verb} {resource}": n for (verb, resource), n in sorted(ours.items()) if n}
    theirs_by_verb = {
        f"{verb} {resource}{'/' + sub if sub else ''}": n
        for (verb, resource, sub), n in sorted(theirs.items())
        if n and resource in ("jobs", "events", "concurrencypolicies", "leases")
    }
    job_patches = ours[("patch", "jobs")]
    status_patches = ours[("patch", "concurrencypolicies")]
    events = ours[("create", "events")]
    lists = sum(n for (verb, _), n in ours.items() if verb == "list")
    apiserver_job_patches = theirs[("PATCH", "jobs", "")]
    apiserver_lists = sum(n for (verb, res, _), n in theirs.items() if verb == "LIST" and res in ("jobs",))
    per = max(admitted, 1)
    results = {
        "admissions": admitted,
        "window_seconds": round(seconds, 2),
        "operator_requests": ours_by_verb,
        "operator_requests_per_admission": {k: round(v / per, 3) for k, v in ours_by_verb.items()},
        "apiserver_requests": theirs_by_verb,
        "apiserver_job_patches_per_admission": round(apiserver_job_patches / per, 3),
        "job_writes_per_admission": round(job_patches / per, 3),
        "events_per_admission": round(events / per, 3),
        "status_writes": status_patches,
        "status_writes_per_second": round(status_patches / seconds, 2) if seconds else None,
        "list_calls_steady_state_operator": lists,
        "list_jobs_calls_steady_state_apiserver": apiserver_lists,
    }
    targets = [
        target(
            "Job writes per admission",
            "exactly 1",
            f"{job_patches / per:.3f} (jobgate) / {apiserver_job_patches / per:.3f} (apiserver PATCH jobs)",
            job_patches == admitted,
        ),
        target(
            "policy status writes",
            "coalesced (≤ 1 per policy per second)",
            f"{status_patches} in {seconds:.1f} s",
            status_patches <= math.ceil(seconds) + 1,
        ),
        target(
            "LIST calls in steady state",
            "none besides resync",
            f"{lists} (jobgate) / {apiserver_lists} LIST jobs (apiserver, all clients)",
            lists == 0,
        ),
        target("Events per admission", "(no target: Queued + Admitted by SPEC)", f"{events / per:.2f}", None),
    ]
    return {"parameters": {**asdict(params), "source": "the refill run"}, "results": results, "targets": targets}


def _at_most(value: float | int | None, limit: float) -> bool | None:
    return None if value is None else value <= limit
