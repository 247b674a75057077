"""The policy status: computed from the cache, written only when it changed, at most once per tick."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from jobgate.core import admission
from jobgate.core.policy import (
    CLUSTER_PLURAL,
    MAX_BUSIEST_KEYS,
    PLURAL,
    ConcurrencyPolicy,
    Condition,
    KeyCount,
    PolicyStatus,
)
from jobgate.core.timestamps import format_kubernetes_time
from jobgate.engine.cache import JobCache
from jobgate.telemetry.metrics import Metrics, policy_queue

log = logging.getLogger("jobgate.status")
FAILURE_LOG_SECONDS = 60.0


class StatusApi(Protocol):
    async def patch_policy_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...


def policy_status(
    policy: ConcurrencyPolicy,
    counts: Mapping[admission.Key, admission.KeyCounts],
    previous_ready: Condition | None,
    now: float,
) -> PolicyStatus:
    """The status of a policy from its (running, queued) per key."""
    busiest = admission.busiest_first(counts)
    active = dict(busiest)
    paused = policy.spec.maxConcurrent == 0
    ready = Condition(
        type="Ready",
        status="True",
        reason="Paused" if paused else "Reconciled",
        message="maxConcurrent is 0: no Job is admitted until it is raised"
        if paused
        else f"admitting up to {policy.spec.maxConcurrent} Job(s) per key{shapes_note(policy)}",
        lastTransitionTime=(
            previous_ready.lastTransitionTime
            if previous_ready is not None and previous_ready.status == "True"
            else format_kubernetes_time(now)
        ),
    )
    return PolicyStatus(
        observedGeneration=policy.generation,
        running=sum(running for running, _ in active.values()),
        queued=sum(queued for _, queued in active.values()),
        keys=len(active),
        busiestKeys=[
            KeyCount(
                key=admission.key_dict(policy, key),
                running=running,
                queued=queued,
                maxConcurrent=policy.limit_for(key) if policy.has_own_limit(key) else None,
            )
            for key, (running, queued) in busiest[:MAX_BUSIEST_KEYS]
        ],
        conditions=[ready],
    )


def with_conditions(
    status: PolicyStatus, extra: list[Condition], previous: PolicyStatus | None, now: float
) -> PolicyStatus:
    """`status` with more conditions; each keeps its lastTransitionTime while its status stays the same."""
    if not extra:
        return status
    before = {c.type: c for c in previous.conditions} if previous is not None else {}
    stamped = [
        c.model_copy(
            update={
                "lastTransitionTime": before[c.type].lastTransitionTime
                if c.type in before and before[c.type].status == c.status
                else format_kubernetes_time(now)
            }
        )
        for c in extra
    ]
    return status.model_copy(update={"conditions": [*status.conditions, *stamped]})


def shapes_note(policy: ConcurrencyPolicy) -> str:
    """What spec.limits and spec.maxQueued add to the Ready message: ", 2 key(s) with their own limit; ..."""
    spec = policy.spec
    note = " across the namespaces namespaceSelector selects" if policy.cluster_scoped else ""
    note += f", {len(spec.limits)} key(s) with their own limit" if spec.limits else ""
    if spec.maxQueued is not None:
        note += f"; at most {spec.maxQueued} queued per key (overflow: {spec.queue_overflow})"
    return note


class StatusWriter:
    def __init__(self, api: StatusApi, clock: Any) -> None:
        self.api = api
        self.clock = clock
        self.dirty = True
        self.written: dict[admission.PolicyRef, PolicyStatus] = {}
        self._forbidden_reported = False
        self._last_failure_log = float("-inf")

    def mark_dirty(self) -> None:
        self.dirty = True

    def _report_failure(self, policy: ConcurrencyPolicy, error: Exception) -> None:
        """Say why a status was not written: a 403 once (RBAC will not fix itself), others once a minute."""
        forbidden = getattr(error, "status", None) == 403
        now = self.clock()
        if forbidden and self._forbidden_reported:
            return
        if not forbidden and now - self._last_failure_log < FAILURE_LOG_SECONDS:
            return
        self._forbidden_reported |= forbidden
        self._last_failure_log = now
        plural = CLUSTER_PLURAL if policy.cluster_scoped else PLURAL
        log.warning(
            "could not write the status of %s: %s%s",
            policy.title,
            error,
            f" (jobgate needs patch on {plural}/status)" if forbidden else "; retrying",
        )

    async def write(self, cache: JobCache, assumed: Collection[str], metrics: Metrics) -> None:
        """Write each policy's status from the term's Jobs (`cache`) and the admissions it assumes.

        The counts come from the term's planner, which keeps them per key as events come: a
        write costs the policies' keys, not the tracked Jobs (a tally of 100,000 Jobs here
        would hold the event loop for a tenth of a second, every tick).
        """
        if not self.dirty or not cache.primed:
            return
        self.dirty = False
        planner = cache.follow_policies()
        planner.sync_assumed(assumed)
        policies = list(cache.policies.policies.values())
        now = self.clock()
        for policy in policies:
            ref = (policy.namespace, policy.name)
            counts = planner.key_counts(ref)
            previous = self.written.get(ref)
            previous_ready = next((c for c in previous.conditions if c.type == "Ready"), None) if previous else None
            status = policy_status(policy, counts, previous_ready, now)
            extra = [c for c in (source(policy) for source in cache.policies.condition_sources) if c is not None]
            status = with_conditions(status, extra, previous, now)
            metrics.set_jobs(policy, policy_queue(policy, counts, planner.oldest_queued_since(ref)))
            if status == previous:
                continue
            try:
                await self.api.patch_policy_status(policy.namespace, policy.name, status.model_dump(exclude_none=True))
                self.written[ref] = status
            except Exception as e:
                self.dirty = True  # try again on the next tick
                self._report_failure(policy, e)
        alive = set(cache.policies.policies)
        metrics.forget_policies_except(alive)
        self.written = {ref: s for ref, s in self.written.items() if ref in alive}
