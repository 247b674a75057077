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
