"""The cache keeps the newest state of each Job, whatever order LISTs and watch events arrive in."""

from __future__ import annotations

import dataclasses

from jobgate.core.jobs import JobView
from jobgate.core.policy import ClusterPolicySpec, ConcurrencyPolicy
from jobgate.engine.cache import JobCache, PolicyCache
from tests.support import views
from tests.support.views import NS, job, policy


def view(uid: str, rv: int, *, suspended: bool = True, namespace: str = "ns") -> JobView:
    return views.job(uid, {}, uid=uid, rv=rv, created=0.0, suspended=suspended, namespace=namespace)


def test_an_older_event_never_overwrites_a_newer_state() -> None:
    cache = JobCache(PolicyCache())
    cache.put_job(view("a", 10, suspended=False))
    assert cache.put_job(view("a", 9, suspended=True)) is None
    assert cache.jobs["a"].suspended is False


def test_a_deleted_job_is_not_revived_by_a_late_event() -> None:
    cache = JobCache(PolicyCache())
    cache.put_job(view("a", 5))
    cache.delete_job("a", 7)
    assert cache.put_job(view("a", 6)) is None
    assert "a" not in cache.jobs


def test_a_list_reports_the_jobs_it_should_have_held_but_did_not() -> None:
    cache = JobCache(PolicyCache())
    cache.put_job(view("stale", 5))
    cache.put_job(view("kept", 6))
    missing = cache.apply_list([view("kept", 6)], list_version=20)
    assert [j.uid for j in missing] == ["stale"]


def test_a_list_does_not_judge_jobs_newer_than_itself() -> None:
    cache = JobCache(PolicyCache())
    cache.put_job(view("born-after-the-list", 30))
    assert cache.apply_list([], list_version=20) == []
    assert "born-after-the-list" in cache.jobs


def test_a_list_only_judges_the_jobs_it_covers() -> None:
    cache = JobCache(PolicyCache())
    cache.put_job(view("elsewhere", 5, namespace="other"))
    assert cache.apply_list([], list_version=20, covers=lambda job: job.namespace == "ns") == []


def test_a_job_relabeled_from_one_watch_into_another_survives_either_order() -> None:
    """A selector watch says DELETED, at the change's version, when a Job leaves its selector."""
    left_first = JobCache(PolicyCache())
    left_first.put_job(view("a", 5))
    left_first.delete_job("a", 9)  # left watch A's selector at version 9 ...
    assert left_first.put_job(view("a", 9)) is not None  # ... and entered watch B's
    assert "a" in left_first.jobs

    entered_first = JobCache(PolicyCache())
    entered_first.put_job(view("a", 5))
    entered_first.put_job(view("a", 9))  # watch B brought version 9 first
    assert entered_first.delete_job("a", 9) is None  # watch A's DELETED is not newer
    assert "a" in entered_first.jobs


def test_put_reports_the_replaced_view_only_on_change() -> None:
    cache = JobCache(PolicyCache())
    first = view("a", 1)
    assert cache.put_job(first) == first
    newer = dataclasses.replace(first, resource_version=2, suspended=False)
    assert cache.put_job(newer) == first
    assert cache.put_job(newer) is None


def cluster_policy(name: str, tenant: str) -> ConcurrencyPolicy:
    return ConcurrencyPolicy(
        namespace="",
        name=name,
        uid=f"uid-{name}",
        generation=1,
        created=0.0,
        spec=ClusterPolicySpec.model_validate(
            {"selector": {}, "namespaceSelector": {"matchLabels": {"tenant": tenant}}, "maxConcurrent": 1}
        ),
    )


def test_a_namespace_relabeled_into_a_cluster_policy_changes_whom_it_governs() -> None:
    cache = PolicyCache()
    heard: list[str] = []
    cache.namespace_listeners.append(heard.append)
    cache.put_policy(cluster_policy("per-team", "yes"), 1)
    red = job("red", {"team": "red"}, namespace="a")
    assert not cache.put_namespace("a", {"tenant": "no"})  # reached by nothing, before or after
    assert cache.policy_index.governance(red) == []
    assert cache.put_namespace("a", {"tenant": "yes"})
    assert [g.policy.name for g in cache.policy_index.governance(red)] == ["per-team"]
    assert not cache.put_namespace("a", {"tenant": "yes", "other": "label"})  # the same policies reach it
    assert cache.delete_namespace("a")
    assert cache.policy_index.governance(red) == []
    assert heard == ["a", "a", "a", "a"]  # every change of labels: a planner keeps them all


def test_a_list_of_cluster_policies_and_one_of_namespaced_ones_delete_only_their_own() -> None:
    cache = PolicyCache()
    cache.put_policy(cluster_policy("per-team", "yes"), 1)
    cache.put_policy(policy("exports", {"app": "x"}, [], 1), 1)
    cache.replace_policies([], list_version=5)  # every namespace's ConcurrencyPolicies: none
    assert list(cache.policies) == [("", "per-team")]
    cache.put_policy(policy("exports", {"app": "x"}, [], 1), 6)
    cache.replace_policies([], list_version=7, cluster=True)
    assert list(cache.policies) == [(NS, "exports")]
