"""The benchmarks run end to end at a tiny scale.

``make bench`` runs only in CI's second half, after ``make test``; two benchmarks write ledger
rows straight into the tables, so a schema change breaks them there and nowhere else (the owner
column of the pending index did). Their figures are not looked at here.
"""

from __future__ import annotations

from benchmarks import cli_startup, engine_overhead, ledger_append, recovery_scan, replay
from benchmarks.timing import Report


def _ran(report: Report) -> None:
    assert report.rows, report.title
    assert all(row.a and row.b for row in report.rows), report.title


def test_the_recovery_scan_builds_its_ledger_and_recovers_from_it() -> None:
    _ran(recovery_scan.run(disks=2 * recovery_scan.PENDING, trials=1))


def test_the_replay_benchmark_builds_its_ledger_and_folds_it() -> None:
    _ran(replay.run(events=2_000, runs=1))


def test_the_append_benchmark_runs() -> None:
    _ran(ledger_append.run(trials=20))


def test_the_engine_overhead_benchmark_runs() -> None:
    _ran(engine_overhead.run(trials=3))


def test_the_cli_startup_benchmark_runs() -> None:
    _ran(cli_startup.run(trials=1))
