"""Every operation, on both backends, killed at every fault point in a real CLI process.

Each case prepares the state the operation needs in a fresh root (in-process, fast), runs the
operation as ``python -m diskledger.cli`` with ``DISKLEDGER_FAULT=<op>@<point>`` (the process
SIGKILLs itself there), then runs ``diskledger recover --json`` in a new process and checks: the
ledger verifies, nothing is pending, no temporary name is left (under the root, or beside an
export), and the disk is exactly as before the operation or exactly as after it -- before it for
``after-intent``, after it for ``after-outcome``, and the one the recovery decision names.

The ``:eio`` variant fails the effect in the middle instead: the CLI reports one error line and
the in-process compensation leaves nothing for recovery.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from diskledger.engine import Engine
from tests.backends.helpers import has_pattern, info, write_pattern
from tests.recovery.helpers import (
    ABSENT,
    MiB,
    after,
    assert_consistent,
    cli,
    created_state,
    disk_state,
    error_line,
    open_engine,
    template_state,
)

BACKENDS = ("raw", "qcow2")
POINTS = ("after-intent", "mid-effect", "after-effect", "after-outcome")
DISK = "vm-1/root"
OLD_DATA, NEW_DATA = 0x42, 0x41  # what a rollback case's disk holds before, and restores

Observe = Callable[[Engine], dict[str, Any]]


@dataclass
class Case:
    """One operation, ready to run: its CLI arguments, how to observe the state it changes, and
    that state before and after it."""

    fault_op: str
    argv: list[str]
    observe: Observe
    old: dict[str, Any]
    new: dict[str, Any]
    beside: list[Path] = field(default_factory=list)
    """Directories outside the root it writes to (an export's)."""
    after_intent: tuple[str, ...] = ("old",)


@dataclass
class Setup:
    root: Path
    backend: str
    sources: dict[str, Path]
    scratch: Path

    def engine(self) -> Engine:
        return open_engine(self.root, self.backend)

    def base_disk(self, engine: Engine) -> dict[str, Any]:
        """A disk from a 16 MiB template of the backend's format; returns its state."""
        engine.add_template("base", self.sources[self.backend], self.backend)
        engine.create(DISK, template="base")
        return disk_state(engine, DISK)

    def disk_observer(self) -> Observe:
        return lambda engine: disk_state(engine, DISK)


def _template_add(s: Setup, engine: Engine) -> Case:
    source = s.sources[s.backend]
    new = {
        "state": "cached",
        "format": s.backend,
        "virtual_size": 16 * MiB,
        "location": str(s.root / "templates" / "base"),
        "source": str(source),
    }
    return Case(
        "fetch",
        ["template", "add", "base", str(source), "--format", s.backend],
        lambda e: template_state(e, "base"),
        ABSENT,
        new,
    )


def _create(s: Setup, engine: Engine) -> Case:
    template = engine.add_template("base", s.sources[s.backend], s.backend)
    backing = template.location if s.backend == "qcow2" else None
    new = created_state(s.root, DISK, s.backend, 16 * MiB, template="base", backing=backing)
    return Case(
        "create", ["disk", "create", DISK, "--template", "base"], s.disk_observer(), ABSENT, new
    )


def _blank_create(s: Setup, engine: Engine) -> Case:
    new = created_state(s.root, DISK, s.backend, 8 * MiB)
    argv = ["disk", "create", DISK, "--blank", "--size", "8M"]
    return Case("create", argv, s.disk_observer(), ABSENT, new)


def _resize(s: Setup, engine: Engine) -> Case:
    old = s.base_disk(engine)
    argv = ["disk", "resize", DISK, "32M"]
    return Case("resize", argv, s.disk_observer(), old, after(old, "resize", 32 * MiB))


def _snapshot(s: Setup, engine: Engine) -> Case:
    old = s.base_disk(engine)
    argv = ["disk", "snapshot", DISK, "s1"]
    return Case("snapshot", argv, s.disk_observer(), old, after(old, "snapshot", "s1"))


def _rollback(s: Setup, engine: Engine) -> Case:
    """The snapshot holds NEW_DATA at a smaller size; the disk grew since and holds OLD_DATA."""
    s.base_disk(engine)
    location = str(s.root / "disks" / DISK)
    write_pattern(location, s.backend, NEW_DATA)
    engine.snapshot(DISK, "s1")
    engine.resize(DISK, 32 * MiB)
    write_pattern(location, s.backend, OLD_DATA)
    ledger = disk_state(engine, DISK)

    def observe(e: Engine) -> dict[str, Any]:
        data = next((p for p in (OLD_DATA, NEW_DATA) if has_pattern(location, s.backend, p)), None)
        return {**disk_state(e, DISK), "data": data}

    # The ledger says the same before and after a rollback; the data tells them apart. With no
    # temporary copy left, the recovery rule runs a rollback to its end (it is idempotent): at
    # after-intent, too, the data may be the snapshot's.
    return Case(
        "rollback",
        ["disk", "rollback", DISK, "s1"],
        observe,
        {**ledger, "data": OLD_DATA},
        {**after(ledger, "rollback"), "data": NEW_DATA},
        after_intent=("old", "new"),
    )


def _remove_snapshot(s: Setup, engine: Engine) -> Case:
    s.base_disk(engine)
    engine.snapshot(DISK, "s1")
    old = disk_state(engine, DISK)
    argv = ["disk", "remove-snapshot", DISK, "s1"]
    return Case(
        "remove-snapshot", argv, s.disk_observer(), old, after(old, "remove-snapshot", "s1")
    )


def _export(s: Setup, engine: Engine) -> Case:
    old = s.base_disk(engine)
    exports = s.scratch / "exports"
    exports.mkdir()
    target = exports / "out.img"

    def observe(e: Engine) -> dict[str, Any]:
        exported = None
        if target.exists():
            seen = info(str(target), s.backend)
            exported = (seen["format"], seen["virtual-size"], seen.get("backing-filename"))
        return {**disk_state(e, DISK), "export": exported}

    return Case(
        "export",
        ["disk", "export", DISK, str(target)],
        observe,
        {**old, "export": None},
        {**after(old, "export"), "export": (s.backend, 16 * MiB, None)},
        beside=[exports],
    )


def _delete(s: Setup, engine: Engine) -> Case:
    s.base_disk(engine)
    engine.snapshot(DISK, "s1")
    engine.snapshot(DISK, "s2")
    old = disk_state(engine, DISK)
    return Case("delete", ["disk", "delete", DISK], s.disk_observer(), old, after(old, "delete"))


OPERATIONS: dict[str, Callable[[Setup, Engine], Case]] = {
    "template-add": _template_add,
    "create": _create,
    "blank-create": _blank_create,
    "resize": _resize,
    "snapshot": _snapshot,
    "rollback": _rollback,
    "remove-snapshot": _remove_snapshot,
    "export": _export,
    "delete": _delete,
}


def prepare(op: str, backend: str, tmp_path: Path, sources: dict[str, Path]) -> tuple[Setup, Case]:
    setup = Setup(tmp_path / "root", backend, sources, tmp_path)
    with setup.engine() as engine:
        case = OPERATIONS[op](setup, engine)
        assert case.observe(engine) == case.old
    return setup, case


def observe(setup: Setup, case: Case) -> dict[str, Any]:
    with setup.engine() as engine:
        return case.observe(engine)


def recover_in_new_process(setup: Setup) -> dict[str, Any]:
    done = cli(setup.root, "recover", backend=setup.backend)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["needs_operator"] == [], report
    assert report["in_flight"] == [], report  # the writer was SIGKILLed: it is not running
    return report


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPERATIONS))
def test_killed_operation_recovers_to_old_or_new(
    op: str, backend: str, point: str, tmp_path: Path, small_templates: dict[str, Path]
) -> None:
    setup, case = prepare(op, backend, tmp_path, small_templates)

    crashed = cli(setup.root, *case.argv, backend=backend, fault=f"{case.fault_op}@{point}")
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)

    report = recover_in_new_process(setup)
    decided = [o["decision"] for o in (*report["rolled_forward"], *report["rolled_back"])]
    if point == "after-outcome":
        assert report["pending"] == [], report
    else:
        assert len(report["pending"]) == 1 and len(decided) == 1, report

    assert_consistent(setup.root, *case.beside)
    state = observe(setup, case)
    assert state in (case.old, case.new), f"neither before nor after {op}: {state}"
    end = "new" if state == case.new else "old"
    if decided:  # the state is the one the recorded decision names
        assert end == ("old" if decided == ["roll-back"] else "new"), (decided, state)
    allowed = {"after-intent": case.after_intent, "after-outcome": ("new",)}.get(point)
    assert allowed is None or end in allowed, f"{op} killed at {point} ended {end}: {state}"


