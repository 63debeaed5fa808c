"""Every operation, on every backend, killed at every fault point in a real CLI process.

Each case prepares the state the operation needs in a fresh root (in-process, fast), runs the
operation as ``python -m diskledger.cli`` with ``DISKLEDGER_FAULT=<op>@<point>`` (the process
SIGKILLs itself there), then runs ``diskledger recover --json`` in a new process and checks: the
ledger verifies, nothing is pending, no temporary name is left (under the root, or beside an
export), and the disk is exactly as before the operation or exactly as after it -- before it for
``after-intent``, after it for ``after-outcome``, and the one the recovery decision names.

On ``rbd`` (a real one-node Ceph cluster, see tests/support/ceph.py; the CLI processes get its
settings through their environment) the pools must also hold exactly what the ledger names: each
live disk's image and recorded snapshots, each template with its protected ``snap``, and in the
snapshot pool each image a completed direct-snapshot published; no ``.tmp-`` name anywhere.
``import`` runs on every backend; ``flatten`` and ``direct-snapshot`` only where the backend can.

The ``:eio`` variant fails the effect in the middle instead: the CLI reports one error line and
the in-process compensation leaves nothing for recovery.
"""

from __future__ import annotations

import json
import signal
import subprocess
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
    PoolView,
    after,
    assert_consistent,
    cli,
    clone_backing,
    created_state,
    disk_format,
    disk_location,
    disk_state,
    error_line,
    open_engine,
    rbd_spec,
    template_location,
    template_state,
)
from tests.support.ceph import SNAPSHOT_POOL, CephCluster

