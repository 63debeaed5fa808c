"""``--progress`` at the command line (issue 17): a bar (bytes, rate, ETA) on stderr when stderr is
a terminal (a real pty), nothing on a pipe, JSON lines on stderr when asked with ``--json`` (stdout
still the one document), and a bad value refused in one line. Every command runs in its own CLI
process against a local HTTP server that sends the image in eight pieces 50 ms apart."""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.recovery.helpers import CLI, cli_env, error_line
from tests.support.image_server import ImageServer, make_image, serving

ENVIRON = {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", "TERM": "xterm", "COLUMNS": "120"}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, qemu_img: None) -> bytes:
    return make_image(tmp_path_factory.mktemp("image") / "base.qcow2", data="8M")


@pytest.fixture
def http(image: bytes) -> Iterator[ImageServer]:
    with serving(image, cert=None) as server:
        yield server


def add(root: Path, server: ImageServer, *options: str) -> list[str]:
    return [
        *CLI, "template", "add", "base", server.url("/slow.qcow2"), "--format", "qcow2",
        "--root", str(root), "--backend", "qcow2", *options,
    ]  # fmt: skip


def run_on_a_terminal(argv: list[str], *, columns: int = 120) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a pty (stdout a pipe) ``columns`` wide (0: a size nobody
    set); its exit status, stdout, and what it wrote on the terminal."""
    leader, follower = os.openpty()
    rows = 30 if columns else 0
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        env=cli_env(environ=ENVIRON),
        text=True,
    )
    os.close(follower)
    terminal: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # EIO: every writer closed the pty
                return
            if not data:
                return
            terminal.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    out, _ = process.communicate(timeout=120)
    reader.join(30)
    os.close(leader)
    return process.returncode, out, b"".join(terminal).decode("utf-8", "replace")


@pytest.mark.parametrize("columns", [120, 0])
def test_a_bar_on_a_terminal(tmp_path: Path, http: ImageServer, image: bytes, columns: int) -> None:
    code, out, shown = run_on_a_terminal(add(tmp_path / "root", http), columns=columns)
    assert code == 0, shown
    assert out.startswith("cached template base")
    # tqdm's line: what is copied, bytes done of the total, time spent < ETA, the rate.
    assert "fetch (download)" in shown
    assert re.search(r"\d(\.\d+)?M?/8\.\d\dM \[\d\d:\d\d<\d\d:\d\d, *\d.*B/s\]", shown), shown
    assert "100%" in shown
    assert "\r" in shown  # redrawn in place
    assert "error" not in shown


def test_nothing_on_a_terminal_with_quiet_or_none(tmp_path: Path, http: ImageServer) -> None:
    code, out, shown = run_on_a_terminal(add(tmp_path / "a", http, "--quiet"))
    assert (code, out, shown) == (0, "", "")
    code, out, shown = run_on_a_terminal(add(tmp_path / "b", http, "--progress", "none"))
    assert (code, shown) == (0, "")
    assert out.startswith("cached template base")


def test_nothing_on_a_pipe(tmp_path: Path, http: ImageServer) -> None:
    done = subprocess.run(
        add(tmp_path / "root", http),
        env=cli_env(environ=ENVIRON),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    assert done.stderr == ""
    assert done.stdout.startswith("cached template base")
    # --progress bar draws on a pipe too, when asked.
    forced = subprocess.run(
        add(tmp_path / "forced", http, "--progress", "bar"),
        env=cli_env(environ=ENVIRON),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert forced.returncode == 0
    assert "fetch (download)" in forced.stderr and "100%" in forced.stderr


def test_json_lines_on_stderr_when_asked(tmp_path: Path, http: ImageServer, image: bytes) -> None:
    code, out, shown = run_on_a_terminal(add(tmp_path / "quiet", http, "--json"))
    assert (code, shown) == (0, "")  # --json alone: no progress, even on a terminal
    assert json.loads(out)["state"] == "cached"
    done = subprocess.run(
        add(tmp_path / "root", http, "--json", "--progress", "json"),
        env=cli_env(environ=ENVIRON),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["template"] == "base"  # stdout: the one document
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert events[0] == {
        "progress": "fetch", "step": "download", "done": 0, "total": None, "final": False,
    }  # fmt: skip
    assert events[-1] == {
        "progress": "fetch", "step": "download", "done": len(image), "total": len(image),
        "final": True,
    }  # fmt: skip
    dones = [e["done"] for e in events]
    assert dones == sorted(dones) and len(events) >= 4


def test_a_bad_progress_value_is_one_line_exit_1(tmp_path: Path, http: ImageServer) -> None:
    done = subprocess.run(
        add(tmp_path / "root", http, "--progress", "loud"),
        env=cli_env(environ=ENVIRON),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert error_line(done.stderr) == (
        "diskledger: error: --progress 'loud': choose auto, bar, json or none"
    )
    assert done.stdout == ""
    assert not (tmp_path / "root").exists()  # refused before the ledger is opened
    assert http.requests["/slow.qcow2"] == 0
