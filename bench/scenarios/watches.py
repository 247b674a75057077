"""Scenario 7. Watches: thousands of policies in one namespace, and the watch connections they cost.

One namespace holds `policies` policies, one per customer (`app=export,
customer=cNNNN`, `maxConcurrent: 1`: every one a distinct selector), and a few
Jobs for some customers. Before bounded watches the operator held one LIST+WATCH
per distinct selector: `policies` + 1 connections. It is started, and measured
from outside: the watches on Jobs it holds (the apiserver's own gauge of
long-running requests, over what was there before it started), the Jobs its
LISTs returned, how long until its first admission and until every Job ran, and
its memory.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.environment import process_memory_kib
from bench.harness import Bench, Request, operator_pid
from bench.scenarios import Document, target
from jobgate.core.policy import GROUP, PLURAL, VERSION, ConcurrencyPolicy
from jobgate.engine import watches
from localcluster.manifests import job_manifest, policy_manifest

TARGET_STREAMS = watches.MOST_POLICY_STREAMS + 1


@dataclass(frozen=True)
class Params:
    policies: int = 5000
    customers_with_jobs: int = 50
    jobs_per_customer: int = 2
    create_concurrency: int = 16
    timeout_seconds: float = 600.0

    @classmethod
    def tiny(cls) -> Params:
        return cls(policies=40, customers_with_jobs=4, timeout_seconds=120.0)


def job_watches(metrics_text: str) -> int:
    """WATCH requests on Jobs the apiserver is serving now, from every client."""
    found = 0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "apiserver_longrunning_requests" and (labels.get("verb"), labels.get("resource")) == (
                "WATCH",
                "jobs",
            ):
                found += int(sample.value)
    return found


def run(params: Params, log_dir: Path) -> dict[str, Document]:
    jobs = params.customers_with_jobs * params.jobs_per_customer
    with Bench(log_dir, running_pods=params.customers_with_jobs) as bench:
        namespace = bench.namespace("watches")
        customers = [f"c{i:05d}" for i in range(params.policies)]
        manifests = [policy_manifest(f"customer-{c}", {"app": "export", "customer": c}, [], 1) for c in customers]
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        create_seconds = bench.send_all([Request("POST", path, m) for m in manifests], params.create_concurrency)
        # Jobs of customers spread over the policies, and some that no policy governs.
        with_jobs = customers[:: max(1, params.policies // params.customers_with_jobs)][: params.customers_with_jobs]
        job_manifests = [
            job_manifest(f"export-{c}-{n}", {"app": "export", "customer": c})
            for c in with_jobs
            for n in range(params.jobs_per_customer)
        ]
        job_manifests += [job_manifest(f"ungoverned-{n}", {"app": "other"}) for n in range(jobs)]
        bench.create_jobs(namespace, job_manifests, params.create_concurrency)

        governed = [m["metadata"]["name"] for m in job_manifests[:jobs]]
        with bench.watch(namespace) as watch:
            for c in with_jobs:  # the watch checks limits for the policies that have Jobs
                watch.govern(_as_policy(manifests[customers.index(c)], namespace))
            # Every client's Job watches (the controller-manager's, this benchmark's) before the operator's.
            before = job_watches(bench.access.kubectl("get", "--raw", "/metrics"))
            listed_before = bench.apiserver_listed_jobs()
            operator = bench.operator(namespace)
            started = time.monotonic()
            operator.start(timeout=params.timeout_seconds)
            healthy = time.monotonic() - started
            watch.wait_for(
                lambda w: w.finished(*governed), f"all {jobs} governed Jobs to finish", params.timeout_seconds
            )
            all_ran = time.monotonic() - started
            with watch.changed:
                over_limit = list(watch.admitted_over_limit)
            held = job_watches(bench.access.kubectl("get", "--raw", "/metrics")) - before
            listed = bench.apiserver_listed_jobs() - listed_before
            memory = process_memory_kib(operator_pid(operator))
        operator.stop()

    policies = [_as_policy(m, namespace) for m in manifests]
    unbounded = len(watches.wanted(policies, [namespace], None, per_namespace=10**9, most=10**9))
    bounded = watches.wanted(policies, [namespace], None)
    results = {
        "policies": params.policies,
        "governed_jobs": jobs,
        "ungoverned_jobs": jobs,
        "job_watches_held_by_the_operator": held,
        "streams_wanted": sorted(str(s) for s in bounded),
        "streams_without_bounds": unbounded,
        "jobs_returned_by_lists": listed,
        "seconds_until_healthy": round(healthy, 2),
        "seconds_until_every_job_ran": round(all_ran, 2),
        "policy_create_seconds": round(create_seconds, 2),
        "operator_rss_kib": memory["rss_kib"],
        "operator_peak_rss_kib": memory["peak_rss_kib"],
        "admissions_over_limit": over_limit,
    }
    targets = [
        target(
            f"Job watches held with {params.policies:,} policies",
            f"bounded (≤ {TARGET_STREAMS}, whatever the policies)",
            f"{held} (one per distinct selector would be {unbounded})",
            held <= TARGET_STREAMS,
        ),
        target(
            "never over the limit", "≤ 1 running per customer", f"{len(over_limit)} admissions over", not over_limit
        ),
    ]
    return {"watches": {"parameters": asdict(params), "results": results, "targets": targets}}


def _as_policy(manifest: dict[str, Any], namespace: str) -> ConcurrencyPolicy:
    meta = {"namespace": namespace, "uid": "-", "creationTimestamp": "2026-01-01T00:00:00Z"}
    return ConcurrencyPolicy.from_body({**manifest, "metadata": {**manifest["metadata"], **meta}})
