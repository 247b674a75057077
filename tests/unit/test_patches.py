"""Each patch tests exactly what its decision read: refused when one of those fields changed, not otherwise."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from jobgate.core import patches
from jobgate.core.jobs import ADMITTED_AT, HOLD, PRIORITY, QUEUED_AT, QUEUED_LABEL, JobView
from tests.support.jsonpatch_server import Refused, apply

QUEUED_BODY: dict[str, Any] = {
    "metadata": {
        "uid": "u1",
        "resourceVersion": "42",
        "name": "j",
        "namespace": "ns",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": {"app": "x", QUEUED_LABEL: "true"},
        "annotations": {"x": "y", QUEUED_AT: "2026-01-01T00:00:00.000000Z", PRIORITY: "3"},
    },
    "spec": {"suspend": True},
    "status": {},
}
RUNNING_BODY: dict[str, Any] = {
    **QUEUED_BODY,
    "metadata": {**QUEUED_BODY["metadata"], "labels": {"app": "x"}, "annotations": {"x": "y"}},
    "spec": {"suspend": False},
}

Decision = Callable[[JobView], patches.JsonPatch]
ADMIT: Decision = lambda job: patches.admit(job, now=0.0)  # noqa: E731
RESUSPEND: Decision = lambda job: patches.resuspend(job, now=0.0)  # noqa: E731
DECISIONS = [(ADMIT, QUEUED_BODY), (patches.release, QUEUED_BODY), (RESUSPEND, RUNNING_BODY)]
IDS = ["admit", "release", "resuspend"]


@pytest.mark.parametrize(("decide", "body"), DECISIONS, ids=IDS)
def test_a_patch_applies_when_only_the_status_and_version_changed(decide: Decision, body: dict[str, Any]) -> None:
    view = JobView.from_body(body)
    later = _set(_set(body, "/status/active", 0), "/metadata/resourceVersion", "99")
    apply(later, decide(view))


@pytest.mark.parametrize(("decide", "body"), DECISIONS, ids=IDS)
@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("/metadata/uid", "other"),
        ("/metadata/labels", {"app": "y"}),
        ("/metadata/labels", None),
        ("/spec/managedBy", "kueue.x-k8s.io/multikueue"),
        (f"/metadata/annotations/{HOLD.replace('/', '~1')}", "true"),
        (f"/metadata/annotations/{PRIORITY.replace('/', '~1')}", "9"),
        (f"/metadata/annotations/{ADMITTED_AT.replace('/', '~1')}", "2026-01-01T00:00:01.000000Z"),
        (f"/metadata/annotations/{QUEUED_AT.replace('/', '~1')}", "2026-01-01T00:00:05.000000Z"),
    ],
    ids=["uid", "labels", "no-labels", "managedBy", "hold", "priority", "admitted-at", "queued-at"],
)
def test_a_patch_is_refused_when_a_field_the_decision_read_changed(
    decide: Decision, body: dict[str, Any], path: str, value: Any
) -> None:
    view = JobView.from_body(body)
    with pytest.raises(Refused):
        apply(_set(body, path, value), decide(view))


def _set(body: dict[str, Any], pointer: str, value: Any) -> dict[str, Any]:
    *parents, last = [p.replace("~1", "/") for p in pointer.strip("/").split("/")]
    result = copy.deepcopy(body)
    node = result
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return result


def test_admit_and_release_are_refused_once_the_job_runs() -> None:
    view = JobView.from_body(QUEUED_BODY)
    for decide in (ADMIT, patches.release):
        with pytest.raises(Refused):
            apply(_set(QUEUED_BODY, "/spec/suspend", False), decide(view))


def test_every_field_of_the_view_says_how_the_patches_guard_it() -> None:
    assert {f.name for f in dataclasses.fields(JobView)} == set(patches.GUARDED)


def test_admit_unsuspends_records_when_and_leaves_the_queue() -> None:
    result = apply(QUEUED_BODY, ADMIT(JobView.from_body(QUEUED_BODY)))
    assert result["spec"]["suspend"] is False
    assert result["metadata"]["annotations"][ADMITTED_AT] == "1970-01-01T00:00:00.000000Z"
    assert result["metadata"]["labels"] == {"app": "x"}


def test_admit_creates_the_annotations_map_when_there_is_none() -> None:
    bare = _set(QUEUED_BODY, "/metadata/annotations", None)
    result = apply(bare, ADMIT(JobView.from_body(bare)))
    assert ADMITTED_AT in result["metadata"]["annotations"]


def test_resuspend_marks_the_job_as_queued_by_jobgate() -> None:
    result = apply(RUNNING_BODY, RESUSPEND(JobView.from_body(RUNNING_BODY)))
    assert result["spec"]["suspend"] is True
    assert QUEUED_AT in result["metadata"]["annotations"]
    assert result["metadata"]["labels"] == {"app": "x", QUEUED_LABEL: "true"}


def test_resuspend_creates_the_labels_map_when_there_is_none() -> None:
    bare = _set(RUNNING_BODY, "/metadata/labels", None)
    result = apply(bare, RESUSPEND(JobView.from_body(bare)))
    assert result["metadata"]["labels"] == {QUEUED_LABEL: "true"}


def test_release_unsuspends_and_leaves_the_queue() -> None:
    result = apply(QUEUED_BODY, patches.release(JobView.from_body(QUEUED_BODY)))
    assert result["spec"]["suspend"] is False
    assert result["metadata"]["labels"] == {"app": "x"}
