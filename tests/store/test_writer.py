"""Writers of one SQLite ledger queue on ``WriterQueue`` (store/writer.py): a thread lock, then a
``flock`` of ``<ledger>-writer`` that other processes see, held from ``BEGIN IMMEDIATE`` to the
end of the transaction, however it ends."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskledger.events import Metadata, NewEvent
from diskledger.store import open_store
from diskledger.store.connect import WRITE
from diskledger.store.sql import SqlEventStore
from diskledger.store.writer import WriterQueue


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def store(ledger: Path) -> Iterator[SqlEventStore]:
    opened = open_store(f"sqlite:///{ledger}")
    assert isinstance(opened, SqlEventStore)
    yield opened
    opened.close()


def _held_elsewhere(ledger: Path) -> bool:
    """Whether some writer holds the queue's flock (asked through a descriptor of our own)."""
    fd = os.open(f"{ledger}-writer", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _created(n: int) -> NewEvent:
    return NewEvent("disk.create.started", {"params": {"n": n}}, Metadata(op_id=f"op-{n}"))


def test_a_write_transaction_holds_the_queue_until_it_commits(
    store: SqlEventStore, ledger: Path
) -> None:
    with store.engine.connect().execution_options(**{WRITE: True}) as conn:
        with conn.begin():
            assert _held_elsewhere(ledger)
        assert not _held_elsewhere(ledger)


def test_a_write_transaction_that_raises_lets_go_of_the_queue(
    store: SqlEventStore, ledger: Path
) -> None:
    with (
        pytest.raises(ZeroDivisionError),
        store.engine.connect().execution_options(**{WRITE: True}) as conn,
        conn.begin(),
    ):
        1 / 0  # noqa: B018
    assert not _held_elsewhere(ledger)
    store.append("disk:vm/a", 0, [_created(1)])  # and the next writer gets in
    assert not _held_elsewhere(ledger)


def test_reads_do_not_queue(store: SqlEventStore, ledger: Path) -> None:
    store.append("disk:vm/a", 0, [_created(1)])
    with store.engine.connect() as conn, conn.begin():
        assert not _held_elsewhere(ledger)


def test_a_writer_in_another_process_waits_for_the_queue(
    store: SqlEventStore, ledger: Path
) -> None:
    store.append("disk:vm/a", 0, [_created(1)])
    script = (
        "import sys; from diskledger.events import Metadata, NewEvent; "
        "from diskledger.store import open_store; "
        f"store = open_store('sqlite:///{ledger}'); print('ready', flush=True); "
        "sys.stdin.readline(); "
        "store.append('disk:vm/b', 0, [NewEvent('disk.create.started', {'params': {}}, "
        "Metadata(op_id='op-2'))]); print('appended', flush=True)"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert other.stdin is not None and other.stdout is not None
    assert other.stdout.readline().strip() == "ready"  # its open_store wrote, too
    with store.engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
        other.stdin.write("go\n")
        other.stdin.flush()
        # Not a timing assertion: whenever the other process gets here, it must wait.
        _wait_until_blocked_on_flock(other.pid)
    out, _ = other.communicate(timeout=60)
    assert out.strip() == "appended" and other.returncode == 0
    assert [e.stream for e in store.read_all()] == ["disk:vm/a", "disk:vm/b"]


def _wait_until_blocked_on_flock(pid: int) -> None:
    """Until ``pid`` sleeps waiting for a file lock (``/proc/PID/wchan``): the queue's flock.
    SQLite never waits there (it tries its own fcntl locks without waiting, then its busy
    handler sleeps in ``do_nanosleep``)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/wchan").read_text() == "locks_lock_inode_wait":
            return
        time.sleep(0.01)
    raise AssertionError(f"the other writer never waited on the queue's flock (pid {pid})")


def test_a_forked_child_starts_the_queue_afresh(tmp_path: Path) -> None:
    """A child forked while its parent holds the queue: its inherited descriptor shares the
    parent's flock and its thread lock was copied held, so it opens its own and waits its turn."""
    queue = WriterQueue(tmp_path / "ledger.db")
    queue.acquire()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 1
        try:
            queue.acquire()
            os.write(write, b"acquired")
            queue.release()
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _wait_until_blocked_on_flock(pid)
    queue.release()
    assert os.read(read, 100) == b"acquired"
    _, status = os.waitpid(pid, 0)
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    queue.close()


def test_the_queue_is_reentrant_in_one_thread(tmp_path: Path) -> None:
    queue = WriterQueue(tmp_path / "ledger.db")
    queue.acquire()
    queue.acquire()
    queue.release()
    assert _held_elsewhere(tmp_path / "ledger.db")
    queue.release()
    assert not _held_elsewhere(tmp_path / "ledger.db")
    queue.close()
