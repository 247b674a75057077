"""Waiting on the API without fixed sleeps: watch until a predicate holds, or fail with what was seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import kubernetes.watch


def watch_until(
    list_function: Callable[..., Any],
    *args: Any,
    until: Callable[[Any], bool],
    what: str,
    timeout: float = 30.0,
    **kwargs: Any,
) -> Any:
    """Watch ``list_function(*args, **kwargs)`` and return the first object for which ``until`` is true.

    A watch without a resourceVersion starts with the current objects, so an
    object that already satisfies ``until`` is returned at once.
    """
    deadline = time.monotonic() + timeout
    last_seen: Any = None
    while (remaining := deadline - time.monotonic()) > 0:
        watch = kubernetes.watch.Watch()
        for event in watch.stream(list_function, *args, timeout_seconds=max(1, int(remaining)), **kwargs):
            last_seen = event["object"]
            if event["type"] != "DELETED" and until(last_seen):
                watch.stop()
                return last_seen
            if time.monotonic() > deadline:
                watch.stop()
                break
    raise TimeoutError(f"{what} did not happen within {timeout:.0f}s; last seen: {_summary(last_seen)}")


def poll_until(check: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Call ``check`` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(interval)


def job_condition(job: Any, condition_type: str) -> Any:
    """The Job's condition of ``condition_type`` if it is True, else None."""
    for condition in (job.status and job.status.conditions) or []:
        if condition.type == condition_type and condition.status == "True":
            return condition
    return None


def _summary(obj: Any) -> str:
    if obj is None:
        return "nothing"
    status = getattr(obj, "status", None)
    return f"{obj.metadata.name} with status {status}"


Status = dict[str, Any]


def wait_status(read: Callable[[], Status], check: Callable[[Status], bool], what: str) -> Status:
    """Until a policy's status (`read`) passes `check`; a timeout says the last status seen."""
    seen: list[dict[str, Any]] = [{}]

    def matches() -> dict[str, Any] | None:
        seen[0] = read()
        return seen[0] if seen[0] and check(seen[0]) else None

    try:
        found: dict[str, Any] = poll_until(matches, what, timeout=30)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; last status: {seen[0]}") from None
    return found
