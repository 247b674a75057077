"""The leader asks the API server only for Jobs that some policy selects, or that jobgate queued."""

from __future__ import annotations

from typing import Any

from jobgate.core.jobs import QUEUED_LABEL, JobView
from jobgate.core.policy import ConcurrencyPolicy
from jobgate.engine.watches import JobStream, wanted
from localcluster.manifests import policy_manifest
from tests.support import views


def policy(name: str, namespace: str, selector: dict[str, Any]) -> ConcurrencyPolicy:
    body = policy_manifest(name, {}, [], 1)
    body["spec"]["selector"] = selector
    meta = {"namespace": namespace, "uid": name, "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"}
    body["metadata"].update(meta)
    return ConcurrencyPolicy.from_body(body)


def job(namespace: str, labels: dict[str, str]) -> JobView:
    return views.job("j", labels, uid="u", created=0.0, namespace=namespace)


EXPORTS = {"matchLabels": {"app": "export"}}


def test_one_stream_per_distinct_policy_selector_and_one_for_queued_jobs_per_scope() -> None:
    streams = wanted(
        [
            policy("exports", "a", EXPORTS),
            policy("exports-by-region", "a", EXPORTS),  # same selector: same stream
            policy("exports", "b", EXPORTS),
            policy("nightly", "a", {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["x", "y"]}]}),
        ],
        scopes=[None],
        job_selector=None,
    )
    assert {(s.namespace, s.selector) for s in streams} == {
        (None, QUEUED_LABEL),
        ("a", "app=export"),
        ("b", "app=export"),
        ("a", "tier in (x,y)"),
    }


def test_the_job_selector_narrows_every_stream() -> None:
    streams = wanted([policy("exports", "a", EXPORTS)], scopes=["a", "b"], job_selector="team=data")
    assert {(s.namespace, s.selector) for s in streams} == {
        ("a", f"{QUEUED_LABEL},team=data"),
        ("b", f"{QUEUED_LABEL},team=data"),
        ("a", "app=export,team=data"),
    }


def test_an_empty_selector_streams_the_whole_namespace() -> None:
    (stream,) = wanted([policy("all", "a", {})], scopes=[], job_selector=None)
    assert stream.selector == ""
    assert stream.covers(job("a", {}))
    assert not stream.covers(job("b", {}))


def test_a_stream_covers_the_jobs_its_selector_sends() -> None:
    (queued, exports) = sorted(wanted([policy("exports", "a", EXPORTS)], [None], None), key=lambda s: s.namespace or "")
    assert isinstance(exports, JobStream) and exports.namespace == "a"
    assert exports.covers(job("a", {"app": "export"}))
    assert not exports.covers(job("a", {"app": "report"}))
    assert not exports.covers(job("b", {"app": "export"}))
    assert queued.covers(job("b", {QUEUED_LABEL: "true"}))
    assert not queued.covers(job("b", {"app": "export"}))


# --- bounded: the number of streams does not grow with the number of policies -----------------------


def test_past_a_few_selectors_a_namespace_gets_one_stream_filtered_by_their_union() -> None:
    policies = [
        policy(f"customer-{i}", "a", {"matchLabels": {"app": "export", "customer": f"c{i}"}}) for i in range(20)
    ]
    policies.append(policy("other-namespace", "b", EXPORTS))
    streams = wanted(policies, scopes=[None], job_selector="team=data")
    values = ",".join(sorted(f"c{i}" for i in range(20)))
    assert {(s.namespace, s.selector) for s in streams} == {
        (None, f"{QUEUED_LABEL},team=data"),
        ("a", f"app in (export),customer in ({values}),team=data"),
        ("b", "app=export,team=data"),
    }


def test_the_union_sends_every_job_a_policy_selects_and_the_engine_drops_the_rest() -> None:
    selectors: list[dict[str, Any]] = [
        {"matchLabels": {"app": "export", "tier": "batch"}},
        {"matchLabels": {"app": "report"}, "matchExpressions": [{"key": "tier", "operator": "Exists"}]},
        {"matchExpressions": [{"key": "app", "operator": "In", "values": ["export", "sync"]}]},
        *({"matchLabels": {"app": "export", "customer": f"c{i}"}} for i in range(10)),
    ]
    policies = [policy(f"p{i}", "a", s) for i, s in enumerate(selectors)]
    [stream] = [s for s in wanted(policies, scopes=["a"], job_selector=None) if s.policy_selector is not None]
    assert stream.selector == "app in (export,report,sync)"
    for labels in ({"app": "export", "tier": "batch"}, {"app": "report", "tier": "x"}, {"app": "sync"}):
        assert stream.covers(job("a", labels))
    assert not stream.covers(job("a", {"app": "other"}))


def test_selectors_that_share_nothing_stream_the_whole_namespace() -> None:
    policies = [policy(f"p{i}", "a", {"matchLabels": {f"label-{i}": "x"}}) for i in range(10)]
    [stream] = [s for s in wanted(policies, scopes=["a"], job_selector=None) if s.policy_selector is not None]
    assert stream.selector == ""


def test_five_thousand_policies_over_many_namespaces_hold_one_stream_per_scope() -> None:
    policies = [
        policy(f"customer-{i}", f"tenant-{i % 500}", {"matchLabels": {"app": "export", "customer": f"c{i}"}})
        for i in range(5000)
    ]
    streams = wanted(policies, scopes=[None], job_selector=None)
    # 500 namespaces with 10 selectors each would be 500 streams: past the bound, one for all namespaces.
    assert {(s.namespace, s.selector) for s in streams} == {(None, QUEUED_LABEL), (None, "app in (export),customer")}
    few = wanted(policies[:40], scopes=[None], job_selector=None)
    assert len(few) == 41  # below every bound: one stream per selector, as before


def cluster_policy(name: str, selector: dict[str, Any]) -> ConcurrencyPolicy:
    body = policy_manifest(name, {}, [], 1)
    body["kind"] = "ClusterConcurrencyPolicy"
    body["spec"].update(selector=selector, namespaceSelector={"matchLabels": {"tenant": "true"}})
    body["metadata"].update(uid=name, resourceVersion="1", creationTimestamp="2026-01-01T00:00:00Z")
    return ConcurrencyPolicy.from_body(body)


def test_a_cluster_policys_selector_is_streamed_in_every_scope() -> None:
    policies = [cluster_policy("per-team", {"matchExpressions": [{"key": "team", "operator": "Exists"}]})]
    everywhere = wanted([*policies, policy("exports", "a", EXPORTS)], scopes=[None], job_selector=None)
    assert {(s.namespace, s.selector) for s in everywhere} == {
        (None, QUEUED_LABEL),
        (None, "team"),
        ("a", "app=export"),
    }
    # The API server cannot select Jobs by their Namespace's labels: the stream covers every namespace's.
    (team,) = [s for s in everywhere if s.selector == "team"]
    assert team.covers(job("anywhere", {"team": "red"}))
    scoped = wanted(policies, scopes=["a", "b"], job_selector=None)
    assert {(s.namespace, s.selector) for s in scoped if s.selector == "team"} == {("a", "team"), ("b", "team")}