BACKENDS = ("raw", "qcow2", "rbd")
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
    ceph: CephCluster | None = None
    """The cluster, for ``rbd``."""

    @property
    def environ(self) -> dict[str, str] | None:
        """The DISKLEDGER_* settings of the cluster, for the engines and CLI processes."""
        return self.ceph.environ() if self.ceph is not None else None

    @property
    def template_format(self) -> str:
        """The format templates are declared as: the backend's own (an rbd template is raw)."""
        return disk_format(self.backend)

    def engine(self) -> Engine:
        return open_engine(self.root, self.backend, self.environ)

    def cli(self, *argv: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
        return cli(self.root, *argv, backend=self.backend, fault=fault, environ=self.environ)

    def add_template(self, engine: Engine) -> None:
        engine.add_template("base", self.sources[self.template_format], self.template_format)

    def base_disk(self, engine: Engine) -> dict[str, Any]:
        """A disk from a 16 MiB template of the backend's format; returns its state."""
        self.add_template(engine)
        engine.create(DISK, template="base")
        return disk_state(engine, DISK)

    def disk_observer(self) -> Observe:
        return lambda engine: disk_state(engine, DISK)

    def disk_data(self) -> tuple[str, str]:
        """The disk as qemu-io opens it: a path and format, or the rbd image as admin."""
        location = disk_location(self.root, DISK, self.backend)
        if self.ceph is not None:
            return rbd_spec(self.ceph, location), "raw"
        return location, self.backend


def _template_add(s: Setup, engine: Engine) -> Case:
    source = s.sources[s.template_format]
    new = {
        "state": "cached",
        "format": s.template_format,
        "virtual_size": 16 * MiB,
        "location": template_location(s.root, "base", s.backend),
        "source": str(source),
    }
    return Case(
        "fetch",
        ["template", "add", "base", str(source), "--format", s.template_format],
        lambda e: template_state(e, "base"),
        ABSENT,
        new,
    )


def _template_gc(s: Setup, engine: Engine) -> Case:
    """An unused template collected at once (``--older-than 0``)."""
    s.add_template(engine)
    old = template_state(engine, "base")
    return Case(
        "remove",
        ["template", "gc", "--older-than", "0"],
        lambda e: template_state(e, "base"),
        old,
        ABSENT,
    )


def _create(s: Setup, engine: Engine) -> Case:
    s.add_template(engine)
    backing = clone_backing(s.root, "base", s.backend)
    new = created_state(s.root, DISK, s.backend, 16 * MiB, template="base", backing=backing)
    return Case(
        "create", ["disk", "create", DISK, "--template", "base"], s.disk_observer(), ABSENT, new
    )


def _import(s: Setup, engine: Engine) -> Case:
    """A qcow2 file imported: kept as it is by qcow2, converted to raw by raw and rbd."""
    source = s.sources["qcow2"]
    new = created_state(s.root, DISK, s.backend, 16 * MiB)
    argv = ["disk", "import", DISK, str(source), "--format", "qcow2"]
    return Case("import", argv, s.disk_observer(), ABSENT, new)


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
    location, fmt = s.disk_data()
    write_pattern(location, fmt, NEW_DATA)
    engine.snapshot(DISK, "s1")
    engine.resize(DISK, 32 * MiB)
    write_pattern(location, fmt, OLD_DATA)
    ledger = disk_state(engine, DISK)

    def observe(e: Engine) -> dict[str, Any]:
        data = next((p for p in (OLD_DATA, NEW_DATA) if has_pattern(location, fmt, p)), None)
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
            seen = info(str(target), s.template_format)
            exported = (seen["format"], seen["virtual-size"], seen.get("backing-filename"))
        return {**disk_state(e, DISK), "export": exported}

    return Case(
        "export",
        ["disk", "export", DISK, str(target)],
        observe,
        {**old, "export": None},
        {**after(old, "export"), "export": (s.template_format, 16 * MiB, None)},
        beside=[exports],
    )


def _flatten(s: Setup, engine: Engine) -> Case:
    """A clone of the template, flattened: it keeps its data and no longer has a parent."""
    old = s.base_disk(engine)
    assert old["backing"] is not None
    # Nothing to undo once the intent is durable: the rule runs a flatten to its end.
    return Case(
        "flatten",
        ["disk", "flatten", DISK],
        s.disk_observer(),
        old,
        {**old, "backing": None},
        after_intent=("old", "new"),
    )


def _direct_snapshot(s: Setup, engine: Engine) -> Case:
    """A copy of the disk published in the snapshot pool as ``img-1@snap``; the disk unchanged
    (its short-lived snapshot ``ds`` is gone either way: the pool check sees it)."""
    old = s.base_disk(engine)
    assert s.ceph is not None
    ceph = s.ceph

    def observe(e: Engine) -> dict[str, Any]:
        with PoolView(ceph) as pools:
            return {**disk_state(e, DISK), "published": sorted(pools.contents(SNAPSHOT_POOL))}

    return Case(
        "direct-snapshot",
        ["disk", "direct-snapshot", DISK, "ds", "img-1"],
        observe,
        {**old, "published": []},
        {**old, "published": ["img-1", "img-1@snap"]},
    )


def _delete(s: Setup, engine: Engine) -> Case:
    s.base_disk(engine)
    engine.snapshot(DISK, "s1")
    engine.snapshot(DISK, "s2")
    old = disk_state(engine, DISK)
    return Case("delete", ["disk", "delete", DISK], s.disk_observer(), old, after(old, "delete"))


OPERATIONS: dict[str, Callable[[Setup, Engine], Case]] = {
    "template-add": _template_add,
    "template-gc": _template_gc,
    "create": _create,
    "blank-create": _blank_create,
    "import": _import,
    "resize": _resize,
    "snapshot": _snapshot,
    "rollback": _rollback,
    "remove-snapshot": _remove_snapshot,
    "export": _export,
    "flatten": _flatten,
    "direct-snapshot": _direct_snapshot,
    "delete": _delete,
}
RBD_ONLY = ("flatten", "direct-snapshot")
"""Operations only the rbd backend can do (the CLI refuses them elsewhere: tests/test_cli*.py)."""

CASES = [(op, b) for op in OPERATIONS for b in BACKENDS if b == "rbd" or op not in RBD_ONLY]


def prepare(
    op: str, backend: str, tmp_path: Path, sources: dict[str, Path], request: pytest.FixtureRequest
) -> tuple[Setup, Case]:
    ceph: CephCluster | None = None
    if backend == "rbd":
        ceph = request.getfixturevalue("rbd_pools")
    setup = Setup(tmp_path / "root", backend, sources, tmp_path, ceph)
    with setup.engine() as engine:
        case = OPERATIONS[op](setup, engine)
        assert case.observe(engine) == case.old
    return setup, case


def observe(setup: Setup, case: Case) -> dict[str, Any]:
    with setup.engine() as engine:
        return case.observe(engine)


def consistent(setup: Setup, case: Case) -> None:
    assert_consistent(setup.root, *case.beside, backend=setup.backend, ceph=setup.ceph)


def recover_in_new_process(setup: Setup) -> dict[str, Any]:
    done = setup.cli("recover")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["needs_operator"] == [], report
    assert report["in_flight"] == [], report  # the writer was SIGKILLed: it is not running
    return report


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize(("op", "backend"), CASES)
def test_killed_operation_recovers_to_old_or_new(
    op: str,
    backend: str,
    point: str,
    tmp_path: Path,
    small_templates: dict[str, Path],
    request: pytest.FixtureRequest,
) -> None:
    setup, case = prepare(op, backend, tmp_path, small_templates, request)

    crashed = setup.cli(*case.argv, fault=f"{case.fault_op}@{point}")
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)

    report = recover_in_new_process(setup)
    decided = [o["decision"] for o in (*report["rolled_forward"], *report["rolled_back"])]
    if point == "after-outcome":
        assert report["pending"] == [], report
    else:
        assert len(report["pending"]) == 1 and len(decided) == 1, report

    consistent(setup, case)
    state = observe(setup, case)
    assert state in (case.old, case.new), f"neither before nor after {op}: {state}"
    end = "new" if state == case.new else "old"
    if decided:  # the state is the one the recorded decision names
        assert end == ("old" if decided == ["roll-back"] else "new"), (decided, state)
    allowed = {"after-intent": case.after_intent, "after-outcome": ("new",)}.get(point)
    assert allowed is None or end in allowed, f"{op} killed at {point} ended {end}: {state}"


