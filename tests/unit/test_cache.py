"""The cache keeps the newest state of each Job, whatever order LISTs and watch events arrive in."""

from __future__ import annotations

import dataclasses

from jobgate.cache import ClusterCache
from jobgate.jobs import JobView


def view(uid: str, rv: int, *, suspended: bool = True, namespace: str = "ns") -> JobView:
    return JobView(
        uid=uid,
        namespace=namespace,
        name=uid,
        labels={},
        resource_version=rv,
        created=0.0,
        suspended=suspended,
        finished=False,
        held=False,
    )


def test_an_older_event_never_overwrites_a_newer_state() -> None:
    cache = ClusterCache()
    cache.put_job(view("a", 10, suspended=False))
    assert cache.put_job(view("a", 9, suspended=True)) is None
    assert cache.jobs["a"].suspended is False


def test_a_deleted_job_is_not_revived_by_a_late_event() -> None:
    cache = ClusterCache()
    cache.put_job(view("a", 5))
    cache.delete_job("a", 7)
    assert cache.put_job(view("a", 6)) is None
    assert "a" not in cache.jobs


def test_a_list_removes_jobs_that_vanished_during_a_watch_gap() -> None:
    cache = ClusterCache()
    cache.put_job(view("stale", 5))
    cache.put_job(view("kept", 6))
    gone = cache.replace_jobs([view("kept", 6)], list_version=20)
    assert [j.uid for j in gone] == ["stale"]
    assert set(cache.jobs) == {"kept"}


def test_a_list_does_not_remove_jobs_newer_than_itself() -> None:
    cache = ClusterCache()
    cache.put_job(view("born-after-the-list", 30))
    assert cache.replace_jobs([], list_version=20) == []
    assert "born-after-the-list" in cache.jobs


def test_a_namespaced_list_only_judges_its_own_namespace() -> None:
    cache = ClusterCache()
    cache.put_job(view("elsewhere", 5, namespace="other"))
    cache.replace_jobs([], list_version=20, namespace="ns")
    assert "elsewhere" in cache.jobs


def test_put_reports_the_replaced_view_only_on_change() -> None:
    cache = ClusterCache()
    first = view("a", 1)
    assert cache.put_job(first) == first
    newer = dataclasses.replace(first, resource_version=2, suspended=False)
    assert cache.put_job(newer) == first
    assert cache.put_job(newer) is None
