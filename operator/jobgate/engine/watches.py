"""Which Jobs the leader asks the API server for: those a policy selects, and those jobgate queued.

Each stream is one LIST+WATCH with a server-side label selector: one per distinct
(namespace, policy selector), so that Jobs no policy could govern are never sent to
the operator at all, plus one per watched scope for the Jobs that carry jobgate's
queued label, so that a Job queued under a policy deleted while no replica led is
still found, and released.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from jobgate.core.jobs import QUEUED_LABEL, JobView
from jobgate.core.policy import ConcurrencyPolicy, LabelSelector
from jobgate.core.selectors import matches, to_label_selector_string


@dataclass(frozen=True)
class JobStream:
    namespace: str | None  # None: every namespace
    selector: str  # the server-side label selector; "" selects every Job
    # The policy selector it was made from (None for the queued-label stream): tells which cached
    # Jobs a LIST of this stream speaks for. The string above already identifies it.
    policy_selector: LabelSelector | None = field(default=None, compare=False, hash=False)

    def covers(self, job: JobView) -> bool:
        """Whether the Job, with the labels we know, belongs to what this stream sends."""
        if self.namespace is not None and job.namespace != self.namespace:
            return False
        if self.policy_selector is None:
            return QUEUED_LABEL in job.labels
        return matches(self.policy_selector, job.labels)

    def __str__(self) -> str:
        return f"Jobs in {self.namespace or 'all namespaces'} matching {self.selector or '(everything)'!r}"


def both(*selectors: str | None) -> str:
    """Label selectors joined with AND (the API's comma)."""
    return ",".join(s for s in selectors if s)


def wanted(
    policies: Iterable[ConcurrencyPolicy], scopes: Iterable[str | None], job_selector: str | None
) -> set[JobStream]:
    """The streams that bring every Job some policy governs or jobgate queued, and no other."""
    streams = {JobStream(scope, both(QUEUED_LABEL, job_selector)) for scope in scopes}
    for policy in policies:
        selector = policy.spec.selector
        streams.add(JobStream(policy.namespace, both(to_label_selector_string(selector), job_selector), selector))
    return streams
