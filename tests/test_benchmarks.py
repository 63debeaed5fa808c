"""The benchmarks run end to end at a tiny scale.

``make bench`` runs only in CI's second half, after ``make test``; two benchmarks write ledger
rows straight into the tables, so a schema change breaks them there and nowhere else (the owner
column of the pending index did). Their figures are not looked at here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import (
    boot_storm,
    cli_startup,
    engine_overhead,
    frozen_osd,
    ledger_append,
    memory,
    nova,
    recovery_scan,
    replay,
    template_fetch,
)
from benchmarks.timing import Report
from tests.support.ceph import CephCluster
from tests.support.glance import GlanceServer
from tests.support.peer_venv import assert_fails_with_one_line

REPO = Path(nova.__file__).resolve().parent.parent


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


def test_the_boot_storm_benchmark_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot_storm, "PROCESSES", 2)
    monkeypatch.setattr(boot_storm, "THREADS", 2)
    monkeypatch.setattr(boot_storm.shutil, "which", lambda name: None)  # qcow2 only: no Ceph
    _ran(boot_storm.run(disks=4, rounds=1))


def test_the_memory_benchmark_runs() -> None:
    _ran(memory.run(disks=2 * memory.STEP))


def test_the_nova_benchmark_runs() -> None:
    # Outside CI it runs when var/nova-venv is there (make bench makes it). Under CI=true the
    # peer is a component like any other: made here (~45 s from PyPI, kept for make bench),
    # and a venv that cannot be made is a failure, not a skip.
    if not (REPO / "var/nova-venv/bin/python").exists():
        if os.environ.get("CI") != "true":
            pytest.skip("no var/nova-venv (scripts/nova-venv.sh makes it; make bench does)")
        made = subprocess.run(
            [str(REPO / "scripts/nova-venv.sh")], capture_output=True, text=True, check=False
        )
        assert made.returncode == 0, made.stderr
    _ran(nova.run(trials=1))


def test_the_nova_venv_script_fails_with_one_line(tmp_path: Path) -> None:
    assert_fails_with_one_line("nova-venv.sh", "NOVA_VENV", tmp_path)


def test_the_template_fetch_benchmark_runs() -> None:
    report = template_fetch.run(trials=1, size=4 << 20)
    _ran(report)
    in_memory = [row for row in report.rows if row.label.startswith("in memory")]
    assert len(in_memory) == (1 if template_fetch.shm_is_tmpfs() else 0), report.rows


def test_the_glance_rbd_benchmark_runs(ceph: CephCluster, glance_rbd_server: GlanceServer) -> None:
    report = template_fetch.run_rbd(trials=1, size=4 << 20, cluster=ceph, glance=glance_rbd_server)
    _ran(report)
    # What the glance:// side did is read from the ledger and named in the table, whichever it was.
    assert report.rows[0].label.startswith(("template add (clone ", "template add (download ")), (
        report.rows[0].label
    )


def test_the_frozen_osd_benchmark_runs(ceph: CephCluster) -> None:
    report = frozen_osd.run(trials=1, cluster=ceph)
    _ran(report)
