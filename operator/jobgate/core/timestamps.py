"""Kubernetes timestamps (RFC 3339, UTC) to and from seconds since the epoch."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def format_timestamp(seconds: float) -> str:
    """RFC 3339 with microseconds, as jobgate writes its own annotations."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def format_kubernetes_time(seconds: float) -> str:
    """Whole seconds, as metav1.Time fields (conditions, events) require."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
