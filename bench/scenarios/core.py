"""Scenario 6. Core: what one decision costs at up to a million queued Jobs, with no cluster at all.

The pure decision core alone, fed what the engine would feed it. Each
namespace holds the same mix (`Tenant`): eight per-customer policies
(`app=appN`, key `customer`, 2 at a time), a policy over four of those apps
keyed by database (40 at a time: it overlaps them, and binds), and a keyless
cap over the whole namespace, which binds in every other namespace. Each
customer key starts with `JOBS_PER_KEY` Jobs, all queued. A full namespace has
125 customers per app; smaller queues have fewer customers and databases in
the same proportions, so that every size has the same shape. Per queue length:

1. `build`: the planner made from the LIST's Job views (what the engine's cache
   holds after its first LIST; parsing the bodies is the scale scenario's);
2. `first pass`: the decision over everything; its admissions land; then the
   second pass, where the groups the first one filled learn that they are full;
3. events, in steady state: a random running Job completes and the planner
   decides (timed: *completion*), its admissions land, and a new Job arrives in
   a random key and the planner decides (timed: *arrival*), so the queue keeps
   its length;
4. for contrast, one full `admission.plan()` over the same Jobs: what every pass
   cost before.

Costs per event are this thread's CPU time (the targets), and wall-clock time
beside it: on a shared machine the latter also holds other processes' turns.
Memory per Job is the RSS this process grew by, over the Jobs tracked, at the
largest size: the views (what the cache keeps anyway) and the planner apart.
Once the views are made, once the planner is built and after the second pass,
the process freezes what it holds out of the cyclic garbage collector's reach
(`gc.freeze()`), as a long-lived process does once it has loaded its state: else
each full collection walks every tracked object again (seconds at a million),
for garbage they cannot hold.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.environment import process_memory_kib
from bench.scenarios import Document, target
from jobgate.core.admission import plan
from jobgate.core.incremental import IncrementalPlanner
from jobgate.core.jobs import JobView
from jobgate.core.policy import ConcurrencyPolicy, LabelSelector, LabelSelectorRequirement, PolicySpec

APPS = 8  # per-customer policies per namespace
OVERLAPPED_APPS = 4  # how many of them the per-database policy also governs
CUSTOMERS_PER_DATABASE = 6.25  # a full namespace: 125 customers per app over 20 databases
PER_CUSTOMER = 2
PER_DATABASE = 40
JOBS_PER_KEY = 12  # created per customer key; after the first pass about 10 stay queued
QUEUED_PER_NAMESPACE = 10_000
TARGET_P99_MS = 1.0
TARGET_BUILD_SECONDS = 10.0
TARGET_BYTES_PER_JOB = 2048


@dataclass(frozen=True)
class Params:
    queued: int = 1_000_000  # the largest size, where build time and memory are read
    sizes: str = "1000,10000,100000"  # the smaller sizes of the cost-per-event plot
    events: int = 20_000  # completions (and as many arrivals) timed at each size
    full_plan_up_to: int = 1_000_000  # the largest size at which plan() is timed for contrast
    seed: int = 14

    @classmethod
    def tiny(cls) -> Params:
        return cls(queued=2000, sizes="1000", events=200)


@dataclass(frozen=True)
class Tenant:
    """One namespace's policies and customers, scaled to a queue length."""

    namespace: str
    customers: int  # per app
    capped: bool  # whether the namespace cap binds (it is below what the customers could run)

    @property
    def databases(self) -> int:
        """As many as keep the per-database limit binding as often, whatever the namespace's size."""
        return max(1, round(self.customers / CUSTOMERS_PER_DATABASE))

    def policies(self) -> list[ConcurrencyPolicy]:
        found = [
            _policy(
                self.namespace, f"app{a}", LabelSelector(matchLabels={"app": f"app{a}"}), ["customer"], PER_CUSTOMER
            )
            for a in range(APPS)
        ]
        overlapped = [f"app{a}" for a in range(OVERLAPPED_APPS)]
        by_database = LabelSelector(
            matchExpressions=[LabelSelectorRequirement(key="app", operator="In", values=overlapped)]
        )
        found.append(_policy(self.namespace, "per-database", by_database, ["db"], PER_DATABASE))
        could_run = APPS * self.customers * PER_CUSTOMER
        cap = could_run * 3 // 4 if self.capped else could_run * 2
        found.append(_policy(self.namespace, "cap", LabelSelector(), [], cap))
        return found


def _policy(namespace: str, name: str, selector: LabelSelector, keys: list[str], limit: int) -> ConcurrencyPolicy:
    return ConcurrencyPolicy(
        namespace=namespace,
        name=name,
        uid=f"uid-{namespace}-{name}",
        generation=1,
        created=0.0,
        spec=PolicySpec(selector=selector, keyLabels=keys, maxConcurrent=limit),
    )


def tenants(queued: int) -> list[Tenant]:
    namespaces = max(2, round(queued / QUEUED_PER_NAMESPACE))  # half of them capped, at every size
    customers = max(1, round(queued / (namespaces * APPS * (JOBS_PER_KEY - PER_CUSTOMER))))
    return [Tenant(f"tenant-{n:03d}", customers, capped=n % 2 == 0) for n in range(namespaces)]


