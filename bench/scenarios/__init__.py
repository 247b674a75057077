"""The scenarios. Each module has `Params` (defaults from issue 6, and `tiny()` for the smoke test) and
`run(params, log_dir)`, which returns one result document per scenario it measured, by name."""

from __future__ import annotations

from typing import Any

Document = dict[str, Any]


def target(figure: str, goal: str, measured: str, met: bool | None) -> dict[str, Any]:
    """One line of a scenario's scorecard; `met` is None where the figure has no pass/fail meaning."""
    return {"figure": figure, "target": goal, "measured": measured, "met": met}


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"
