"""The engine's long-lived PolicyIndex remembers each Job's governance, and never answers from stale labels."""

from __future__ import annotations

import dataclasses

from jobgate.core.admission import PolicyIndex, plan
from jobgate.core.jobs import JobView
from jobgate.core.policy import ConcurrencyPolicy
from jobgate.engine.cache import JobCache, PolicyCache
from localcluster.manifests import policy_manifest
from tests.support import views


def policy(limit: int = 1) -> ConcurrencyPolicy:
    body = policy_manifest("exports", {"app": "export"}, ["customer"], limit)
    body["metadata"].update(namespace="ns", uid="p", resourceVersion="1", creationTimestamp="2026-01-01T00:00:00Z")
    return ConcurrencyPolicy.from_body(body)


def view(uid: str, labels: dict[str, str], *, rv: int = 1, suspended: bool = True, finished: bool = False) -> JobView:
    return views.job(
        uid, labels, uid=uid, rv=rv, created=float(rv), suspended=suspended, finished=finished, namespace="ns"
    )


def test_governance_is_recomputed_when_labels_change() -> None:
    index = PolicyIndex([policy()])
    first = view("a", {"app": "export", "customer": "1"})
    assert [g.key for g in index.governance_of(first)] == [("1",)]
    assert index.governance_of(dataclasses.replace(first, resource_version=2)) is index.governance_of(first)

    relabeled = dataclasses.replace(first, resource_version=3, labels={"app": "export", "customer": "2"})
    assert [g.key for g in index.governance_of(relabeled)] == [("2",)]
    assert index.governance_of(dataclasses.replace(first, resource_version=4, labels={"app": "other"})) == []


def test_a_kept_index_decides_as_a_fresh_one() -> None:
    p = policy(limit=1)
    index = PolicyIndex([p])
    jobs = [view(f"q{i}", {"app": "export", "customer": str(i % 2)}, rv=i) for i in range(6)]
    assert plan([p], jobs, index=index) == plan([p], jobs)

    # The first admissions run, one Job moves to another key: decisions still match a fresh index.
    jobs[0] = dataclasses.replace(jobs[0], resource_version=10, suspended=False)
    jobs[1] = dataclasses.replace(jobs[1], resource_version=11, suspended=False)
    jobs[2] = dataclasses.replace(jobs[2], resource_version=12, labels={"app": "export", "customer": "9"})
    assert plan([p], jobs, index=index) == plan([p], jobs)
    assert [j.name for j in plan([p], jobs, index=index).admit] == ["q2"]


def test_the_cache_forgets_the_governance_of_jobs_it_drops() -> None:
    policies = PolicyCache()
    policies.put_policy(policy(), 1)
    cache = JobCache(policies)
    job = view("a", {"app": "export", "customer": "1"})
    cache.put_job(job)
    policies.policy_index.governance_of(job)
    assert "a" in policies.policy_index._known

    cache.delete_job("a", 2)
    assert "a" not in policies.policy_index._known