class Workload:
    """Queued Job views as a LIST would bring them, and new ones arriving later."""

    def __init__(self, tenants: list[Tenant], rnd: random.Random) -> None:
        self.tenants = tenants
        self.rnd = rnd
        self.serial = 0

    def job(self, tenant: Tenant, app: int, customer: int) -> JobView:
        self.serial += 1
        # Fresh strings per Job, as a LIST's JSON decoding makes them: memory per Job must not be flattered.
        return JobView(
            uid=f"{self.serial:08x}-0000-4000-8000-{self.rnd.getrandbits(48):012x}",
            namespace=f"{tenant.namespace}",
            name=f"export-{app}-{customer}-{self.serial}",
            labels={
                "app": f"app{app}",
                "customer": f"c{customer:05d}",
                "db": f"db{self.rnd.randrange(tenant.databases):02d}",
            },
            resource_version=self.serial,
            created=1_700_000_000.0 + self.serial,
            suspended=True,
            finished=False,
            held=False,
            priority=1 if self.rnd.random() < 0.1 else 0,
            queued_at=1_700_000_000.0 + self.serial,
            has_annotations=True,
        )

    def listed(self) -> Iterator[JobView]:
        for tenant in self.tenants:
            for app in range(APPS):
                for customer in range(tenant.customers):
                    for _ in range(JOBS_PER_KEY):
                        yield self.job(tenant, app, customer)

    def arrival(self) -> JobView:
        tenant = self.rnd.choice(self.tenants)
        return self.job(tenant, self.rnd.randrange(APPS), self.rnd.randrange(tenant.customers))


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50": round(ordered[len(ordered) // 2] * 1000, 4),
        "p99": round(ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] * 1000, 4),
        "max": round(ordered[-1] * 1000, 4),
        "mean": round(statistics.fmean(ordered) * 1000, 4),
        "count": len(ordered),
    }


def rss_bytes() -> int:
    gc.collect()
    return process_memory_kib(_self_pid())["rss_kib"] * 1024


def _self_pid() -> int:
    import os

    return os.getpid()


class Engine:
    """What the engine would keep and do around the planner: its Jobs, and admissions that land at once."""

    def __init__(self, planner: IncrementalPlanner, views: list[JobView]) -> None:
        self.planner = planner
        self.jobs = {view.uid: view for view in views}
        self.running: list[JobView] = []

    def land(self, admitted: list[JobView]) -> None:
        for view in admitted:
            unsuspended = dataclasses.replace(
                view, suspended=False, admitted_at=1.0, resource_version=view.resource_version + 1
            )
            self.planner.upsert_job(unsuspended)
            self.jobs[view.uid] = unsuspended
            self.running.append(unsuspended)

    def pick_running(self, rnd: random.Random) -> JobView:
        index = rnd.randrange(len(self.running))
        self.running[index], self.running[-1] = self.running[-1], self.running[index]
        return self.running.pop()


