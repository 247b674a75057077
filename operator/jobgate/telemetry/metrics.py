"""Prometheus metrics. Labels are bounded: per policy at most, never per key value."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from jobgate.core.policy import ConcurrencyPolicy

WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Gauge(
            "jobgate_jobs",
            "Governed Jobs by state (running or queued)",
            ["namespace", "policy", "state"],
            registry=r,
        )
        self.admissions = Counter(
            "jobgate_admissions",
            "Jobs admitted (unsuspended) by jobgate",
            ["namespace", "policy"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "jobgate_queue_wait_seconds",
            "Time from queued to admitted",
            ["namespace", "policy"],
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
            ["namespace", "policy"],
            registry=r,
        )
        self.webhook_requests = Counter(
            "jobgate_webhook_requests", "Job CREATE admission reviews answered", ["result"], registry=r
        )
        self._policies: set[tuple[str, str]] = set()

    def admitted(self, policy: ConcurrencyPolicy, waited: float) -> None:
        self.admissions.labels(policy.namespace, policy.name).inc()
        self.queue_wait.labels(policy.namespace, policy.name).observe(waited)

    def evicted(self, policy: ConcurrencyPolicy) -> None:
        self.evictions.labels(policy.namespace, policy.name).inc()

    def set_jobs(self, policy: ConcurrencyPolicy, running: int, queued: int) -> None:
        self._policies.add((policy.namespace, policy.name))
        self.jobs.labels(policy.namespace, policy.name, "running").set(running)
        self.jobs.labels(policy.namespace, policy.name, "queued").set(queued)

    def forget_policies_except(self, alive: set[tuple[str, str]]) -> None:
        """Drop the series of deleted policies, so that dashboards do not show ghosts."""
        for namespace, name in self._policies - alive:
            for state in ("running", "queued"):
                self.jobs.remove(namespace, name, state)
        self._policies &= alive

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