# In-place effects that cannot be undone once they began: the in-process handler finishes them;
# when finishing meets the same error (the fault fires again), it records needs-operator, and a
# recovery in a fresh process finishes the operation.
HALF_DONE_IN_PLACE = {("rollback", "qcow2")}


@pytest.mark.parametrize(("op", "backend"), [(op, b) for op in OPERATIONS for b in BACKENDS])
def test_failed_effect_is_compensated_in_process(
    op: str, backend: str, tmp_path: Path, small_templates: dict[str, Path]
) -> None:
    setup, case = prepare(op, backend, tmp_path, small_templates)

    failed = cli(setup.root, *case.argv, backend=backend, fault=f"{case.fault_op}@mid-effect:eio")
    assert failed.returncode == 1, (failed.returncode, failed.stdout, failed.stderr)
    assert "Input/output error" in error_line(failed.stderr)

    report = recover_in_new_process(setup)
    assert_consistent(setup.root, *case.beside)
    state = observe(setup, case)
    if (op, backend) in HALF_DONE_IN_PLACE:
        assert [o["op"] for o in report["rolled_forward"]] == [op], report
        assert state == case.new, state
    else:
        assert report["pending"] == [], report  # the failure and its compensation were recorded
        assert state == case.old


def test_a_delete_that_fails_part_way_leaves_no_drift(
    tmp_path: Path, small_templates: dict[str, Path]
) -> None:
    setup, case = prepare("delete", "raw", tmp_path, small_templates)
    stray = setup.root / "disks" / f"{DISK}.snapshots" / "stray"
    stray.write_text("not the ledger's")

    failed = cli(setup.root, *case.argv)
    assert failed.returncode == 1
    assert "Directory not empty" in error_line(failed.stderr)
    with setup.engine() as engine:
        report = engine.verify()
    assert report.orphans == [str(stray)]  # the operator's to deal with
    assert report.drift == [], report.drift  # but the ledger must not claim what is gone