# In-place effects that cannot be undone once they began: the in-process handler finishes them;
# when finishing meets the same error (the fault fires again), it records needs-operator, and a
# recovery in a fresh process finishes the operation. On rbd: a rollback has reverted the image
# before it grows it back, a flatten is always finished, and a delete has removed the first
# snapshot.
HALF_DONE_IN_PLACE = {
    ("rollback", "qcow2"),
    ("rollback", "rbd"),
    ("flatten", "rbd"),
    ("delete", "rbd"),
}
# A template removal moves the template aside (one rename) before removing it: an error after
# that is finished at once, in process (nothing can bind a template moved aside).
FINISHED_IN_PROCESS = {("template-gc", b) for b in BACKENDS}


@pytest.mark.parametrize(("op", "backend"), CASES)
def test_failed_effect_is_compensated_in_process(
    op: str,
    backend: str,
    tmp_path: Path,
    small_templates: dict[str, Path],
    request: pytest.FixtureRequest,
) -> None:
    setup, case = prepare(op, backend, tmp_path, small_templates, request)

    failed = setup.cli(*case.argv, fault=f"{case.fault_op}@mid-effect:eio")
    assert failed.returncode == 1, (failed.returncode, failed.stdout, failed.stderr)
    assert "Input/output error" in error_line(failed.stderr)

    report = recover_in_new_process(setup)
    consistent(setup, case)
    state = observe(setup, case)
    if (op, backend) in HALF_DONE_IN_PLACE:
        assert [o["op"] for o in report["rolled_forward"]] == [op], report
        assert state == case.new, state
    elif (op, backend) in FINISHED_IN_PROCESS:
        assert report["pending"] == [], report
        assert state == case.new, state
    else:
        assert report["pending"] == [], report  # the failure and its compensation were recorded
        assert state == case.old


def test_a_delete_that_fails_part_way_leaves_no_drift(
    tmp_path: Path, small_templates: dict[str, Path], request: pytest.FixtureRequest
) -> None:
    setup, case = prepare("delete", "raw", tmp_path, small_templates, request)
    stray = setup.root / "disks" / f"{DISK}.snapshots" / "stray"
    stray.write_text("not the ledger's")

    failed = cli(setup.root, *case.argv)
    assert failed.returncode == 1
    assert "Directory not empty" in error_line(failed.stderr)
    with setup.engine() as engine:
        report = engine.verify()
    assert report.orphans == [str(stray)]  # the operator's to deal with
    assert report.drift == [], report.drift  # but the ledger must not claim what is gone
