"""The admission patch against the real API server: absent annotations tested as null, and the write timeout."""

from __future__ import annotations

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from jobgate.core import patches
from jobgate.core.jobs import HOLD, JobView
from localcluster.access import ClusterAccess
from localcluster.manifests import job_manifest

pytestmark = pytest.mark.cluster


def test_the_api_server_applies_an_admission_decided_on_absent_annotations(
    cluster: ClusterAccess, namespace: str
) -> None:
    client = cluster.api_client()
    batch = kubernetes.client.BatchV1Api(client)
    created = client.sanitize_for_serialization(
        batch.create_namespaced_job(namespace, job_manifest("plain", {"app": "p"}))
    )
    view = JobView.from_body(created)
    # The Job controller writes the status meanwhile: a new resourceVersion that changes nothing decided.
    batch.patch_namespaced_job_status("plain", namespace, {"status": {"active": 0}})
    admitted = batch.patch_namespaced_job(
        "plain", namespace, patches.admit(view, now=0.0), _content_type="application/json-patch+json"
    )
    assert admitted.spec.suspend is False


def test_the_api_server_refuses_an_admission_once_a_hold_was_added(cluster: ClusterAccess, namespace: str) -> None:
    client = cluster.api_client()
    batch = kubernetes.client.BatchV1Api(client)
    created = client.sanitize_for_serialization(
        batch.create_namespaced_job(namespace, job_manifest("held-later", {"app": "p"}))
    )
    view = JobView.from_body(created)
    batch.patch_namespaced_job("held-later", namespace, {"metadata": {"annotations": {HOLD: "true"}}})
    with pytest.raises(ApiException) as refused:
        batch.patch_namespaced_job(
            "held-later", namespace, patches.admit(view, now=0.0), _content_type="application/json-patch+json"
        )
    assert refused.value.status == 422
    assert batch.read_namespaced_job("held-later", namespace).spec.suspend is True
