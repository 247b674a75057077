"""Bounded queues with overflow ReplaceOldest: delete the queued Jobs that newer ones push out.

The pure core decides which (`admission.plan(...).evict`); this is the write. The
deletion carries the uid and resourceVersion the decision saw as preconditions,
so it loses any race with an admission: a Job that started meanwhile is newer,
and the API server refuses to delete it. Running Jobs are never deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from jobgate.core import admission
from jobgate.core.jobs import JobView
from jobgate.telemetry.metrics import Metrics

log = logging.getLogger("jobgate.engine")


class DeletingApi(Protocol):
    async def delete_job(self, job: JobView) -> bool:
        """Delete the Job at the version given; False when it is gone or changed since."""
        ...


Post = Callable[[JobView, str, str, str], None]  # (job, type, reason, message): an Event, best effort
# refused: gone, or changed since the decision (e.g. admitted, or only its status written); failed: unknown.
Outcome = Literal["deleted", "refused", "failed"]


def why(governors: Sequence[admission.Governance]) -> str:
    """The Event's message: which policy's queue, for which key, holds how many."""
    bounded = [g for g in governors if g.policy.spec.replaces_oldest]
    where = "; ".join(
        f"policy {g.policy.name} keeps at most {g.policy.spec.maxQueued} queued Job(s)"
        f"{admission.for_key(g.policy, g.key)}"
        for g in bounded
    )
    return f"Deleted from the queue by jobgate: {where} (overflow: ReplaceOldest), and newer Jobs are queued"


async def evict(
    api: DeletingApi,
    job: JobView,
    governors: Sequence[admission.Governance],
    metrics: Metrics,
    post: Post,
    then: Callable[[JobView, Outcome], None],
) -> None:
    """Delete one queued Job that a full ReplaceOldest queue pushed out, and say so in an Event.

    `then` hears the outcome, so that a refused or failed deletion is decided again.
    """
    try:
        deleted = await api.delete_job(job)
    except Exception:
        log.exception("deleting Job %s/%s from its full queue failed", job.namespace, job.name)
        then(job, "failed")
        return
    if not deleted:
        then(job, "refused")
        return
    log.info("deleted queued Job %s/%s: its queue was full", job.namespace, job.name)
    for gov in governors:
        if gov.policy.spec.replaces_oldest:
            metrics.evicted(gov.policy)
    post(job, "Warning", "Replaced", why(governors))
    then(job, "deleted")
