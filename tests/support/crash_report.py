"""A crashed xdist worker's native stacks in the run's log (a pytest plugin: tests/conftest.py
imports its hooks).

When a C library aborts a worker (librbd, say), xdist prints the Python stacks faulthandler
wrote and reports the test failed. What the library said as it aborted went to that test's
captured stderr, a temporary file that died with the process, and which C++ thread aborted is
nowhere. So every worker may dump core, and when one goes down with an error the controller
prints gdb's backtrace of the aborting thread, one of every thread, and the messages glibc
(``__abort_msg``) and Ceph (``ceph_assert``'s ``g_assert_*``) leave in memory as they abort,
then removes the core (hundreds of MB).

It reads a core the kernel writes in the worker's directory (``core_pattern`` ``core``, as on
Debian without systemd-coredump); under any other pattern it says where to look instead.

``live_stacks`` reads the same out of a process that is still running: a test whose subprocess
outlives its deadline reports where it waits (tests/recovery/test_ceph_faults.py).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "live_stacks",
    "native_report",
    "pytest_configure",
    "pytest_testnodedown",
    "pytest_unconfigure",
]

_DIRECTORY = "DISKLEDGER_WORKER_PIDS"
"""The controller's directory where each worker writes its pid, named after the worker."""
_DIRECTORY_KEY = pytest.StashKey[Path]()

_GDB = (
    "set pagination off",
    "set print thread-events off",
    "echo \\n-- glibc's abort message (__abort_msg):\\n",
    "x/s *(char **)&__abort_msg + 4",
    "echo \\n-- ceph_assert's message:\\n",
    "x/s &'ceph::global::g_assert_msg'",
    "echo \\n-- the thread that aborted:\\n",
    "bt 40",
    "echo \\n-- every thread:\\n",
    "info threads",
    "thread apply all bt 16",
)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        pids = os.environ.get(_DIRECTORY)
        if pids:
            _, hard = resource.getrlimit(resource.RLIMIT_CORE)
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
            Path(pids, config.workerinput["workerid"]).write_text(str(os.getpid()))
    elif config.getoption("numprocesses", None):
        # Set before the workers start, so that they inherit it; a run of its own inside a test
        # (tests/support/test_xdist_scheduling.py) replaces its parent's.
        made = Path(tempfile.mkdtemp(prefix="diskledger-workers-"))
        config.stash[_DIRECTORY_KEY] = made
        os.environ[_DIRECTORY] = str(made)


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = config.stash.get(_DIRECTORY_KEY, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    directory = node.config.stash.get(_DIRECTORY_KEY, None)
    if error is None or directory is None:
        return
    worker = str(node.gateway.id)
    pid_file = Path(directory, worker)
    if not pid_file.exists():
        return  # it died before it was configured: nothing ran in it
    report = native_report(
        int(pid_file.read_text()),
        Path(node.workerinfo["cwd"]),
        node.workerinfo["executable"],
        since=pid_file.stat().st_mtime,
    )
    reporter = node.config.pluginmanager.get_plugin("terminalreporter")
    reporter.write_sep("-", f"{worker} crashed: its native stacks")
    for line in report.splitlines():
        reporter.write_line(line)


def native_report(pid: int, cwd: Path, executable: str, *, since: float) -> str:
    """gdb's account of the core process ``pid`` (started in ``cwd``) left, which is then
    removed; or why there is none to read."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    name = pattern.replace("%p", str(pid)).replace("%P", str(pid))
    if pattern.startswith("|") or "/" in pattern or "%" in name:
        return f"no core to read here: core_pattern is {pattern!r} (look there for pid {pid})"
    candidates = [cwd / f"{name}.{pid}", cwd / name]  # with .pid: core_uses_pid
    core = next((c for c in candidates if c.exists() and c.stat().st_mtime >= since), None)
    if core is None:
        limit = resource.getrlimit(resource.RLIMIT_CORE)[1]
        return f"no core from pid {pid} in {cwd} (core_pattern {pattern!r}, hard limit {limit})"
    if shutil.which("gdb") is None:
        return f"{core}: gdb is not installed to read it (left in place)"
    commands = [arg for command in _GDB for arg in ("-ex", command)]
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["gdb", "-batch", "-nx", "-q", *commands, executable, str(core)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        text = done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        return f"{core}: gdb did not finish reading it in 300 s (left in place)"
    core.unlink()
    took = time.monotonic() - started
    return f"{text.rstrip()}\n(gdb read {core.name} of pid {pid} in {took:.0f} s; removed)"


def live_stacks(pid: int) -> str:
    """gdb's backtrace of every thread of the running process ``pid`` (which it stops for the
    moment it reads them): where a process that should have ended is waiting."""
    if shutil.which("gdb") is None:
        return "gdb is not installed to read its stacks"
    try:
        done = subprocess.run(
            [
                "gdb",
                "-batch",
                "-nx",
                "-q",
                "-p",
                str(pid),
                "-ex",
                "set pagination off",
                "-ex",
                "thread apply all bt 24",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return f"gdb did not read the stacks of pid {pid} in 120 s"
    return (done.stdout + done.stderr).rstrip()
