"""``diskledger watch``: the change feed on stdout, run as a real process.

Each test starts the CLI as a subprocess (``python -m diskledger.cli``, this checkout first on its
path) on a SQLite ledger it appends to itself, and reads what the process prints through a thread.
Every wait has a generous bound so that a regression fails rather than hangs; none asserts speed.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from diskledger.cli import main
from diskledger.store import SqlEventStore, open_store
from tests.store.test_contract import create_disk

BOUND = 60.0
ROOT = Path(__file__).resolve().parents[1]
EVENT_KEYS = {
    "position",
    "stream",
    "version",
    "type",
    "schema",
    "op_id",
    "recorded_at",
    "data",
    "metadata",
    "prev_hash",
    "hash",
}


def environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISKLEDGER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def command(root: Path, url: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "diskledger.cli",
        "watch",
        "--root",
        str(root),
        "--ledger",
        url,
        *args,
    ]


@pytest.fixture(autouse=True)
def interruptible() -> Iterator[None]:
    """The watches get SIGINT at its default. A suite started in the background by a
    non-interactive shell inherits SIGINT ignored, Python keeps an inherited SIG_IGN, and so do
    the processes it starts: the watches then ignored the tests' interrupts (a clean-clone run
    failed so). A signal caught here is reset to its default in a child at exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class Watch:
    """A running ``diskledger watch``; its stdout lines arrive on a queue."""

    def __init__(self, root: Path, url: str, *args: str) -> None:
        self.process = subprocess.Popen(
            command(root, url, *args),
            env=environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        self.reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self.reader.start()

    def _read(self, stdout: Any) -> None:
        for line in stdout:
            self.lines.put(line)
        self.lines.put(None)

    def line(self) -> Any:
        text = self.lines.get(timeout=BOUND)
        assert text is not None, f"watch ended early: {self.finish()}"
        return json.loads(text)

    def events(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` event lines (heartbeat lines in between are passed over)."""
        received: list[dict[str, Any]] = []
        while len(received) < count:
            line = self.line()
            if "heartbeat" not in line:
                received.append(line)
        return received

    def finish(self) -> tuple[int, str]:
        """Wait for the process to end: its exit status and stderr."""
        try:
            self.process.wait(BOUND)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        assert self.process.stderr is not None
        return self.process.returncode, self.process.stderr.read()

    def interrupt(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        return self.finish()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ledger.db"


@pytest.fixture
def store(url: str) -> Iterator[SqlEventStore]:
    store = open_store(url)
    yield store
    store.close()


def test_events_appear_as_they_are_appended_and_sigint_exits_0(
    tmp_path: Path, url: str, store: SqlEventStore
) -> None:
    create_disk(store, "disk:vm-1/root", "op-1")
    watch = Watch(tmp_path, url, "--json")
    history = watch.events(2)
    create_disk(store, "disk:vm-2/root", "op-2")
    live = watch.events(2)
    code, err = watch.interrupt()
    assert (code, err) == (0, "")

    recorded = list(store.read_all())
    assert [e["position"] for e in history + live] == [1, 2, 3, 4]
    for line, event in zip(history + live, recorded, strict=True):
        assert set(line) == EVENT_KEYS
        assert line["position"] == event.position and line["stream"] == event.stream
        assert (line["type"], line["version"], line["schema"]) == (
            event.type,
            event.version,
            event.schema,
        )
        assert line["op_id"] == event.metadata.op_id and line["data"] == event.data
        assert line["metadata"] == event.metadata.to_json()
        assert (line["prev_hash"], line["hash"]) == (event.prev_hash, event.hash)
        assert line["recorded_at"] == event.time.isoformat(timespec="microseconds")
    assert live[0]["op_id"] == "op-2"


def test_from_now_and_from_a_position(tmp_path: Path, url: str, store: SqlEventStore) -> None:
    create_disk(store, "disk:vm-1/root", "op-1")
    from_now = Watch(tmp_path, url, "--json", "--from-now", "--heartbeat", "0.1")
    assert from_now.line() == {"heartbeat": 2}  # it started at the head, printed nothing
    from_two = Watch(tmp_path, url, "--json", "--from", "1")
    assert [e["position"] for e in from_two.events(1)] == [2]
    create_disk(store, "disk:vm-2/root", "op-2")
    assert [e["position"] for e in from_now.events(2)] == [3, 4]
    assert [e["position"] for e in from_two.events(2)] == [3, 4]
    assert from_now.interrupt()[0] == 0
    assert from_two.interrupt()[0] == 0


def test_filters_print_matching_events_and_heartbeats_carry_the_position(
    tmp_path: Path, url: str, store: SqlEventStore
) -> None:
    watch = Watch(
        tmp_path,
        url,
        "--json",
        "--stream",
        "disk:vm-1/*",
        "--type",
        "*.completed",
        "--heartbeat",
        "0.1",
    )
    create_disk(store, "disk:vm-1/root", "op-1")  # positions 1, 2: only 2 matches
    create_disk(store, "disk:vm-2/root", "op-2")  # 3, 4: neither does
    create_disk(store, "disk:vm-1/data", "op-3")  # 5, 6: only 6
    assert [(e["position"], e["stream"]) for e in watch.events(2)] == [
        (2, "disk:vm-1/root"),
        (6, "disk:vm-1/data"),
    ]
    create_disk(store, "disk:vm-3/root", "op-4")  # 7, 8: filtered out
    line = watch.line()
    while line != {"heartbeat": 8}:
        assert set(line) == {"heartbeat"} and line["heartbeat"] <= 8, line
        line = watch.line()
    assert watch.interrupt() == (0, "")


def test_until_idle_prints_everything_then_exits_0(
    tmp_path: Path, url: str, store: SqlEventStore
) -> None:
    create_disk(store, "disk:vm-1/root", "op-1")
    done = subprocess.run(
        command(tmp_path, url, "--json", "--until-idle", "0.5"),
        env=environ(),
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert [json.loads(line)["position"] for line in done.stdout.splitlines()] == [1, 2]


def test_human_lines_without_json(tmp_path: Path, url: str, store: SqlEventStore) -> None:
    create_disk(store, "disk:vm-1/root", "op-1")
    done = subprocess.run(
        command(tmp_path, url, "--until-idle", "0.5"),
        env=environ(),
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert done.returncode == 0
    first, second = done.stdout.splitlines()
    assert first.split()[0] == "1" and "disk:vm-1/root v1" in first
    assert "disk.create.started" in first and "op op-1" in first
    assert second.split()[0] == "2" and "disk.create.completed" in second


def test_a_reader_that_goes_away_ends_an_idle_watch_with_status_0(
    tmp_path: Path, url: str, store: SqlEventStore
) -> None:
    """``diskledger watch | head -1`` on a ledger at rest: the watch notices the closed pipe
    without waiting for another event, and leaves no traceback or "Exception ignored"."""
    create_disk(store, "disk:vm-1/root", "op-1")
    argv = " ".join(command(tmp_path, url, "--json"))
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {argv} 2>{tmp_path}/err | head -1"],
        env=environ(),
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert done.returncode == 0  # pipefail: the watch's own status
    assert json.loads(done.stdout)["position"] == 1
    assert (tmp_path / "err").read_text() == ""


def test_a_closed_pipe_while_events_flow_exits_0(
    tmp_path: Path, url: str, store: SqlEventStore
) -> None:
    create_disk(store, "disk:vm-1/root", "op-1")
    # No reader thread here: closing a pipe another thread is reading from would block.
    process = subprocess.Popen(
        command(tmp_path, url, "--json"),
        env=environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert json.loads(process.stdout.readline())["position"] == 1
        process.stdout.close()  # the reader goes away; the next write meets EPIPE
        create_disk(store, "disk:vm-2/root", "op-2")
        assert process.wait(BOUND) == 0
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_hash_break_exits_3_with_one_line(tmp_path: Path, url: str, store: SqlEventStore) -> None:
    for n in range(3):
        create_disk(store, f"disk:vm-{n}/root", f"op-{n}")
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER events_no_update"))
        conn.execute(sa.text(f"UPDATE events SET prev_hash = '{'a' * 64}' WHERE position = 4"))
    done = subprocess.run(
        command(tmp_path, url, "--json", "--until-idle", "5"),
        env=environ(),
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert done.returncode == 3
    assert [json.loads(line)["position"] for line in done.stdout.splitlines()] == [1, 2, 3]
    (line,) = done.stderr.splitlines()
    assert line.startswith("diskledger: error: change feed broken at position 4 (expected 4)")


@pytest.mark.postgres
def test_watch_on_a_postgres_ledger(tmp_path: Path, postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        create_disk(store, "disk:vm-1/root", "op-1")
        watch = Watch(tmp_path, postgres_url, "--json", "--type", "*.completed")
        assert [e["position"] for e in watch.events(1)] == [2]
        create_disk(store, "disk:vm-2/root", "op-2")
        (line,) = watch.events(1)
        assert (line["position"], line["op_id"]) == (4, "op-2")
        assert watch.interrupt() == (0, "")
    finally:
        store.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["--from", "-1"],
        ["--from", "x"],
        ["--from", "2", "--from-now"],
        ["--heartbeat", "0"],
        ["--heartbeat", "-1"],
        ["--heartbeat", "soon"],
        ["--heartbeat", "nan"],
        ["--heartbeat", "inf"],
        ["--until-idle", "0"],
    ],
)
def test_bad_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["watch", "--root", str(tmp_path), *argv])
    assert exit_.value.code == 2
    assert "usage error" in capsys.readouterr().err
    assert not (tmp_path / "ledger.db").exists()  # refused before anything was opened


def test_a_ledger_that_cannot_be_opened_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["watch", "--root", str(tmp_path), "--ledger", "mysql+pymysql://u@localhost/x"])
    assert code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("diskledger: error: ") and "unsupported" in line
