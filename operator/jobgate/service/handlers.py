"""Kopf wiring: policy events feed the engine, the webhook suspends governed Jobs. Nothing else.

Jobs are not watched through Kopf: the leading engine lists and watches them
itself (engine.Engine.lead), keeping a small view of each and nothing on
followers. Only `on.event`, `on.mutate` and `on.probe` are used: unlike
on.create/update, they write no annotations and no finalizers on anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from jobgate.core.jobs import QUEUED_AT, QUEUED_LABEL, annotation_problems, foreign_controller
from jobgate.core.policy import CLUSTER_PLURAL, GROUP, PLURAL, VERSION
from jobgate.core.timestamps import format_timestamp
from jobgate.engine.engine import Engine
from jobgate.service import queues

log = logging.getLogger("jobgate.webhook")

WEBHOOK_ID = "suspend-governed-jobs"
WEBHOOK_PRIME_TIMEOUT = 5.0


@dataclass(frozen=True)
class NewJob:
    """A Job under creation, as the webhook sees it: it may have no name or uid yet."""

    namespace: str
    labels: Mapping[str, str]


def register(
    registry: kopf.OperatorRegistry, engine: Engine, *, webhook: bool, is_leader: Any, cluster_policies: bool = False
) -> None:
    # async, so that Kopf runs them on the event loop: sync handlers run in threads,
    # and the engine's cache belongs to the loop.
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def policy_changed(type: str | None, body: kopf.Body, **_: Any) -> None:
        engine.observe_policy(type, body)

    if cluster_policies:

        @kopf.on.event(GROUP, VERSION, CLUSTER_PLURAL, registry=registry)
        async def cluster_policy_changed(type: str | None, body: kopf.Body, **_: Any) -> None:
            engine.observe_policy(type, body)

        @kopf.on.event("", "v1", "namespaces", registry=registry)
        async def namespace_changed(
            type: str | None, name: str, labels: kopf.Labels, meta: kopf.Meta, **_: Any
        ) -> None:
            engine.observe_namespace(type, name, dict(labels), int(meta.get("resourceVersion") or 0))

    @kopf.on.probe(id="leader", registry=registry)
    async def leader(**_: Any) -> bool:
        return bool(is_leader())

    @kopf.on.probe(id="trackedJobs", registry=registry)
    async def tracked_jobs(**_: Any) -> int:
        return engine.tracked_jobs()

    if not webhook:
        return

    @kopf.on.mutate("batch", "v1", "jobs", id=WEBHOOK_ID, operations=["CREATE"], registry=registry)
    @engine.metrics.timed_webhook
    async def suspend_governed_jobs(body: kopf.Body, patch: kopf.Patch, warnings: list[str], **kwargs: Any) -> None:
        if kwargs.get("operation") != "CREATE":  # Kopf does not filter operations itself
            return
        if not await _policies_known(engine):
            engine.metrics.webhook_requests.labels("unavailable").inc()
            raise kopf.AdmissionError("jobgate has not loaded its ConcurrencyPolicies yet; retry", code=503)
        meta = body.get("metadata") or {}
        job = NewJob(namespace=meta.get("namespace") or "", labels=meta.get("labels") or {})
        if cluster_policies:
            await _namespace_known(engine, job.namespace)
        governors = engine.policies.policy_index.governance(job)
        if not governors:
            engine.metrics.webhook_requests.labels("untouched").inc()
            return
        if foreign_controller(body.get("spec") or {}, job.labels, meta.get("ownerReferences") or ()):
            engine.metrics.webhook_requests.labels("untouched").inc()
            return  # another controller owns its suspension; the engine says so in a Warning Event
        problems = annotation_problems(meta.get("annotations") or {})
        if problems:
            engine.metrics.webhook_requests.labels("refused").inc()
            raise kopf.AdmissionError("jobgate: " + "; ".join(problems), code=422)
        full = await queues.first_full(
            engine.api, job, governors, warnings, engine.settings.namespaces or (None,), engine.policies.namespaces
        )
        if full is not None:
            engine.metrics.webhook_requests.labels("rejected").inc()
            raise kopf.AdmissionError(f"jobgate: {full.message}", code=403)
        patch.spec["suspend"] = True
        patch.metadata.annotations[QUEUED_AT] = format_timestamp(time.time())
        patch.metadata.labels[QUEUED_LABEL] = "true"
        names = ", ".join(f"{g.policy.kind} {g.policy.name}" for g in governors)
        warnings.append(f"jobgate: suspended until {names} admits it")
        engine.metrics.webhook_requests.labels("suspended").inc()


async def _namespace_known(engine: Engine, namespace: str) -> None:
    """A Job's first in a namespace its watch has not brought yet: read the Namespace's labels now,
    or its Jobs would escape the cluster policies that select it until the watch catches up."""
    if namespace in engine.policies.namespaces or not any(p.cluster_scoped for p in engine.policies.policies.values()):
        return
    try:
        read = await asyncio.wait_for(engine.api.get_namespace(namespace), queues.COUNT_TIMEOUT_SECONDS)
    except Exception as e:  # the Job is decided on what is known; the engine's backstop covers the rest
        log.warning("could not read the labels of namespace %s for a new Job: %s", namespace, e)
        return
    if read is not None:  # an older state than the watch's is ignored
        engine.observe_namespace("ADDED", *read)


async def _policies_known(engine: Engine) -> bool:
    deadline = time.monotonic() + WEBHOOK_PRIME_TIMEOUT
    while not engine.policies.primed:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
