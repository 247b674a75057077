"""One leadership term: everything a leader knows and does about Jobs, created whole and discarded whole.

A term begins when this replica takes (or retakes) the Lease and ends when it
may have lost it, or when the process was stalled. Nothing of a term outlives
it: its Job cache, assumed admissions, writes and reads in flight, watches and
the status it last wrote all live here, and `end()` cancels every task and waits
for them, so a new term never shares state with an old one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from jobgate.engine.cache import JobCache, PolicyCache
from jobgate.engine.status import StatusApi, StatusWriter
from jobgate.engine.watches import JobStream


@dataclass
class Expectation:
    """An admission whose answer was lost: it keeps its slot until a read after `settles_at` says how it ended."""

    decided_version: int  # the Job's resourceVersion when the admission was decided
    settles_at: float  # monotonic: the patch has landed by now, or never will
    admitted_at: float  # the admitted-at the patch wrote: seen on the Job, it says the patch landed


@dataclass
class Term:
    number: int
    jobs: JobCache
    status: StatusWriter
    assumed: set[str] = field(default_factory=set)  # admissions sent, or in doubt: they hold their slots
    expected: dict[str, Expectation] = field(default_factory=dict)  # by uid: admissions whose answer was lost
    writing: set[str] = field(default_factory=set)  # uids of Jobs with a patch in flight
    refused: set[str] = field(default_factory=set)  # Jobs whose patch was refused: their next event wakes a pass
    confirming: set[str] = field(default_factory=set)  # Jobs being read back to learn whether they are gone
    recheck: dict[str, int] = field(default_factory=dict)  # Jobs said gone while a write was in flight
    streams: dict[JobStream, asyncio.Task[None]] = field(default_factory=dict)  # the Job watches
    streams_stale: bool = False  # policies changed: the set of watches may have to follow
    # Namespaces where policies may govern Jobs they did not (a namespace relabeled into a cluster policy's
    # reach, a policy added or its selectors changed): their streams are listed again.
    relabeled: set[str] = field(default_factory=set)
    streams_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    ended: bool = False

    @classmethod
    def begin(cls, number: int, policies: PolicyCache, status_api: StatusApi, clock: Any) -> Term:
        return cls(number=number, jobs=JobCache(policies), status=StatusWriter(status_api, clock))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as part of this term: it is cancelled when the term ends."""
        if self.ended:
            coro.close()
            raise asyncio.CancelledError("the term has ended")
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def end(self) -> None:
        self.ended = True
        self.jobs.close()
        while self.tasks:
            pending = list(self.tasks)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # Done callbacks run on a later turn of the loop, and awaiting a finished task does not
            # yield: take them out here, or this loop would spin without ever letting them run.
            self.tasks.difference_update(pending)
