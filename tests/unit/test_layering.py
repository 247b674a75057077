"""The decision core stays pure: no Kopf, no HTTP, no Kubernetes client, no clock, no event loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "operator" / "jobgate" / "core"
# What would let a decision depend on something other than its arguments.
FORBIDDEN_MODULES = (
    "kopf",
    "aiohttp",
    "kubernetes",
    "time",
    "asyncio",
    "jobgate.kube",
    "jobgate.engine",
    "jobgate.service",
    "jobgate.cli",
    "jobgate.telemetry",
)
FORBIDDEN_CALLS = ("now", "utcnow", "today", "monotonic")


def imported_modules(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def clock_calls(tree: ast.AST) -> set[str]:
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FORBIDDEN_CALLS
    }


def violations(source: str) -> list[str]:
    tree = ast.parse(source)
    bad = [m for m in imported_modules(tree) for f in FORBIDDEN_MODULES if m == f or m.startswith(f + ".")]
    return sorted(bad) + sorted(f"{call}()" for call in clock_calls(tree))


@pytest.mark.parametrize("module", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_nothing_that_reaches_outside_its_arguments(module: Path) -> None:
    assert violations(module.read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "import kopf",
        "from kubernetes.aio import client",
        "import time",
        "from datetime import datetime\ndatetime.now()",
        "from jobgate.engine.cache import JobCache",
    ],
)
def test_the_check_catches_what_would_make_the_core_impure(source: str) -> None:
    assert violations(source)
