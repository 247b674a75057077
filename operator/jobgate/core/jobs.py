"""The small view of a Job that jobgate keeps: only what decisions need, never the body."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobgate.core.timestamps import parse_timestamp

ANNOTATION_PREFIX = "jobgate.dev/"
PRIORITY = "jobgate.dev/priority"
# The priorities a user may set (`jobgate prioritize` refuses others).
PRIORITY_MIN = -1_000_000
PRIORITY_MAX = 1_000_000
HOLD = "jobgate.dev/hold"
ADMITTED_AT = "jobgate.dev/admitted-at"
QUEUED_AT = "jobgate.dev/queued-at"
# A label, so that the API server can select them: on the Jobs jobgate queued, until admitted or released.
QUEUED_LABEL = "jobgate.dev/queued"


@dataclass(frozen=True, slots=True)
class JobView:
    uid: str
    namespace: str
    name: str
    labels: Mapping[str, str]
    resource_version: int
    created: float  # creationTimestamp, seconds since the epoch
    suspended: bool  # spec.suspend is true
    finished: bool  # a Complete or Failed condition is True
    held: bool  # jobgate.dev/hold: "true"
    priority: int = 0
    admitted_at: float | None = None  # set by jobgate in the admission patch
    queued_at: float | None = None  # set by the webhook when it suspended the Job
    has_annotations: bool = False  # whether metadata.annotations exists (shapes the JSON patch)

    @property
    def running(self) -> bool:
        return not self.suspended and not self.finished

    @property
    def queued(self) -> bool:
        return self.suspended and not self.finished and not self.held

    @property
    def order(self) -> tuple[int, float, str, str]:
        """Admission order: higher priority first, then older, then by name."""
        return (-self.priority, self.created, self.namespace, self.name)

    def same_state(self, newer: JobView) -> bool:
        """Whether `newer` differs from this view in its resourceVersion only."""
        return dataclasses.replace(newer, resource_version=self.resource_version) == self

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobView:
        meta = body["metadata"]
        annotations: Mapping[str, str] = meta.get("annotations") or {}
        conditions = (body.get("status") or {}).get("conditions") or ()
        return cls(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            labels=dict(meta.get("labels") or {}),
            resource_version=int(meta.get("resourceVersion") or 0),
            created=parse_timestamp(meta["creationTimestamp"]),
            suspended=bool((body.get("spec") or {}).get("suspend")),
            finished=any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions),
            held=annotations.get(HOLD) == "true",
            priority=parse_priority(annotations.get(PRIORITY)),
            admitted_at=_optional_timestamp(annotations.get(ADMITTED_AT)),
            queued_at=_optional_timestamp(annotations.get(QUEUED_AT)),
            has_annotations="annotations" in meta and meta["annotations"] is not None,
        )


def parse_priority(text: str | None) -> int:
    """The priority annotation as an integer; absent or not an integer counts as 0."""
    if text is None:
        return 0
    try:
        return int(text.strip())
    except ValueError:
        return 0


def _optional_timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        return None
