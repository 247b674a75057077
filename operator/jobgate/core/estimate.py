"""When will a queued Job start? An estimate from its place in line, the slot holders and past run times.

Pure: the caller passes elapsed times and durations, never a clock. The model
is the one jobgate admits by: a key has ``slots`` slots; each slot frees when
its Job ends; the Jobs ahead in the key's queue take the slots in order as
they free, and each runs for the key's typical run time. The Job at
``position`` starts when the ``position``-th slot frees.

For Jobs that all run for the same time, the estimate is exact, but for the
control plane's own turnaround between a Job ending and the next one starting.
It assumes that nobody jumps the line (a higher priority Job created later
does) and that no other policy holds the Job back (the caller takes the
latest estimate over every policy that governs it).
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Unknown = Literal["no-history", "paused"]


@dataclass(frozen=True)
class Estimate:
    """Seconds from now until the Job starts, or why that is unknown."""

    start_in: float | None  # None: unknown, and ``unknown`` says why
    run_seconds: float | None  # the typical run time used: the median of ``runs`` durations
    runs: int  # how many past run durations the estimate rests on
    unknown: Unknown | None = None

    @property
    def known(self) -> bool:
        return self.start_in is not None


def typical_run(durations: Sequence[float]) -> float:
    """The median: one Job that hung for hours does not make every estimate wrong."""
    return float(statistics.median(durations))


def remaining(elapsed: float, durations: Sequence[float]) -> float:
    """How much longer a Job that has run ``elapsed`` seconds should run.

    The typical remaining time of the past runs that lasted longer than
    ``elapsed``; 0 for a Job that has run longer than any past run (it may end
    any moment). With constant durations D this is exactly D - elapsed.
    """
    longer = [d - elapsed for d in durations if d > elapsed]
    return float(statistics.median(longer)) if longer else 0.0


def estimate_start(
    position: int,
    slots: int,
    running_elapsed: Sequence[float],
    durations: Sequence[float],
) -> Estimate:
    """The estimated start of the Job at ``position`` (1 = next) of a key's queue.

    ``slots``: the key's limit; ``running_elapsed``: how long each Job holding
    one of its slots has run; ``durations``: run times of the key's recent
    finished Jobs (any order). Monotone: a later position never starts earlier.
    """
    if position < 1:
        raise ValueError(f"position is 1-based, got {position}")
    if slots <= 0:
        return Estimate(None, None, len(durations), "paused")
    free_now = max(0, slots - len(running_elapsed))
    if position <= free_now:
        return Estimate(0.0, typical_run(durations) if durations else None, len(durations))
    if not durations:
        return Estimate(None, None, 0, "no-history")
    run = typical_run(durations)
    # When each slot frees: now for the free ones, else when its Job should end. More Jobs
    # running than slots (the limit was lowered) free slots only as the surplus ends: the
    # latest-ending ``slots`` of them are the ones whose end frees a slot for the queue.
    ends = sorted(remaining(e, durations) for e in running_elapsed)[-slots:] if running_elapsed else []
    frees = [0.0] * free_now + ends
    heapq.heapify(frees)
    for _ in range(position - 1):  # each Job ahead takes the earliest free slot, and holds it for a run
        heapq.heappush(frees, heapq.heappop(frees) + run)
    return Estimate(frees[0], run, len(durations))
