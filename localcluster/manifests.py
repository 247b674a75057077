"""Manifests of ConcurrencyPolicies and of Jobs that kwok runs on the local control plane (tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jobgate.core.jobs import QUEUED_LABEL

COMPLETE_DELAY = "pod-complete.stage.kwok.x-k8s.io/delay"
FAIL = "localcluster.jobgate.dev/fail"


def policy_manifest(
    name: str, match: Mapping[str, str], key_labels: Sequence[str], max_concurrent: int, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "jobgate.dev/v1alpha1",
        "kind": "ConcurrencyPolicy",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": dict(match)},
            "keyLabels": list(key_labels),
            "maxConcurrent": max_concurrent,
            **spec,
        },
    }


def job_manifest(
    name: str,
    labels: Mapping[str, str],
    *,
    suspend: bool = True,
    runs_for: str = "1s",
    fail: bool = False,
    annotations: Mapping[str, str] | None = None,
    queued_mark: bool | None = None,
) -> dict[str, Any]:
    """A Job whose pod kwok runs for `runs_for`, then completes (or fails).

    A suspended Job carries jobgate's queued mark (the label), as a user who creates
    Jobs without the webhook writes them, unless `queued_mark` is False: then it is
    a Job its owner suspended, which jobgate leaves alone.
    """
    if queued_mark if queued_mark is not None else suspend:
        labels = {**labels, QUEUED_LABEL: "true"}
    pod_annotations = {COMPLETE_DELAY: runs_for}
    if fail:
        pod_annotations[FAIL] = "true"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": dict(labels), "annotations": dict(annotations or {})},
        "spec": {
            "suspend": suspend,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": dict(labels), "annotations": pod_annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "work", "image": "busybox"}],
                },
            },
        },
    }
