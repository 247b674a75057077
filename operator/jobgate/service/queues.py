"""The webhook's answer to a full queue (spec.overflow: Reject): count the key's Jobs through the API.

Every replica serves the webhook, but only the leader holds Jobs: the count is a
LIST of the policy's Jobs in that key, read fresh from the API server (for a
ClusterConcurrencyPolicy, in every namespace of the operator's scope, unless the
key names the namespace). The bound holds at creation time; Jobs created at the
same instant may each see room for one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from jobgate.core import admission
from jobgate.core.jobs import JobView
from jobgate.core.policy import NAMESPACE_KEY
from jobgate.core.selectors import to_label_selector_string

log = logging.getLogger("jobgate.webhook")

# Well within the API server's webhook timeout (10 s by default), which would fail the whole creation.
COUNT_TIMEOUT_SECONDS = 3.0


class JobLister(Protocol):
    async def list_jobs(self, namespace: str | None, label_selector: str | None = None) -> tuple[list[JobView], int]:
        """Every Job as a view, and the LIST's resourceVersion."""
        ...


def key_selector(gov: admission.Governance) -> str:
    """The policy's selector narrowed to the key: its non-empty values as label requirements.

    An empty value also stands for a missing label, which no single requirement
    expresses: such labels are left out, and `admission.queue_full` keeps only the key's Jobs.
    """
    parts = [to_label_selector_string(gov.policy.spec.selector)]
    parts += [
        f"{label}={value}"
        for label, value in zip(gov.policy.spec.keyLabels, gov.key, strict=True)
        if value and label != NAMESPACE_KEY
    ]
    return ",".join(part for part in parts if part)


def key_scopes(gov: admission.Governance, job: admission.Labeled, scopes: Sequence[str | None]) -> list[str | None]:
    """Where the key's Jobs are: the Job's namespace, unless a cluster policy's key spans namespaces."""
    if not gov.policy.cluster_scoped or NAMESPACE_KEY in gov.policy.spec.keyLabels:
        return [job.namespace]
    return list(scopes)


async def first_full(
    api: JobLister,
    job: admission.Labeled,
    governors: Sequence[admission.Governance],
    warnings: list[str],
    scopes: Sequence[str | None] = (None,),
    namespaces: admission.NamespaceLabels = admission.NO_NAMESPACES,
) -> admission.QueueFull | None:
    """The first Reject-bounded queue among the Job's governors that has no room for it.

    A queue that cannot be counted (the API did not answer) does not refuse the Job:
    a warning says so, and the Job is queued past the bound rather than lost. All the
    counting shares one deadline, and a key's scopes are listed at once: a cluster
    policy over several watched namespaces must not take the webhook past its timeout.
    """
    deadline = asyncio.get_running_loop().time() + COUNT_TIMEOUT_SECONDS
    for gov in governors:
        spec = gov.policy.spec
        if spec.maxQueued is None or spec.queue_overflow != "Reject":
            continue
        jobs: list[JobView] = []
        try:
            selector = key_selector(gov)
            # A task group: when one LIST fails, the others are cancelled, not left running past the answer.
            async with asyncio.timeout_at(deadline), asyncio.TaskGroup() as lists:
                listed = [lists.create_task(api.list_jobs(scope, selector)) for scope in key_scopes(gov, job, scopes)]
            for task in listed:
                jobs += task.result()[0]
        except Exception as e:
            log.warning("could not count the queue of policy %s for a new Job: %s", gov.policy.name, e)
            warnings.append(f"jobgate: could not count the queue of {gov.policy.kind} {gov.policy.name}; accepted")
            continue
        full = admission.queue_full(gov, jobs, namespaces)
        if full is not None:
            return full
    return None
