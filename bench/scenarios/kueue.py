"""Scenario 8. Side by side with Kueue: the refill workload, gated by jobgate or by Kueue, on fresh control planes.

The same Jobs for every gate: `keys` keys, `jobs_per_key` Jobs each, whose pods run
`run_seconds` and request `CPU_PER_JOB`, at most `limit` running per key, all
created suspended and marked for their gate as its webhook would have marked
them (jobgate's queued label; Kueue's queue-name label). jobgate runs with one
ConcurrencyPolicy keyed by the key label; Kueue v0.17.0 (built from its Go
module, `localcluster/kueue.py`) with one ClusterQueue and LocalQueue per key,
each ClusterQueue's CPU quota holding `limit` Jobs, its Job integration only,
once with its shipped configuration and once with its client's QPS raised.

Each run starts its own control plane; gates alternate within each size. The
independent watch times everything: the makespan from the first creation to
the last completion, and the decision latency, from a completion seen to the
key's next Job seen running. CPU per admission is the gate process's CPU time
over the run, over the Jobs it admitted.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import timeline
from bench.environment import cpu_seconds
from bench.harness import Bench, wait_until
from bench.scenarios import Document, target
from jobgate.core.policy import ConcurrencyPolicy
from localcluster.build import ensure_tool
from localcluster.kueue import QUEUE_LABEL, KueueManager, KueueSettings, local_queue
from localcluster.manifests import job_manifest

LABEL, KEY = "bench", "key"
CPU_PER_JOB = "10m"
GATES = {
    "jobgate": None,
    "kueue": KueueSettings(),
    "kueue-qps": KueueSettings(qps=500.0, burst=1000),
}


@dataclass(frozen=True)
class Params:
    sizes: str = "20x10,200x10"  # keys x Jobs per key, for each table
    gates: str = "jobgate,kueue,kueue-qps"
    limit: int = 2
    run_seconds: float = 1.0
    repeats: int = 1
    create_concurrency: int = 16
    timeout_seconds: float = 900.0

    @classmethod
    def tiny(cls) -> Params:
        return cls(sizes="2x4", gates="jobgate,kueue", timeout_seconds=300.0)


def manifests(keys: int, per_key: int, gate: str, run_seconds: float) -> list[dict[str, Any]]:
    made = []
    for i in range(keys * per_key):
        key = f"k{i % keys:04d}"
        labels = {LABEL: "refill", KEY: key}
        # Marked as the gate's own webhook would have marked it on creation.
        kueue = gate.startswith("kueue")
        if kueue:
            labels[QUEUE_LABEL] = local_queue(key)
        manifest = job_manifest(f"refill-{i:05d}", labels, runs_for=f"{run_seconds:g}s", queued_mark=not kueue)
        for container in manifest["spec"]["template"]["spec"]["containers"]:
            container["resources"] = {"requests": {"cpu": CPU_PER_JOB}}  # what Kueue's quota counts
        made.append(manifest)
    return made


def run_once(params: Params, keys: int, per_key: int, gate: str, log_dir: Path) -> dict[str, Any]:
    jobs = keys * per_key
    settings = GATES[gate]
    with Bench(log_dir, running_pods=keys * params.limit) as bench:
        namespace = bench.namespace("side-by-side")
        policy = _policy(namespace, params.limit)
        kueue: KueueManager | None = None
        if settings is None:
            bench.create_policy(namespace, "refill", {LABEL: "refill"}, [KEY], params.limit)
            gate_pid = bench.operator(namespace).start().pid
        else:
            kueue = KueueManager(ensure_tool("kueue"), bench.access, log_dir / f"kueue-{namespace}", settings)
            kueue.install()
            kueue.start()
            kueue.create_queues(namespace, [f"k{k:04d}" for k in range(keys)], params.limit, CPU_PER_JOB)
            gate_pid = kueue.pid
        record = timeline.Timeline(KEY)
        try:
            with bench.watch(namespace) as watch:
                watch.govern(policy)
                watch.listeners.append(record)
                cpu_before = cpu_seconds(gate_pid)
                t0 = time.monotonic()
                bench.create_jobs(
                    namespace, manifests(keys, per_key, gate, params.run_seconds), params.create_concurrency
                )
                wait_until(
                    lambda: record.count["finished"] >= jobs,
                    f"all {jobs} Jobs to finish under {gate}",
                    params.timeout_seconds,
                    interval=0.1,
                )
                cpu = cpu_seconds(gate_pid) - cpu_before
                with watch.changed:
                    changes = list(record.changes)
                    peak = max(watch.peak.values(), default=0)
        finally:
            if kueue is not None:
                kueue.stop()
    finished_at = max(c.at for c in changes if c.after == "finished")
    started = timeline.became_running(changes)
    latency = timeline.summary([r.latency for r in timeline.refills(changes)], scale=1000)
    return {
        "gate": gate if settings is None else f"Kueue ({settings.name})",
        "makespan_seconds": round(finished_at - t0, 2),
        "ideal_seconds": -(-per_key // params.limit) * params.run_seconds,
        "decision_latency_ms": latency,
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_admission": round(cpu * 1000 / max(len(started), 1), 1),
        "admissions": len(started),
        "peak_running_per_key": peak,
    }


def run(params: Params, log_dir: Path) -> dict[str, Document]:
    gates = [g for g in params.gates.split(",") if g]
    unknown = [g for g in gates if g not in GATES]
    if unknown:
        raise ValueError(f"unknown gate(s) {unknown}: choose from {list(GATES)}")
    tables: dict[str, list[dict[str, Any]]] = {}
    for size in (s for s in params.sizes.split(",") if s):
        keys, per_key = (int(n) for n in size.split("x"))
        for _ in range(params.repeats):
            for gate in gates:  # alternating, so that a slower minute of the machine hits both
                print(f"    kueue side by side: {keys} keys x {per_key} Jobs, {gate}", flush=True)
                tables.setdefault(size, []).append(run_once(params, keys, per_key, gate, log_dir))
    over = [
        (size, row["gate"])
        for size, rows in tables.items()
        for row in rows
        if row["peak_running_per_key"] > params.limit
    ]
    targets = [
        target(
            f"{size.replace('x', ' keys x ')} Jobs: {row['gate']}",
            "(side by side)",
            f"makespan {row['makespan_seconds']} s, latency p50 {row['decision_latency_ms']['p50']} / "
            f"p99 {row['decision_latency_ms']['p99']} ms, {row['cpu_ms_per_admission']} ms CPU per admission",
            None,
        )
        for size, rows in tables.items()
        for row in rows
    ]
    targets.append(
        target("never over the limit", f"≤ {params.limit} running per key", f"{len(over)} runs over", not over)
    )
    return {
        "kueue": {
            "parameters": {**asdict(params), "cpu_per_job": CPU_PER_JOB},
            "results": {"tables": {size: rows for size, rows in tables.items()}, "markdown": markdown(tables)},
            "targets": targets,
        }
    }


def markdown(tables: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The side-by-side tables, as the README shows them."""
    lines: list[str] = []
    for size, rows in tables.items():
        keys, per_key = size.split("x")
        lines += [
            f"| {keys} keys x {per_key} Jobs | makespan | decision latency p50 / p99 | CPU per admission |",
            "| --- | --- | --- | --- |",
        ]
        for row in rows:
            latency = row["decision_latency_ms"]
            lines.append(
                f"| {row['gate']} | {row['makespan_seconds']:.1f} s | {_ms(latency['p50'])} / {_ms(latency['p99'])} | "
                f"{row['cpu_ms_per_admission']} ms |"
            )
        lines.append("")
    return lines


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"


def _policy(namespace: str, limit: int) -> ConcurrencyPolicy:
    """The watch's own view of the limit, for both gates: at most `limit` running per key."""
    body = {
        "metadata": {"namespace": namespace, "name": "refill", "uid": "-", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"selector": {"matchLabels": {LABEL: "refill"}}, "keyLabels": [KEY], "maxConcurrent": limit},
    }
    return ConcurrencyPolicy.from_body(body)
