"""The examples run as their readers would run them: a subprocess, checked by exit status and
by the facts they print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_orchestrator_example(tmp_path: Path, qemu_img: None) -> None:
    # No DISKLEDGER_* from outside: the example configures itself, and an armed fault here would
    # kill the wrong process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISKLEDGER_")}
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "orchestrator.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout

    assert "created: vm-1/root 67108864 bytes (repeat: same answer)" in out
    assert "refused: op id op-create-vm-1 was used for create vm-1/root" in out
    # The two children were really killed, and recovery settled each by its rule.
    assert "killed at after-effect" in out and "killed at mid-effect" in out
    assert "recovered: create op-create-vm-2 -> roll-forward" in out
    assert "recovered: create op-create-vm-3 -> roll-back" in out
    # The retry with the same op id returns the recovered disk; the rolled-back id is refused.
    assert "retried: op-create-vm-2 -> vm-2/root created" in out
    assert "retried: op-create-vm-3 -> refused" in out
    assert "retried: op-create-vm-3b -> vm-3/root created" in out
    assert "not found: no such disk: vm-404/root" in out

    # The trail: an intent and an outcome for every operation, recovery's marked as such.
    trail = _trails(out)
    assert _ops(trail["vm-1/root"]) == [("op-create-vm-1", "started", "completed")]
    assert _ops(trail["vm-2/root"]) == [("op-create-vm-2", "started", "completed")]
    assert _ops(trail["vm-3/root"]) == [
        ("op-create-vm-3", "started", "failed"),
        ("op-create-vm-3b", "started", "completed"),
    ]
    assert any("completed" in line and "roll-forward" in line for line in trail["vm-2/root"])
    assert any("failed" in line and "roll-back" in line for line in trail["vm-3/root"])


def _trails(out: str) -> dict[str, list[str]]:
    trails: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if match := re.fullmatch(r"history (\S+):", line):
            current = trails.setdefault(match[1], [])
        elif current is not None and line.startswith("  "):
            current.append(line.strip())
        else:
            current = None
    return trails


def _ops(lines: list[str]) -> list[tuple[str, ...]]:
    """(op id, phases...) of each operation in a trail, in order; facts left out."""
    phases: dict[str, list[str]] = {}
    for line in lines:
        match = re.fullmatch(r"\d+ disk\.create\.(\w+) op=(\S+).*", line)
        if match:
            phases.setdefault(match[2], []).append(match[1])
    return [(op, *seen) for op, seen in phases.items()]
