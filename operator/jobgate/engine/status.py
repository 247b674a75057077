"""The policy status: computed from the cache, written only when it changed, at most once per tick."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

from jobgate.core import admission
from jobgate.core.policy import MAX_BUSIEST_KEYS, ConcurrencyPolicy, Condition, KeyCount, PolicyStatus
from jobgate.core.timestamps import format_kubernetes_time
from jobgate.engine.cache import ClusterCache
from jobgate.telemetry.metrics import Metrics


class StatusApi(Protocol):
    async def patch_policy_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...


def policy_status(
    policy: ConcurrencyPolicy,
    keys: Mapping[admission.Key, admission.KeyState],
    previous_ready: Condition | None,
    now: float,
) -> PolicyStatus:
    active = {key: state for key, state in keys.items() if state.running or state.queued}
    busiest = sorted(active.items(), key=lambda kv: (-len(kv[1].queued), -len(kv[1].running), kv[0]))
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
        running=sum(len(s.running) for s in active.values()),
        queued=sum(len(s.queued) for s in active.values()),
        keys=len(active),
        busiestKeys=[
            KeyCount(
                key=admission.key_dict(policy, key),
                running=len(s.running),
                queued=len(s.queued),
                maxConcurrent=policy.limit_for(key) if policy.has_own_limit(key) else None,
            )
            for key, s in busiest[:MAX_BUSIEST_KEYS]
        ],
        conditions=[ready],
    )


def shapes_note(policy: ConcurrencyPolicy) -> str:
    """What spec.limits and spec.maxQueued add to the Ready message: ", 2 key(s) with their own limit; ..."""
    spec = policy.spec
    note = f", {len(spec.limits)} key(s) with their own limit" if spec.limits else ""
    if spec.maxQueued is not None:
        note += f"; at most {spec.maxQueued} queued per key (overflow: {spec.queue_overflow})"
    return note


class StatusWriter:
    def __init__(self, api: StatusApi, clock: Any) -> None:
        self.api = api
        self.clock = clock
        self.dirty = True
        self.written: dict[admission.PolicyRef, PolicyStatus] = {}

    def mark_dirty(self) -> None:
        self.dirty = True

    async def write(self, cache: ClusterCache, assumed: Collection[str], metrics: Metrics) -> None:
        if not self.dirty or not cache.primed:
            return
        self.dirty = False
        policies = list(cache.policies.values())
        states = admission.tally(policies, cache.jobs.values(), assumed, cache.policy_index)
        now = self.clock()
        for policy in policies:
            ref = (policy.namespace, policy.name)
            previous = self.written.get(ref)
            previous_ready = next((c for c in previous.conditions if c.type == "Ready"), None) if previous else None
            status = policy_status(policy, states[ref], previous_ready, now)
            metrics.set_jobs(policy, status.running, status.queued)
            if status == previous:
                continue
            try:
                await self.api.patch_policy_status(policy.namespace, policy.name, status.model_dump(exclude_none=True))
                self.written[ref] = status
            except Exception:
                self.dirty = True  # try again on the next tick
        alive = set(cache.policies)
        metrics.forget_policies_except(alive)
        self.written = {ref: s for ref, s in self.written.items() if ref in alive}