def measure(queued: int, params: Params, rnd: random.Random) -> dict[str, Any]:
    """Build, first passes, and timed events at one queue length."""
    population = tenants(queued)
    policies = [p for tenant in population for p in tenant.policies()]
    workload = Workload(population, rnd)
    before_views = rss_bytes()
    views = list(workload.listed())
    after_views = rss_bytes()
    # What a long-lived process does once it loaded its state (here: the LIST's views, then the
    # planner): the cyclic collector stops walking it, again and again, for garbage it cannot hold.
    gc.freeze()

    started, cpu = time.perf_counter(), time.thread_time()
    planner = IncrementalPlanner(policies, views)
    build_seconds, build_cpu_seconds = time.perf_counter() - started, time.thread_time() - cpu
    after_build = rss_bytes()
    gc.freeze()
    engine = Engine(planner, views)
    del views

    started, cpu = time.perf_counter(), time.thread_time()
    first = planner.plan()
    first_pass_seconds, first_pass_cpu_seconds = time.perf_counter() - started, time.thread_time() - cpu
    engine.land(first.admit)
    # The pass after the first: the groups that the first one filled up find out they are full.
    started = time.perf_counter()
    second = planner.plan()
    second_pass_seconds = time.perf_counter() - started
    engine.land(second.admit)
    queue_length = len(engine.jobs) - len(engine.running)
    gc.freeze()

    completions: list[float] = []  # wall clock: what a watcher would see, other processes' turns included
    completions_cpu: list[float] = []  # this thread's CPU time: what the decision itself costs
    arrivals: list[float] = []
    arrivals_cpu: list[float] = []
    admitted_per_completion: list[int] = []
    keys_read: list[int] = []  # the keys a pass looked at (Plan.running): its work, whatever the time
    for _ in range(params.events):
        # A random running Job completes: the engine sees it and decides.
        done = dataclasses.replace(engine.pick_running(rnd), finished=True)
        started, cpu = time.perf_counter(), time.thread_time()
        planner.upsert_job(done)
        decided = planner.plan()
        completions.append(time.perf_counter() - started)
        completions_cpu.append(time.thread_time() - cpu)
        admitted_per_completion.append(len(decided.admit))
        keys_read.append(len(decided.running))
        planner.remove_job(done.uid)  # the engine forgets finished Jobs
        del engine.jobs[done.uid]
        engine.land(decided.admit)
        # A new Job arrives, so that the queue keeps its length.
        new = workload.arrival()
        engine.jobs[new.uid] = new
        started, cpu = time.perf_counter(), time.thread_time()
        planner.upsert_job(new)
        decided = planner.plan()
        arrivals.append(time.perf_counter() - started)
        arrivals_cpu.append(time.thread_time() - cpu)
        engine.land(decided.admit)

    tracked = len(engine.jobs)
    result: dict[str, Any] = {
        "queued": queue_length,
        "running": len(engine.running),
        "namespaces": len(population),
        "policies": len(policies),
        "keys": sum(len(planner.key_counts((p.namespace, p.name))) for p in policies),
        "build_seconds": round(build_seconds, 3),
        "build_cpu_seconds": round(build_cpu_seconds, 3),
        "first_pass_seconds": round(first_pass_seconds, 3),
        "first_pass_cpu_seconds": round(first_pass_cpu_seconds, 3),
        "first_pass_admissions": len(first.admit),
        "second_pass_seconds": round(second_pass_seconds, 3),
        "completion_ms": percentiles_ms(completions),
        "completion_cpu_ms": percentiles_ms(completions_cpu),
        "arrival_ms": percentiles_ms(arrivals),
        "arrival_cpu_ms": percentiles_ms(arrivals_cpu),
        "admissions_per_completion": round(statistics.fmean(admitted_per_completion), 3),
        "keys_read_per_completion": {
            "mean": round(statistics.fmean(keys_read), 2),
            "p99": sorted(keys_read)[len(keys_read) * 99 // 100],
            "max": max(keys_read),
        },
        "bytes_per_job_views": round((after_views - before_views) / tracked),
        "bytes_per_job_planner": round((after_build - after_views) / tracked),
    }
    if queued <= params.full_plan_up_to:
        jobs = list(engine.jobs.values())
        started = time.perf_counter()
        full = plan(policies, jobs)
        result["full_plan_seconds"] = round(time.perf_counter() - started, 3)
        # The state after all those events, decided both ways: they must agree.
        result["full_plan_agrees"] = [j.uid for j in full.admit] == [j.uid for j in planner.plan().admit]
    gc.unfreeze()
    return result


def run(params: Params, log_dir: Path) -> dict[str, Document]:
    rnd = random.Random(params.seed)
    sizes = sorted({int(s) for s in params.sizes.split(",") if s} | {params.queued})
    by_size: dict[str, dict[str, Any]] = {}
    for queued in sizes:
        print(f"    core: {queued} queued", flush=True)
        by_size[str(queued)] = measure(queued, params, rnd)
        gc.collect()  # the next size starts from what this one freed
    largest = by_size[str(params.queued)]
    cpu, wall = largest["completion_cpu_ms"], largest["completion_ms"]
    bytes_per_job = largest["bytes_per_job_views"] + largest["bytes_per_job_planner"]
    smallest = by_size[str(sizes[0])]
    flatness = cpu["p50"] / smallest["completion_cpu_ms"]["p50"]
    targets = [
        target(
            f"decision per completion p99 at {largest['queued']:,} queued (CPU time)",
            f"≤ {TARGET_P99_MS:g} ms",
            f"{cpu['p99']:.3f} ms (p50 {cpu['p50']:.3f}, max {cpu['max']:.1f}; "
            f"wall clock p99 {wall['p99']:.3f}, max {wall['max']:.1f})",
            cpu["p99"] <= TARGET_P99_MS,
        ),
        target(
            "state built from the LIST's views (CPU time)",
            f"≤ {TARGET_BUILD_SECONDS:g} s",
            f"{largest['build_cpu_seconds']:.1f} s for {largest['queued'] + largest['running']:,} Jobs "
            f"(wall clock {largest['build_seconds']:.1f} s); then the first pass "
            f"{largest['first_pass_cpu_seconds']:.1f} s, the second {largest['second_pass_seconds']:.1f} s",
            largest["build_cpu_seconds"] <= TARGET_BUILD_SECONDS,
        ),
        target(
            "memory per tracked Job (views + planner)",
            f"≤ {TARGET_BYTES_PER_JOB / 1024:g} KiB",
            f"{bytes_per_job / 1024:.2f} KiB ({largest['bytes_per_job_planner']} B of it the planner's)",
            bytes_per_job <= TARGET_BYTES_PER_JOB,
        ),
        target(
            f"completion p50 at {largest['queued']:,} over {smallest['queued']:,} queued (CPU time)",
            "flat (a ratio near 1)",
            f"{flatness:.2f}",
            None,
        ),
    ]
    return {
        "core": {
            "parameters": asdict(params),
            "results": {"by_queue_length": by_size},
            "targets": targets,
        }
    }
