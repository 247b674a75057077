"""The start estimate as a pure function: monotone in position, exact when every run takes as long."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobgate.core.estimate import estimate_start, remaining

seconds = st.floats(min_value=0, max_value=1e5, allow_nan=False, allow_infinity=False)
durations = st.lists(st.floats(min_value=0.001, max_value=1e5), min_size=1, max_size=30)


@given(
    position=st.integers(1, 200),
    slots=st.integers(1, 10),
    running=st.lists(seconds, max_size=12),
    history=durations,
)
def test_a_later_position_never_starts_earlier(
    position: int, slots: int, running: list[float], history: list[float]
) -> None:
    here = estimate_start(position, slots, running, history)
    behind = estimate_start(position + 1, slots, running, history)
    assert here.start_in is not None and behind.start_in is not None
    assert 0 <= here.start_in <= behind.start_in


@given(
    position=st.integers(1, 200),
    slots=st.integers(1, 10),
    run=st.floats(min_value=0.5, max_value=1e4),
    data=st.data(),
)
def test_exact_when_run_times_are_constant(position: int, slots: int, run: float, data: st.DataObject) -> None:
    """Slots free at f_0 <= ... <= f_{m-1}, all within one run; the k-th Job ahead takes slot k mod m."""
    holders = data.draw(st.integers(0, slots))
    elapsed = data.draw(st.lists(st.floats(min_value=0, max_value=run), min_size=holders, max_size=holders))
    history = [run] * data.draw(st.integers(1, 10))
    frees = sorted([0.0] * (slots - holders) + [run - e for e in elapsed])
    k = position - 1
    expected = frees[k % slots] + (k // slots) * run
    estimate = estimate_start(position, slots, elapsed, history)
    assert estimate.start_in == pytest.approx(expected, abs=1e-6 * max(1.0, expected))
    assert (estimate.run_seconds, estimate.runs) == (run, len(history))


def test_a_free_slot_means_now_even_without_history() -> None:
    estimate = estimate_start(2, slots=3, running_elapsed=[10.0], durations=[])
    assert (estimate.start_in, estimate.unknown) == (0.0, None)


def test_unknown_without_history_and_when_paused() -> None:
    assert estimate_start(1, 1, [5.0], []).unknown == "no-history"
    assert estimate_start(1, 1, [5.0], []).start_in is None
    paused = estimate_start(1, 0, [], [60.0])
    assert (paused.start_in, paused.unknown) == (None, "paused")


def test_one_slow_run_does_not_skew_the_typical_run() -> None:
    estimate = estimate_start(2, 1, [0.0], [60.0, 60.0, 60.0, 3600.0])
    assert estimate.run_seconds == 60.0
    assert estimate.start_in == 120.0


def test_a_job_past_every_known_run_may_end_any_moment() -> None:
    assert remaining(500.0, [60.0, 90.0]) == 0.0
    assert remaining(70.0, [60.0, 90.0, 100.0]) == 25.0  # median of 20 and 30
    assert estimate_start(1, 1, [500.0], [60.0]).start_in == 0.0


def test_more_jobs_running_than_slots_free_a_slot_as_the_surplus_ends() -> None:
    # Limit lowered to 1 while two run (ending in 10 s and 40 s): the first slot frees at 40 s.
    assert estimate_start(1, 1, [50.0, 20.0], [60.0]).start_in == 40.0


def test_positions_are_one_based() -> None:
    with pytest.raises(ValueError):
        estimate_start(0, 1, [], [1.0])
