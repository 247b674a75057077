"""The metrics that alerting relies on, from a Metrics object fed as the status writer feeds it."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobgate.core import admission
from jobgate.core.incremental import IncrementalPlanner
from jobgate.telemetry.metrics import Metrics, policy_queue
from tests.support.views import job, policy

EXPORTS = policy("exports", {"app": "export"}, ["customer"], 1)
JOBS = [
    job("run-a", {"app": "export", "customer": "a"}, suspended=False, admitted=True),
    job("wait-a", {"app": "export", "customer": "a"}, created=100, queued_at=120),
    job("wait-b1", {"app": "export", "customer": "b"}, created=200),
    job("wait-b2", {"app": "export", "customer": "b"}, created=300),
]


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def fed(clock: Clock) -> Metrics:
    metrics = Metrics(clock=clock)
    planner = IncrementalPlanner([EXPORTS], JOBS)
    ref = admission.policy_ref(EXPORTS)
    metrics.set_jobs(EXPORTS, policy_queue(EXPORTS, planner.key_counts(ref), planner.oldest_queued_since(ref)))
    return metrics


LABELS = (("policy", "exports"), ("policy_namespace", "billing"))


def test_the_oldest_queued_age_grows_between_status_writes() -> None:
    clock = Clock()
    metrics = fed(clock)
    metrics.leader.set(1)
    assert scrape(metrics)[("jobgate_queued_oldest_age_seconds", LABELS)] == 1000 - 120  # queued-at beats creation
    clock.now = 1600.0
    assert scrape(metrics)[("jobgate_queued_oldest_age_seconds", LABELS)] == 1600 - 120
    # b has a free slot for one of its two queued Jobs; a is full.
    assert scrape(metrics)[("jobgate_queued_with_free_slot", LABELS)] == 1
    assert scrape(metrics)[("jobgate_jobs", (*LABELS, ("state", "queued")))] == 3


def test_only_the_leader_reports_queue_ages() -> None:
    metrics = fed(Clock())
    assert not [k for k in scrape(metrics) if k[0] == "jobgate_queued_oldest_age_seconds"]
    metrics.leader.set(1)
    metrics.forget_policies_except(set())
    assert not [k for k in scrape(metrics) if ("policy", "exports") in k[1]]


def test_build_info_and_the_default_collectors() -> None:
    names = {name for name, _ in scrape(Metrics())}
    assert "jobgate_build_info" in names
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"} <= names
    assert "python_gc_collections_total" in names


def test_webhook_answers_are_timed_refusals_included() -> None:
    metrics = Metrics()

    @metrics.timed_webhook
    async def refuse() -> None:
        raise RuntimeError("not ready")

    @metrics.timed_webhook
    async def answer(value: int) -> int:
        return value

    assert asyncio.run(answer(3)) == 3
    with pytest.raises(RuntimeError):
        asyncio.run(refuse())
    assert scrape(metrics)[("jobgate_webhook_duration_seconds_count", ())] == 2
