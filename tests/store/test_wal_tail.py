"""A SQLite ledger whose write-ahead log a crash left with an uncommitted tail: SQLite keeps the
ledger to its last whole commit, and diskledger says that it dropped the tail (the power-loss
rig, tests/powerloss, meets the same case on replayed crash states)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from diskledger.store import open_store
from diskledger.store.wal import discarded_tail
from tests.store.test_contract import create_disk

CRASH_MID_APPEND = textwrap.dedent(
    """
    import os, signal, sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA cache_size=2")  # pages spill into the log before the commit
    db.execute("BEGIN IMMEDIATE")
    db.execute("CREATE TABLE never_committed (blob)")
    for _ in range(64):
        db.execute("INSERT INTO never_committed VALUES (randomblob(8192))")
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def crash_mid_append(database: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CRASH_MID_APPEND, str(database)], check=False)
    assert done.returncode == -9
    assert Path(f"{database}-wal").stat().st_size > 64 * 8192


def test_an_uncommitted_tail_is_dropped_and_said(tmp_path: Path) -> None:
    database = tmp_path / "ledger.db"
    store = open_store(f"sqlite:///{database}")
    create_disk(store)
    store.close()
    crash_mid_append(database)
    store = open_store(f"sqlite:///{database}")
    try:
        tail = store.discarded_tail
        assert tail is not None and tail.frames >= 64, tail
        assert "never committed" in tail.describe()
        assert [e.type for e in store.read_all()] == [
            "disk.create.started",
            "disk.create.completed",
        ]
    finally:
        store.close()
    # Closing the last connection checkpointed the log: the next opener finds nothing to say.
    again = open_store(f"sqlite:///{database}")
    try:
        assert again.discarded_tail is None
    finally:
        again.close()


def test_a_ledger_closed_cleanly_or_without_a_log_has_no_tail(tmp_path: Path) -> None:
    database = tmp_path / "ledger.db"
    assert discarded_tail(str(database)) is None
    store = open_store(f"sqlite:///{database}")
    try:
        create_disk(store)
        assert store.discarded_tail is None
        # While it is open, its own committed frames are not a tail.
        assert discarded_tail(str(database)) is None
    finally:
        store.close()


def test_recover_reports_the_tail_once(tmp_path: Path) -> None:
    """What the operator sees: ``diskledger recover`` after the crash."""
    root = tmp_path / "root"
    environ = {**os.environ, "DISKLEDGER_ROOT": str(root), "DISKLEDGER_BACKEND": "raw"}

    def recover(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "diskledger.cli", "recover", *flags],
            env=environ, capture_output=True, text=True, check=False,
        )  # fmt: skip

    assert recover("--json").returncode == 0  # makes the ledger
    crash_mid_append(root / "ledger.db")
    first = recover()
    assert first.returncode == 0, first.stderr
    assert "never committed" in first.stdout, first.stdout
    assert json.loads(recover("--json").stdout)["ledger_tail"] is None
