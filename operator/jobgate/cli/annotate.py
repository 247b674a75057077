"""`hold`, `unhold` and `prioritize`: set or remove one of the annotations a user may set on a Job.

Each write is a JSON patch that tests what it was decided on — the Job's uid
and the annotation's value as read — so that it never undoes a change made
meanwhile: a refused patch is read again and decided again. It needs what
`kubectl annotate` needs (get and patch on jobs), and nothing that could run
a Job past a limit: jobgate still admits held and prioritized Jobs only into
free slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jobgate.core.jobs import HOLD, PRIORITY, PRIORITY_MAX, PRIORITY_MIN

Action = Literal["hold", "unhold", "prioritize"]


@dataclass(frozen=True)
class Change:
    """What a write command did to one Job."""

    namespace: str
    name: str
    annotation: str
    before: str | None  # the annotation's value as read; None: absent
    after: str | None  # as written; None: removed
    changed: bool  # False: it already had that value, nothing was written
    note: str | None = None  # what the user may not expect, e.g. holding a Job that already runs

    @property
    def summary(self) -> str:
        """``job.batch/x held (jobgate.dev/hold: "true"; was not set)``."""
        what = f"job.batch/{self.name}"
        if not self.changed:
            return f"{what} unchanged ({self.annotation}: {_shown(self.before)})"
        verb = {HOLD: "held" if self.after is not None else "unheld", PRIORITY: "prioritized"}[self.annotation]
        now = f"{self.annotation}: {_shown(self.after)}" if self.after is not None else f"{self.annotation} removed"
        note = f"; {self.note}" if self.note else ""
        return f"{what} {verb} ({now}; was {_shown(self.before)}){note}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "annotation": self.annotation,
            "before": self.before,
            "after": self.after,
            "changed": self.changed,
            "note": self.note,
        }


@dataclass(frozen=True)
class ChangeReport:
    changes: list[Change]

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": [c.as_dict() for c in self.changes]}


def _shown(value: str | None) -> str:
    return "not set" if value is None else f'"{value}"'


def wanted(action: Action, priority: int | None = None) -> tuple[str, str | None]:
    """The annotation an action writes, and its new value (None: remove it)."""
    if action == "hold":
        return HOLD, "true"
    if action == "unhold":
        return HOLD, None
    if priority is None or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}, got {priority}")
    return PRIORITY, str(priority)


def note_for(body: Mapping[str, Any], annotation: str) -> str | None:
    """Said after the change when the Job is not queued: both annotations act on queued Jobs only."""
    status = body.get("status") or {}
    finished = any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in status.get("conditions") or ()
    )
    if finished:
        return "it has finished: this changes nothing"
    if not (body.get("spec") or {}).get("suspend"):
        what = "a hold" if annotation == HOLD else "a priority"
        return f"it is running: {what} acts only while a Job is queued"
    return None


def annotation_patch(body: Mapping[str, Any], annotation: str, value: str | None) -> list[dict[str, Any]] | None:
    """The JSON patch that takes the Job as read (``body``) to ``annotation: value``; None if it is there already.

    Every patch tests the uid and the annotation's value as read. A ``test``
    with value null passes on the API server only when the member is absent,
    which is how it tests that the annotation (or the whole map) is not there.
    """
    meta = body["metadata"]
    annotations: Mapping[str, str] | None = meta.get("annotations")
    before = (annotations or {}).get(annotation)
    if before == value:
        return None
    path = "/metadata/annotations/" + annotation.replace("~", "~0").replace("/", "~1")
    patch: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": meta["uid"]}]
    if annotations is None:
        if value is None:
            return None
        patch.append({"op": "test", "path": "/metadata/annotations", "value": None})
        patch.append({"op": "add", "path": "/metadata/annotations", "value": {annotation: value}})
        return patch
    patch.append({"op": "test", "path": path, "value": before})
    if value is None:
        patch.append({"op": "remove", "path": path})
    else:
        patch.append({"op": "add", "path": path, "value": value})  # add also replaces
    return patch
