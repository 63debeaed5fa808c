"""The line a run ends with (``STATS.line()``, printed by conftest.py) says what its violations
mean: planted bugs the harness caught, apart from violations nobody expected."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from diskledger.testing import STATS, HarnessStats, InvariantViolation, planted_bug
from diskledger.testing.stats import violation


@pytest.fixture
def stats() -> Iterator[HarnessStats]:
    """The counts as they were; put back afterwards, so this test leaves the run's line alone."""
    before = dataclasses.replace(STATS)
    yield before
    for f in dataclasses.fields(STATS):
        setattr(STATS, f.name, getattr(before, f.name))


def test_a_passing_run_with_planted_bugs_says_they_were_caught() -> None:
    stats = HarnessStats(
        examples=232,
        steps=5753,
        operations=3790,
        refusals=1089,
        writes=425,
        crashes=468,
        subprocess_kills=16,
        recoveries=216,
        violations=0,
        expected_violations=24,
        planted=12,
        caught=12,
    )
    assert stats.line() == (
        "232 examples, 5753 steps (3790 operations, 1089 refused requests, 425 guest writes), "
        "468 crashes injected (16 by SIGKILL of a CLI process), 216 recoveries, "
        "0 unexpected violations; 12 of 12 planted bugs caught"
    )


def test_a_run_without_planted_bugs_names_none() -> None:
    line = HarnessStats(examples=5, steps=150, violations=2).line()
    assert line.endswith(", 2 unexpected violations")
    assert "planted" not in line


def test_a_violation_outside_a_planted_bug_is_unexpected(stats: HarnessStats) -> None:
    error = violation("sizes never shrink", "vm-1/root went from 1024 to 512")
    assert isinstance(error, InvariantViolation)
    assert str(error) == "invariant violated: sizes never shrink: vm-1/root went from 1024 to 512"
    assert STATS.violations == stats.violations + 1
    assert STATS.expected_violations == stats.expected_violations


def test_a_planted_bug_caught_counts_as_caught_not_as_a_violation(stats: HarnessStats) -> None:
    with pytest.raises(InvariantViolation), planted_bug():
        violation("sizes never shrink", "first")
        raise violation("sizes never shrink", "the replay")
    assert STATS.violations == stats.violations
    assert STATS.expected_violations == stats.expected_violations + 2
    assert (STATS.planted, STATS.caught) == (stats.planted + 1, stats.caught + 1)


def test_a_planted_bug_missed_counts_as_planted_not_caught(stats: HarnessStats) -> None:
    with planted_bug():
        pass
    assert (STATS.planted, STATS.caught) == (stats.planted + 1, stats.caught)
    after = violation("sizes never shrink", "outside again")
    assert isinstance(after, InvariantViolation)
    assert STATS.violations == stats.violations + 1  # the block is closed: unexpected again
