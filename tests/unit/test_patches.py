"""The admission patch tests exactly the state it was decided on, and records when."""

from __future__ import annotations

import jsonpatch  # type: ignore[import-untyped]
import pytest

from jobgate.core import patches
from jobgate.core.jobs import JobView

BODY = {
    "metadata": {"uid": "u1", "resourceVersion": "42", "name": "j", "namespace": "ns", "annotations": {"x": "y"}},
    "spec": {"suspend": True},
}


def view(**changes: object) -> JobView:
    fields: dict[str, object] = {
        "uid": "u1",
        "namespace": "ns",
        "name": "j",
        "labels": {},
        "resource_version": 42,
        "created": 0.0,
        "suspended": True,
        "finished": False,
        "held": False,
        "has_annotations": True,
    }
    fields.update(changes)
    return JobView(**fields)  # type: ignore[arg-type]


def test_admit_unsuspends_and_annotates_in_one_patch() -> None:
    result = jsonpatch.apply_patch(BODY, patches.admit(view(), now=0.0))
    assert result["spec"]["suspend"] is False
    assert result["metadata"]["annotations"] == {"x": "y", "jobgate.dev/admitted-at": "1970-01-01T00:00:00.000000Z"}


def test_admit_creates_the_annotations_map_when_there_is_none() -> None:
    body = {**BODY, "metadata": {k: v for k, v in BODY["metadata"].items() if k != "annotations"}}  # type: ignore[attr-defined]
    result = jsonpatch.apply_patch(body, patches.admit(view(has_annotations=False), now=0.0))
    assert "jobgate.dev/admitted-at" in result["metadata"]["annotations"]


@pytest.mark.parametrize(
    "changed",
    [
        {"metadata": {**BODY["metadata"], "resourceVersion": "43"}},  # type: ignore[dict-item]
        {"spec": {"suspend": False}},
        {"metadata": {**BODY["metadata"], "uid": "other"}},  # type: ignore[dict-item]
    ],
)
def test_admit_fails_when_the_job_changed_since_the_decision(changed: dict[str, object]) -> None:
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch({**BODY, **changed}, patches.admit(view(), now=0.0))


def test_resuspend_marks_the_job_as_queued_by_jobgate() -> None:
    running = {**BODY, "spec": {}}
    result = jsonpatch.apply_patch(running, patches.resuspend(view(suspended=False), now=0.0))
    assert result["spec"]["suspend"] is True
    assert "jobgate.dev/queued-at" in result["metadata"]["annotations"]
    assert result["metadata"]["labels"] == {"jobgate.dev/queued": "true"}


def test_resuspend_adds_the_queued_label_beside_existing_labels() -> None:
    labeled = {**BODY, "metadata": {**BODY["metadata"], "labels": {"app": "x"}}}  # type: ignore[dict-item]
    result = jsonpatch.apply_patch(labeled, patches.resuspend(view(labels={"app": "x"}), now=0.0))
    assert result["metadata"]["labels"] == {"app": "x", "jobgate.dev/queued": "true"}


@pytest.mark.parametrize("decision", [lambda job: patches.admit(job, now=0.0), patches.release])
def test_admit_and_release_take_the_job_out_of_the_queue_label(decision: object) -> None:
    labels = {"app": "x", "jobgate.dev/queued": "true"}
    queued = {**BODY, "metadata": {**BODY["metadata"], "labels": dict(labels)}}  # type: ignore[dict-item]
    result = jsonpatch.apply_patch(queued, decision(view(labels=labels)))  # type: ignore[operator]
    assert result["metadata"]["labels"] == {"app": "x"}
    assert result["spec"]["suspend"] is False
