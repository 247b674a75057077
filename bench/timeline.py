"""What the independent watch saw, as a list of state changes, and the figures computed from it.

`Timeline` is a `JobWatch` listener: it records each Job's changes of state
(queued, running, held, finished) with the moment the watch saw them, and keeps
live counts so that waiting on them costs nothing. Everything else here is a
pure function of the recorded changes.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from jobgate.core.jobs import JobView

State = Literal["queued", "running", "held", "finished"]
MAX_POINTS = 600  # per plotted series: enough for a smooth line, small in JSON


def state_of(job: JobView) -> State:
    if job.finished:
        return "finished"
    if not job.suspended:
        return "running"
    return "held" if job.held else "queued"


@dataclass(frozen=True, slots=True)
class Change:
    at: float  # time.monotonic() when the watch saw it
    name: str
    key: str  # the value of the scenario's key label
    before: State | None  # None: first seen
    after: State | None  # None: deleted
    admitted_at: float | None  # jobgate's admitted-at annotation, moved onto the monotonic clock


class Timeline:
    """A JobWatch listener (called under the watch's lock) that records changes of state."""

    def __init__(self, key_label: str) -> None:
        self.key_label = key_label
        self.changes: list[Change] = []
        self.count: Counter[State] = Counter()  # Jobs in each state now
        self.first_running: dict[str, float] = {}  # per key: when a Job of it was first seen running
        self._wall_minus_monotonic = time.time() - time.monotonic()

    def __call__(self, seen: float, before: JobView | None, after: JobView | None) -> None:
        old = state_of(before) if before is not None else None
        new = state_of(after) if after is not None else None
        if old == new:
            return
        job = after or before
        assert job is not None
        key = job.labels.get(self.key_label, "")
        admitted = (
            None if after is None or after.admitted_at is None else after.admitted_at - self._wall_minus_monotonic
        )
        self.changes.append(Change(seen, job.name, key, old, new, admitted))
        if old is not None:
            self.count[old] -= 1
        if new is not None:
            self.count[new] += 1
        if new == "running":
            self.first_running.setdefault(key, seen)

    def since(self, start: float) -> list[Change]:
        return [c for c in self.changes if c.at >= start]


# --- figures -------------------------------------------------------------------------------------


def summary(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99 and max of the values times `scale` (e.g. 1000 for ms)."""
    ordered = sorted(v * scale for v in values)
    if not ordered:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), digits),
        "p50": round(percentile(ordered, 50), digits),
        "p90": round(percentile(ordered, 90), digits),
        "p99": round(percentile(ordered, 99), digits),
        "max": round(ordered[-1], digits),
    }


def percentile(ordered: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks, on already sorted values."""
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Refill:
    freed: float  # a running Job of the key seen finished
    decided: float | None  # jobgate's admitted-at on the Job that took the slot
    seen: float  # that Job seen running

    @property
    def latency(self) -> float:
        return self.seen - self.freed


def refills(changes: Iterable[Change]) -> list[Refill]:
    """Each freed slot and the admission that refilled it.

    Only completions that leave work behind count: when a Job finishes while
    its key has queued Jobs, the slot it frees should be refilled at once.
    Completions are matched first in, first out with the key's next admissions.
    """
    queued: Counter[str] = Counter()
    freed: dict[str, deque[float]] = defaultdict(deque)
    found = []
    for change in changes:
        if change.before == "queued":
            queued[change.key] -= 1
        if change.after == "queued":
            queued[change.key] += 1
        if change.before == "running" and change.after == "finished" and queued[change.key] > 0:
            freed[change.key].append(change.at)
        if change.after == "running" and change.before in ("queued", None) and freed[change.key]:
            found.append(Refill(freed[change.key].popleft(), change.admitted_at, change.at))
        if queued[change.key] == 0:
            freed[change.key].clear()  # nothing left to refill the slots with
    return found


def utilisation(changes: Iterable[Change], limit: int, start: float) -> float | None:
    """Share of the slots of keys with queued Jobs that held a running Job, over time from `start`."""
    running: Counter[str] = Counter()
    queued: Counter[str] = Counter()
    busy = capacity = 0.0
    waiting_keys = running_in_waiting_keys = 0  # keys with queued Jobs, and their running Jobs
    last = start
    for change in changes:
        if change.at > last:
            busy += running_in_waiting_keys * (change.at - last)
            capacity += waiting_keys * limit * (change.at - last)
            last = change.at
        key = change.key
        was_waiting = queued[key] > 0
        if was_waiting:
            waiting_keys -= 1
            running_in_waiting_keys -= min(running[key], limit)
        for state, step in ((change.before, -1), (change.after, 1)):
            if state == "running":
                running[key] += step
            elif state == "queued":
                queued[key] += step
        if queued[key] > 0:
            waiting_keys += 1
            running_in_waiting_keys += min(running[key], limit)
    return busy / capacity if capacity else None


def run_times(changes: Iterable[Change]) -> list[float]:
    """Seconds from each Job seen running to seen finished: the control plane's part of a slot's time."""
    started: dict[str, float] = {}
    durations = []
    for change in changes:
        if change.after == "running":
            started[change.name] = change.at
        elif change.after == "finished" and change.name in started:
            durations.append(change.at - started.pop(change.name))
    return durations


def work_per_key(changes: Iterable[Change]) -> dict[str, float]:
    """Per key, the seconds its Jobs were seen running, summed: the slot time its work took."""
    started: dict[str, float] = {}
    work: dict[str, float] = defaultdict(float)
    for change in changes:
        if change.after == "running":
            started[change.name] = change.at
        elif change.after == "finished" and change.name in started:
            work[change.key] += change.at - started.pop(change.name)
    return dict(work)


def admissions(changes: Iterable[Change]) -> list[float]:
    """When each admission by jobgate was seen: a queued Job seen running with jobgate's annotation."""
    return [c.at for c in changes if c.after == "running" and c.before == "queued" and c.admitted_at is not None]


def became_running(changes: Iterable[Change]) -> list[float]:
    return [c.at for c in changes if c.after == "running" and c.before in ("queued", None)]


def peak_rate(times: Sequence[float], window: float = 1.0) -> float:
    """The most events in any `window` seconds, per second."""
    ordered = sorted(times)
    best = 0
    low = 0
    for high, t in enumerate(ordered):
        while t - ordered[low] > window:
            low += 1
        best = max(best, high - low + 1)
    return best / window


def rate(times: Sequence[float], start: float | None = None) -> float | None:
    """Events per second from `start` (default: the first event) to the last event."""
    if not times:
        return None
    begin = min(times) if start is None else start
    span = max(times) - begin
    return len(times) / span if span > 0 else None


def series(changes: Sequence[Change], start: float, end: float) -> dict[str, list[float]]:
    """Running, queued and finished Jobs over time (seconds from `start`), at most MAX_POINTS samples."""
    step = max((end - start) / MAX_POINTS, 0.02)
    count: Counter[State] = Counter()
    out: dict[str, list[float]] = {"t": [], "running": [], "queued": [], "finished": []}
    index = 0
    t = start
    while t <= end + step:
        while index < len(changes) and changes[index].at <= t:
            change = changes[index]
            if change.before is not None:
                count[change.before] -= 1
            if change.after is not None:
                count[change.after] += 1
            index += 1
        out["t"].append(round(t - start, 3))
        for state in ("running", "queued", "finished"):
            out[state].append(count[state])
        t += step
    return out


def keys_of(changes: Iterable[Change]) -> Counter[str]:
    """Jobs per key, each Job counted once."""
    seen: dict[str, str] = {}
    for change in changes:
        seen.setdefault(change.name, change.key)
    return Counter(seen.values())
