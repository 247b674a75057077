"""Hand-made policies and Job views for tests of the pure core and the reports."""

from __future__ import annotations

from typing import Any

from jobgate.core.jobs import JobView
from jobgate.core.policy import ConcurrencyPolicy, PolicySpec

NS = "billing"


def policy(
    name: str,
    match: dict[str, str],
    keys: list[str],
    limit: int,
    created: float = 0.0,
    namespace: str = NS,
    **spec: Any,
) -> ConcurrencyPolicy:
    """A policy; `spec` adds fields as a manifest writes them, e.g. maxQueued=2, overflow="ReplaceOldest"."""
    return ConcurrencyPolicy(
        namespace=namespace,
        name=name,
        uid=f"uid-{name}",
        generation=1,
        created=created,
        spec=PolicySpec.model_validate(
            {"selector": {"matchLabels": match}, "keyLabels": keys, "maxConcurrent": limit, **spec}
        ),
    )


def job(
    name: str,
    labels: dict[str, str],
    *,
    suspended: bool = True,
    finished: bool = False,
    held: bool = False,
    priority: int = 0,
    created: float = 1.0,
    queued_at: float | None = None,
    marked: bool = True,  # carries jobgate's queued mark (queued-at, as the webhook sets it, at creation)
    admitted: bool = False,
    namespace: str = NS,
    foreign: str | None = None,
    uid: str | None = None,
    rv: int = 1,
) -> JobView:
    return JobView(
        uid=uid or f"uid-{namespace}-{name}",
        namespace=namespace,
        name=name,
        labels=labels,
        resource_version=rv,
        created=created,
        suspended=suspended,
        finished=finished,
        held=held,
        priority=priority,
        admitted_at=5.0 if admitted else None,
        queued_at=queued_at if queued_at is not None or not marked else created,
        foreign=foreign,
    )
