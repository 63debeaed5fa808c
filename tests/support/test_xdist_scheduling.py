"""A worker that dies mid-run under ``--dist loadgroup``: the run goes on and ends (see
tests/support/xdist_scheduling.py), every other test runs once, and the one that crashed is
reported failed and not run again.

Each case is a real pytest run on two xdist workers, in a subprocess, over a small generated
suite whose tests log every run: some tests pass, one group of tests runs on one worker, and one
test aborts its worker (``os.abort``, as a C library does) the first time it runs. Without the
plugin, xdist 3.8.0 never ends that run (checked by hand: still waiting after ten minutes). The
run's log then holds the dead worker's native stacks (tests/support/crash_report.py).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SUITE = {
    "pytest.ini": "[pytest]\n",
    "conftest.py": """
import os

def pytest_runtest_call(item):
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(item.nodeid + "\\n")
""",
    "test_a.py": """
import time
import pytest

@pytest.mark.parametrize("n", range(24))
def test_passes(n):
    time.sleep(0.05)
""",
    "test_b_group.py": """
import pytest

@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("n", range(6))
def test_in_a_group(n):
    pass
""",
    "test_c.py": """
import os
import time
import pytest

@pytest.mark.parametrize("n", range(12))
def test_before(n):
    time.sleep(0.05)

def test_aborts_its_worker():
    os.abort()

@pytest.mark.parametrize("n", range(12))
def test_after(n):
    time.sleep(0.05)
""",
}
PASSING = 24 + 6 + 12 + 12
CRASHING = "test_c.py::test_aborts_its_worker"


@pytest.fixture(scope="module")
def crashed_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Counter[str], Path]:
    """One run of the suite (a dozen seconds): its outcome, how often each test ran, its directory."""
    tmp_path = tmp_path_factory.mktemp("crashed-run")
    suite = tmp_path / "suite"
    suite.mkdir()
    for name, text in SUITE.items():
        (suite / name).write_text(text)
    log = tmp_path / "runs.log"
    log.touch()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-p",
            "tests.support.xdist_scheduling",
            "-p",
            "tests.support.crash_report",
            "-p",
            "no:cacheprovider",
            "-c",
            str(suite / "pytest.ini"),
            "--rootdir",
            str(suite),
            str(suite),
        ],
        cwd=suite,
        env={**os.environ, "PYTHONPATH": str(REPO), "RUN_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=300,  # a run that hangs fails here rather than stalling the suite
    )
    runs = Counter(line.split("@")[0] for line in log.read_text().splitlines())
    return done, runs, suite


def test_a_run_with_a_crashed_worker_ends_and_runs_every_test_once(
    crashed_run: tuple[subprocess.CompletedProcess[str], Counter[str], Path],
) -> None:
    done, runs, _ = crashed_run

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"1 failed, {PASSING} passed" in done.stdout, done.stdout
    assert f"FAILED {CRASHING}" in done.stdout
    assert "worker 'gw" in done.stdout and "crashed while running" in done.stdout
    assert runs[CRASHING] == 1
    assert sum(runs.values()) == PASSING + 1
    assert set(runs.values()) == {1}, runs


def test_the_log_has_the_crashed_workers_native_stacks(
    crashed_run: tuple[subprocess.CompletedProcess[str], Counter[str], Path],
) -> None:
    done, _, suite = crashed_run

    assert "crashed: its native stacks" in done.stdout, done.stdout
    if _cores_readable():
        assert "Program terminated with signal SIGABRT" in done.stdout, done.stdout
        assert re.search(r"#\d+ .* in (__GI_)?abort ", done.stdout), done.stdout
        assert "; removed)" in done.stdout
        assert not list(suite.glob("core*"))
    else:
        assert "no core" in done.stdout, done.stdout


def _cores_readable() -> bool:
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    return hard != 0 and "/" not in pattern and shutil.which("gdb") is not None
