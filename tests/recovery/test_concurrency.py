"""Two CLI processes operate on one disk at the same moment: one wins, the other is refused.

Both processes are started ahead, imports done, and released together; the disk is a raw copy of
a template whose copies take real time, so the operations overlap. The loser must exit 1 with one
clear line (the disk is busy: an operation in flight, or the stream moved under it), and never
interleave: the ledger verifies, nothing leaks, and the disk shows exactly the winner's change.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from diskledger.engine import Engine
from tests.recovery.helpers import (
    MiB,
    WarmCli,
    after,
    assert_consistent,
    cli,
    cli_env,
    disk_state,
    error_line,
    open_engine,
)

DISK = "vm-1/root"
BUSY = re.compile(r"has an operation in flight|changed while this command ran")
# A refusal's exit status: 3 for an operation in flight (it may need `recover`), 1 for a
# stream that moved under the command (run it again).
BUSY_STATUS = {"has an operation in flight": 3, "changed while this command ran": 1}


def busy_status(stderr: str) -> int:
    match = BUSY.search(error_line(stderr))
    assert match, stderr
    return BUSY_STATUS[match.group(0)]


Race = tuple[list[str], list[str]]


def _snapshot_twice(engine: Engine, target: Path) -> Race:
    engine.create(DISK, template="big")
    return ["disk", "snapshot", DISK, "a"], ["disk", "snapshot", DISK, "b"]


def _rollback_and_export(engine: Engine, target: Path) -> Race:
    engine.create(DISK, template="big")
    engine.snapshot(DISK, "s0")
    return ["disk", "rollback", DISK, "s0"], ["disk", "export", DISK, str(target)]


def _resize_and_snapshot(engine: Engine, target: Path) -> Race:
    engine.create(DISK, template="big")
    return ["disk", "resize", DISK, "300M"], ["disk", "snapshot", DISK, "a"]


RACES: dict[str, Callable[[Engine, Path], Race]] = {
    "snapshot-snapshot": _snapshot_twice,
    "rollback-export": _rollback_and_export,
    "resize-snapshot": _resize_and_snapshot,
}


def expected_after(argv: list[str], old: dict[str, Any]) -> dict[str, Any]:
    """The disk's state after the winner ``argv`` ran on a disk whose state was ``old``."""
    op = argv[1]
    if op == "resize":
        return after(old, op, int(argv[3].removesuffix("M")) * MiB)
    return after(old, op, argv[3] if op != "export" else None)


@pytest.mark.parametrize("race", list(RACES))
def test_one_of_two_concurrent_operations_wins(
    race: str, tmp_path: Path, big_template: Path
) -> None:
    root, exports = tmp_path / "root", tmp_path / "exports"
    exports.mkdir()
    target = exports / "out.img"
    with open_engine(root) as engine:
        engine.add_template("big", big_template, "raw")
        argvs = RACES[race](engine, target)
        old = disk_state(engine, DISK)
    workers = [WarmCli(cli_env()), WarmCli(cli_env())]
    for worker in workers:
        worker.ready()
    for worker, argv in zip(workers, argvs, strict=True):
        worker.go(root, "raw", argv)
    results = [worker.finish() for worker in workers]

    codes = sorted(r.returncode for r in results)
    assert codes[0] == 0 and codes[1] in (1, 3), [(r.returncode, r.stderr) for r in results]
    winner = next(i for i, r in enumerate(results) if r.returncode == 0)
    loser = results[1 - winner]
    assert loser.returncode == busy_status(loser.stderr), loser.stderr
    assert loser.stdout == ""

    assert_consistent(root, exports)
    with open_engine(root) as engine:
        assert disk_state(engine, DISK) == expected_after(argvs[winner], old)
    assert target.exists() == (argvs[winner][1] == "export")


# Two creates racing: the loser may read the disk after the winner's intent. Shown here
# deterministically (a race would hit it only sometimes): the first writer is killed after its
# intent, and the second process does not recover on open. Either way it is busy, not "exists".
@pytest.mark.parametrize("what", ["create", "template-add"])
def test_second_create_while_one_is_pending_is_refused_as_busy(
    what: str, tmp_path: Path, small_templates: dict[str, Path]
) -> None:
    root = tmp_path / "root"
    if what == "create":
        with open_engine(root) as engine:
            engine.add_template("base", small_templates["raw"], "raw")
        argv, fault = ["disk", "create", DISK, "--template", "base"], "create@after-intent"
    else:
        argv = ["template", "add", "base", str(small_templates["raw"]), "--format", "raw"]
        fault = "fetch@after-intent"
    assert cli(root, *argv, fault=fault).returncode == -signal.SIGKILL

    second = cli(root, *argv)
    assert second.returncode == busy_status(second.stderr) == 3, second.stderr


def test_a_refused_transition_names_the_state_plainly(
    tmp_path: Path, small_templates: dict[str, Path]
) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        engine.add_template("base", small_templates["raw"], "raw")
        engine.create(DISK, template="base")
    refused = cli(root, "disk", "create", DISK, "--template", "base")
    assert refused.returncode == 1
    assert error_line(refused.stderr) == (
        f"diskledger: error: disk {DISK} already exists (created, 16.0 MiB); "
        "delete it first or pick another name"
    )
