"""Bounded queues with overflow ReplaceOldest: delete the queued Jobs that newer ones push out.

The pure core decides which (`admission.plan(...).evict`); this is the write. The
deletion carries the uid and resourceVersion the decision saw as preconditions,
so it loses any race with an admission: a Job that started meanwhile is newer,
and the API server refuses to delete it. Running Jobs are never deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from jobgate.core import admission
from jobgate.core.jobs import JobView
from jobgate.telemetry.metrics import Metrics

log = logging.getLogger("jobgate.engine")

# Deletes the Job at the version given: False when it is gone or changed since; raises when the
# outcome is unknown or nothing was sent. The engine's, which gates it like every write.
Delete = Callable[[JobView], Awaitable[bool]]
Post = Callable[[JobView, str, str, str], None]  # (job, type, reason, message): an Event, best effort


def why(governors: Sequence[admission.Governance]) -> str:
    """The Event's message: which policy's queue, for which key, holds how many."""
    bounded = [g for g in governors if g.policy.spec.replaces_oldest]
    where = "; ".join(
        f"{g.policy.mention} keeps at most {g.policy.spec.maxQueued} queued Job(s){admission.for_key(g.policy, g.key)}"
        for g in bounded
    )
    return f"Deleted from the queue by jobgate: {where} (overflow: ReplaceOldest), and newer Jobs are queued"


async def evict(
    delete: Delete, job: JobView, governors: Sequence[admission.Governance], metrics: Metrics, post: Post
) -> None:
    """Delete one queued Job that a full ReplaceOldest queue pushed out, and say so in an Event."""
    try:
        deleted = await delete(job)
    except Exception as e:  # decided again later: gone by then, or still over the bound
        log.warning("deleting queued Job %s/%s failed: %s", job.namespace, job.name, str(e) or type(e).__name__)
        return
    if not deleted:
        return  # gone already, or changed (admitted, held, relabeled): decided again on the change
    log.info("deleted queued Job %s/%s: its queue was full", job.namespace, job.name)
    for gov in governors:
        if gov.policy.spec.replaces_oldest:
            metrics.evicted(gov.policy)
    post(job, "Warning", "Replaced", why(governors))
