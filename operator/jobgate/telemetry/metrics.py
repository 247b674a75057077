"""Prometheus metrics. Labels are bounded: per policy at most, never per key value.

A policy's labels are ``policy_namespace`` and ``policy``: never ``namespace``,
which Prometheus's Kubernetes discovery (and a ServiceMonitor) sets to the
namespace of the scraped pod, and which would overwrite it.
"""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import ParamSpec, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from jobgate.core import admission
from jobgate.core.policy import ConcurrencyPolicy

WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
POLICY_LABELS = ("policy_namespace", "policy")
# What the webhook answers: suspended (a policy governs the Job), untouched, unavailable (refused: not ready).
WEBHOOK_RESULTS = ("suspended", "untouched", "unavailable", "rejected")

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class PolicyQueue:
    """What the leader last saw of one policy's queue."""

    running: int
    queued: int
    with_free_slot: int  # queued Jobs whose key has a free slot under this policy
    oldest_queued_since: float | None  # epoch seconds: queued-at (else creation) of the longest-waiting queued Job


def policy_queue(
    policy: ConcurrencyPolicy, counts: Mapping[admission.Key, admission.KeyCounts], oldest_queued_since: float | None
) -> PolicyQueue:
    """The per-policy figures from its (running, queued) per key, and when its longest-waiting Job was queued."""
    return PolicyQueue(
        running=sum(running for running, _ in counts.values()),
        queued=sum(queued for _, queued in counts.values()),
        with_free_slot=sum(
            min(max(0, policy.limit_for(key) - running), queued) for key, (running, queued) in counts.items()
        ),
        oldest_queued_since=oldest_queued_since,
    )


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        r = self.registry
        if registry is None:  # the default collectors, as the default registry has them
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.jobs = Gauge(
            "jobgate_jobs", "Governed Jobs by state (running or queued)", [*POLICY_LABELS, "state"], registry=r
        )
        self.admissions = Counter(
            "jobgate_admissions", "Jobs admitted (unsuspended) by jobgate", POLICY_LABELS, registry=r
        )
        self.queue_wait = Histogram(
            "jobgate_queue_wait_seconds",
            "Time from queued to admitted",
            POLICY_LABELS,
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.decision_latency = Histogram(
            "jobgate_decision_latency_seconds",
            "Time from the event that made an admission possible to the admission patch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.api_requests = Counter(
            "jobgate_api_requests",
            "Kubernetes API requests made by jobgate",
            ["verb", "resource", "code"],
            registry=r,
        )
        self.leader = Gauge("jobgate_leader", "1 while this replica holds the leader Lease and admits", registry=r)
        self.evictions = Counter(
            "jobgate_evictions",
            "Queued Jobs deleted because newer ones filled their key's queue (overflow: ReplaceOldest)",
            POLICY_LABELS,
            registry=r,
        )
        self.webhook_requests = Counter(
            "jobgate_webhook_requests", "Job CREATE admission reviews answered", ["result"], registry=r
        )
        for result in WEBHOOK_RESULTS:  # at 0 from the start, so that alerts on their rate see them
            self.webhook_requests.labels(result)
        self.webhook_duration = Histogram(
            "jobgate_webhook_duration_seconds",
            "Time jobgate took to answer a Job CREATE admission review (the API server waits as long, and more)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        build = Gauge(
            "jobgate_build_info",
            "Always 1: the jobgate version and Python that this process runs",
            ["version", "python_version"],
            registry=r,
        )
        build.labels(_version(), platform.python_version()).set(1)
        self._queues: dict[tuple[str, str], PolicyQueue] = {}
        r.register(_LeaderQueues(self))

    def admitted(self, policy: ConcurrencyPolicy, waited: float) -> None:
        self.admissions.labels(policy.namespace, policy.name).inc()
        self.queue_wait.labels(policy.namespace, policy.name).observe(waited)

    def evicted(self, policy: ConcurrencyPolicy) -> None:
        self.evictions.labels(policy.namespace, policy.name).inc()

    def set_jobs(self, policy: ConcurrencyPolicy, queue: PolicyQueue) -> None:
        """The policy's figures (`policy_queue`); its oldest queued Job's age counts at each scrape."""
        self._queues[(policy.namespace, policy.name)] = queue
        self.jobs.labels(policy.namespace, policy.name, "running").set(queue.running)
        self.jobs.labels(policy.namespace, policy.name, "queued").set(queue.queued)

    def forget_policies_except(self, alive: set[tuple[str, str]]) -> None:
        """Drop the series of deleted policies, so that dashboards do not show ghosts."""
        for namespace, name in set(self._queues) - alive:
            for state in ("running", "queued"):
                self.jobs.remove(namespace, name, state)
            del self._queues[(namespace, name)]

    def timed_webhook(self, handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """Observe how long each call of an async webhook handler takes, refusals included."""

        @functools.wraps(handler)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await handler(*args, **kwargs)
            finally:
                self.webhook_duration.observe(time.perf_counter() - started)

        return timed

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


class _LeaderQueues:
    """Per-policy queue figures that age between status writes, and only while this replica leads.

    A replica that stopped leading keeps no view of the Jobs: were it to go on
    exporting what it saw last, its oldest queued Job would age forever.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        oldest = GaugeMetricFamily(
            "jobgate_queued_oldest_age_seconds",
            "Seconds that the policy's longest-waiting queued Job has waited (since queued-at, else creation); "
            "0 when nothing is queued. Rising while Jobs fit (jobgate_queued_with_free_slot > 0): a stuck queue",
            labels=POLICY_LABELS,
        )
        fitting = GaugeMetricFamily(
            "jobgate_queued_with_free_slot",
            "Queued Jobs whose key has a free slot under this policy: jobgate admits them at once, unless "
            "another policy that governs them is full",
            labels=POLICY_LABELS,
        )
        if _leading(self.metrics):
            now = self.metrics.clock()
            for (namespace, name), queue in sorted(self.metrics._queues.items()):
                since = queue.oldest_queued_since
                oldest.add_metric([namespace, name], 0.0 if since is None else max(0.0, now - since))
                fitting.add_metric([namespace, name], queue.with_free_slot)
        return [oldest, fitting]


def _leading(metrics: Metrics) -> bool:
    return any(s.value == 1 for family in metrics.leader.collect() for s in family.samples)


def _version() -> str:
    try:
        return version("jobgate")
    except PackageNotFoundError:
        return "unknown"
