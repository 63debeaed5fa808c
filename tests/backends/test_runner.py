from __future__ import annotations

import errno
import os
import select
import subprocess
import threading
from pathlib import Path

import pytest

from diskledger.backends import runner
from diskledger.errors import CommandFailed, CommandNotFound, CommandTimedOut, StorageIOError


def test_returns_stdout() -> None:
    assert runner.run(["echo", "hello"]) == "hello\n"


def test_missing_tool_names_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CommandNotFound, match=r"qemu-img .*qemu-utils") as caught:
        runner.run(["qemu-img", "info", "-f", "raw", "x"])
    assert caught.value.command == ("qemu-img", "info", "-f", "raw", "x")
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_missing_prlimit_is_named_not_the_tool_it_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An untrusted command runs under prlimit: when prlimit is the one missing, the error
    names it (and util-linux), not the tool it would have limited."""
    (tmp_path / "qemu-img").symlink_to("/bin/true")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CommandNotFound) as caught:
        runner.run(["qemu-img", "info", "-f", "raw", "x"], untrusted=True)
    assert str(caught.value) == "prlimit is not installed (install the Debian package util-linux)"
    assert caught.value.command[:2] == ("prlimit", runner.UNTRUSTED_LIMITS[0])


def test_failure_carries_command_status_and_stderr(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.qcow2")
    argv = ["qemu-img", "info", "-f", "qcow2", missing]
    with pytest.raises(CommandFailed) as caught:
        runner.run(argv)
    error = caught.value
    assert error.command == tuple(argv) and error.returncode == 1
    assert "No such file or directory" in error.stderr
    assert str(error).startswith("qemu-img failed: ") and str(error).endswith(
        error.stderr.strip().splitlines()[-1]
    )


def test_timeout() -> None:
    with pytest.raises(CommandTimedOut, match=r"sleep ran longer than 0\.2 s"):
        runner.run(["sleep", "5"], timeout=0.2)


def test_one_watchdog_thread_serves_every_command() -> None:
    for _ in range(5):
        runner.run(["true"])
    with pytest.raises(CommandTimedOut):
        runner.run(["sleep", "5"], timeout=0.1)
    runner.run(["true"])
    names = [thread.name for thread in threading.enumerate()]
    assert names.count("diskledger-watchdog") == 1
    assert not [thread for thread in threading.enumerate() if isinstance(thread, threading.Timer)]


def test_a_forked_child_gets_its_own_watchdog() -> None:
    runner.run(["true"])  # the parent's watchdog runs
    pid = os.fork()
    if pid == 0:  # the parent's thread does not run here: a timeout needs the child's own
        code = 1
        try:
            runner.run(["sleep", "5"], timeout=0.1)
        except CommandTimedOut:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_no_space_left_is_a_storage_error(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.write_bytes(b"x" * 4096)
    with pytest.raises(StorageIOError) as caught:
        runner.run(["cp", str(source), "/dev/full"])
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.command[0] == "cp" and caught.value.returncode == 1


def test_io_error_is_a_storage_error() -> None:
    with pytest.raises(StorageIOError) as caught:
        runner.run(["sh", "-c", "echo 'read: Input/output error' >&2; exit 1"])
    assert caught.value.errno == errno.EIO


def test_never_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    out = runner.run(["echo", f"$(touch {marker})", ";", "true"])
    assert out.startswith("$(touch") and not marker.exists()


def _hold_write_lock(image: Path) -> subprocess.Popen[bytes]:
    """A qemu-io process with ``image`` open read-write (and so write-locked) until its stdin
    closes, as a writer's qemu-img is until it exits. Its prompt says the image is open (probing
    with another qemu-img instead would race its open for the lock)."""
    holder = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", str(image)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert holder.stdout is not None
    ready, _, _ = select.select([holder.stdout], [], [], 30)
    prompt = holder.stdout.read1(64) if ready else b""  # type: ignore[attr-defined]
    if not prompt.startswith(b"qemu-io>"):
        holder.kill()
        _, err = holder.communicate()
        raise AssertionError(f"qemu-io did not open the image: {err!r}")
    return holder


def test_a_command_waits_for_a_write_lock_that_goes_away(tmp_path: Path, qemu_img: None) -> None:
    image = tmp_path / "disk.qcow2"
    runner.run(["qemu-img", "create", "-f", "qcow2", str(image), "16M"])
    holder = _hold_write_lock(image)
    threading.Timer(0.5, lambda: holder.communicate(b"")).start()  # a dying writer lets go
    runner.run(["qemu-img", "resize", "-f", "qcow2", str(image), "32M"])
    assert holder.wait(5) == 0
    info = runner.run(["qemu-img", "info", "-f", "qcow2", "--output=json", str(image)])
    assert '"virtual-size": 33554432' in info


def test_a_write_lock_that_stays_is_the_error(tmp_path: Path, qemu_img: None) -> None:
    image = tmp_path / "disk.qcow2"
    runner.run(["qemu-img", "create", "-f", "qcow2", str(image), "16M"])
    holder = _hold_write_lock(image)
    try:
        with pytest.raises(CommandFailed, match="Is another process using the image"):
            runner.run(["qemu-img", "resize", "-f", "qcow2", str(image), "32M"], lock_wait=0.3)
    finally:
        holder.communicate(b"")
