"""Engines for unit tests: a leading engine with one policy, and API bodies as the API server returns them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from jobgate.engine.engine import Engine, EngineSettings
from jobgate.engine.term import Term
from jobgate.telemetry.metrics import Metrics
from localcluster.manifests import policy_manifest

NS = "ns"


def body(manifest: dict[str, Any], uid: str, rv: int) -> dict[str, Any]:
    manifest["metadata"].update(namespace=NS, uid=uid, resourceVersion=str(rv))
    manifest["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    return manifest


def leading_engine(api: Any, settings: EngineSettings | None = None, **engine_options: Any) -> Engine:
    """An engine in a term of its own, with policy p known: one slot for the Jobs labeled app=a."""
    engine = Engine(api, settings or EngineSettings(), Metrics(), **engine_options)
    engine.term = Term.begin(1, engine.policies, api, engine.clock)
    engine.observe_policy(None, body(policy_manifest("p", {"app": "a"}, [], 1), "policy-uid", 1))
    return engine


def term_of(engine: Engine) -> Term:
    assert engine.term is not None, "the engine is not leading"
    return engine.term


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Let the loop run until `condition` holds: for state that no event announces."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling state that has no event of its own
            await asyncio.sleep(0.01)
    assert condition(), what
