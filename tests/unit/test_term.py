"""A leadership term ends whole: every task cancelled and awaited, nothing started after."""

from __future__ import annotations

import asyncio

import pytest

from jobgate.engine.cache import PolicyCache
from jobgate.engine.term import Term


class NoStatus:
    async def patch_policy_status(self, *_: object) -> None:
        pass


def test_a_term_ends_with_every_task_finished_or_not() -> None:
    async def scenario() -> tuple[bool, bool]:
        term = Term.begin(1, PolicyCache(), NoStatus(), clock=lambda: 0.0)
        done = term.spawn(asyncio.sleep(0))
        waiting = term.spawn(asyncio.Event().wait())
        await asyncio.sleep(0.01)  # `done` has finished; its done-callback has not necessarily run
        async with asyncio.timeout(5):
            await term.end()
        with pytest.raises(asyncio.CancelledError):
            term.spawn(asyncio.sleep(0))
        return done.done(), waiting.cancelled()

    assert asyncio.run(scenario()) == (True, True)
