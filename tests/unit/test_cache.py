"""The cache keeps the newest state of each Job, whatever order LISTs and watch events arrive in."""

from __future__ import annotations

import dataclasses
import random

from jobgate.core import admission
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


def per_customer(limit: int) -> ConcurrencyPolicy:
    return views.policy("per-customer", {"app": "export"}, ["customer"], limit)


def test_the_planner_a_primed_cache_keeps_decides_as_the_full_plan_over_its_jobs() -> None:
    """Whatever reaches the cache (events in any order, deletions, LISTs, policy changes),
    its planner admits exactly what `admission.plan` admits over the cache's Jobs."""
    rng = random.Random(20261202)
    for _ in range(300):
        policies = PolicyCache()
        cache = JobCache(policies)
        assumed: set[str] = set()
        version = 1
        policies.put_policy(per_customer(1), version)
        policies.put_policy(views.policy("cap", {"app": "export"}, [], 3), 0)
        policies.put_policy(cluster_policy("tenants", "yes"), 0)  # one at a time across the tenants
        for step in range(40):
            if step == 5:
                cache.prime()
            version += 1
            uid = f"j{rng.randrange(12)}"
            customer = rng.choice(["acme", "globex", "initech"])
            labels = {"app": "export", "customer": customer} if rng.random() < 0.9 else {"customer": customer}
            match rng.randrange(10):
                case 0 | 1 | 2:
                    cache.put_job(
                        views.job(
                            uid,
                            labels,
                            uid=uid,
                            rv=version - rng.randrange(3),  # some events arrive late
                            suspended=rng.random() < 0.7,
                            finished=rng.random() < 0.1,
                            created=float(rng.randrange(5)),
                        )
                    )
                case 3:
                    cache.delete_job(uid, version)
                case 4:
                    if uid in cache.jobs:
                        cache.forget_job(cache.jobs[uid])
                case 5:
                    policies.put_policy(per_customer(rng.randrange(3)), version)
                case 7:
                    policies.delete_policy((views.NS, "cap"))
                case 8:
                    policies.put_policy(views.policy("cap", {"app": "export"}, [], rng.randrange(1, 4)), version)
                case 9:  # the Namespace relabeled: the cluster policy reaches it, or not
                    policies.put_namespace(views.NS, {"tenant": rng.choice(["yes", "no"])}, version)
                case 6:
                    if uid in cache.jobs and rng.random() < 0.5:
                        assumed.add(uid)
                    else:
                        assumed.discard(uid)
            if not cache.primed:
                continue
            planner = cache.follow_policies()
            current = list(policies.policies.values())
            full = admission.plan(current, list(cache.jobs.values()), assumed, namespaces=policies.namespaces)
            incremental = planner.plan(assumed)
            assert [j.uid for j in incremental.admit] == [j.uid for j in full.admit]
            assert {j.uid for j in incremental.resuspend} == {j.uid for j in full.resuspend}
            assert {j.uid for j in incremental.release} == {j.uid for j in full.release}
            for ref in policies.policies:
                tallied = admission.tally(current, cache.jobs.values(), assumed, namespaces=policies.namespaces)[ref]
                assert planner.key_counts(ref) == {k: s.counts for k, s in tallied.items() if s.counts != (0, 0)}
        cache.close()


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
    assert not cache.put_namespace("a", {"tenant": "no"}, 1)  # reached by nothing, before or after
    assert cache.policy_index.governance(red) == []
    assert cache.put_namespace("a", {"tenant": "yes"}, 2)
    assert [g.policy.name for g in cache.policy_index.governance(red)] == ["per-team"]
    assert not cache.put_namespace("a", {"tenant": "yes", "other": "label"}, 3)  # the same policies reach it
    assert cache.delete_namespace("a", 4)
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


def test_an_older_state_of_a_namespace_never_overwrites_a_newer_one() -> None:
    """A resync's LIST of the Namespaces left before a relabel's event arrived: applied after it, it must not
    undo the relabel (a namespace taken out of a cluster policy's reach stops counting its running Jobs)."""
    cache = PolicyCache()
    cache.put_policy(cluster_policy("per-team", "yes"), 1)
    red = job("red", {"team": "red"}, namespace="a")
    assert cache.put_namespace("a", {"tenant": "yes"}, 10)  # the relabel's event
    assert cache.replace_namespaces([("a", {"tenant": "no"}, 7)], list_version=9) == []  # the older LIST
    assert cache.replace_namespaces([], list_version=9) == []  # a LIST from before the namespace was made
    assert cache.put_namespace("a", {"tenant": "no"}, 8) is False  # a read that left before the event
    assert [g.policy.name for g in cache.policy_index.governance(red)] == ["per-team"]
    assert cache.delete_namespace("a", 12)
    assert not cache.put_namespace("a", {"tenant": "yes"}, 11)  # a late event does not bring it back
    assert cache.policy_index.governance(red) == []
