"""Encrypted disks killed at every fault point, the key's own points included.

Like tests/recovery/test_fault_matrix.py: the operation runs as a real CLI process that SIGKILLs
itself at ``<op>@<point>``, recovery runs in a new process, and then the ledger verifies, nothing
is pending, no temporary is left, the disk is as before or as after the operation, and the key
directory holds exactly the keys of the live encrypted disks: never a leaked key, never a disk
whose key is gone. ``after-key-created`` (the key is durable, its intent is not) and
``before-key-destroyed`` (the data is gone, the key not yet) are the points encryption adds.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from diskledger.engine import Engine
from diskledger.keys import default_key_dir
from tests.recovery.helpers import (
    ABSENT,
    MiB,
    assert_consistent,
    cli,
    disk_state,
    open_engine,
)

DISK = "vm-1/root"
FAST = {"DISKLEDGER_LUKS_ITER_TIME": "10"}


@dataclass
class Case:
    argv: list[str]
    old: dict[str, Any]
    new: dict[str, Any]


def _engine(root: Path) -> Engine:
    return open_engine(root, "qcow2", FAST)


def _state(engine: Engine) -> dict[str, Any]:
    state = disk_state(engine, DISK)
    if state == ABSENT:
        return ABSENT
    view = engine.show(DISK)
    return {**state, "encrypted": view.encryption is not None}


def _blank(root: Path, sources: dict[str, Path]) -> Case:
    new = {
        "state": "created",
        "size": 8 * MiB,
        "format": "qcow2",
        "template": None,
        "backing": None,
        "snapshots": [],
        "location": str(root / "disks" / "vm-1" / "root"),
        "encrypted": True,
    }
    return Case(["disk", "create", DISK, "--blank", "--size", "8M", "--encrypt"], ABSENT, new)


def _from_template(root: Path, sources: dict[str, Path]) -> Case:
    with _engine(root) as engine:
        engine.add_template("base", sources["raw"], "raw")
    new = {
        "state": "created",
        "size": 16 * MiB,
        "format": "qcow2",
        "template": "base",
        "backing": None,  # a copy encrypted on its way in, not an overlay
        "snapshots": [],
        "location": str(root / "disks" / "vm-1" / "root"),
        "encrypted": True,
    }
    return Case(["disk", "create", DISK, "--template", "base", "--encrypt"], ABSENT, new)


def _import(root: Path, sources: dict[str, Path]) -> Case:
    case = _blank(root, sources)
    argv = ["disk", "import", DISK, str(sources["qcow2"]), "--format", "qcow2", "--encrypt"]
    return Case(argv, ABSENT, {**case.new, "size": 16 * MiB})


def _encrypted_disk(root: Path) -> dict[str, Any]:
    with _engine(root) as engine:
        engine.create(DISK, size=8 * MiB, encrypt=True)
        engine.snapshot(DISK, "s1")
        return _state(engine)


def _delete(root: Path, sources: dict[str, Path]) -> Case:
    return Case(["disk", "delete", DISK], _encrypted_disk(root), ABSENT)


def _resize(root: Path, sources: dict[str, Path]) -> Case:
    old = _encrypted_disk(root)
    return Case(["disk", "resize", DISK, "16M"], old, {**old, "size": 16 * MiB})


def _snapshot(root: Path, sources: dict[str, Path]) -> Case:
    old = _encrypted_disk(root)
    return Case(["disk", "snapshot", DISK, "s2"], old, {**old, "snapshots": ["s1", "s2"]})


SETUPS: dict[str, Callable[[Path, dict[str, Path]], Case]] = {
    "blank": _blank,
    "template": _from_template,
    "import": _import,
    "delete": _delete,
    "resize": _resize,
    "snapshot": _snapshot,
}

# (setup, fault spec, what the disk may be after recovery)
CASES = [
    ("blank", "create@after-key-created", ("old",)),
    ("blank", "create@after-intent", ("old",)),
    ("blank", "create@mid-effect", ("old",)),
    ("blank", "create@after-effect", ("new",)),
    ("blank", "create@after-outcome", ("new",)),
    # The effect fails, the compensation removes the data and is killed before the key goes.
    ("blank", "create@mid-effect:eio,create@before-key-destroyed", ("old",)),
    ("template", "create@after-key-created", ("old",)),
    ("template", "create@mid-effect", ("old",)),
    ("template", "create@after-effect", ("new",)),
    ("template", "create@mid-effect:eio,create@before-key-destroyed", ("old",)),
    ("import", "import@after-key-created", ("old",)),
    ("import", "import@mid-effect", ("old",)),
    ("import", "import@after-effect", ("new",)),
    ("import", "import@mid-effect:eio,import@before-key-destroyed", ("old",)),
    ("delete", "delete@after-intent", ("old",)),
    ("delete", "delete@mid-effect", ("old",)),
    ("delete", "delete@before-key-destroyed", ("new",)),
    ("delete", "delete@after-effect", ("new",)),
    ("delete", "delete@after-outcome", ("new",)),
    ("resize", "resize@mid-effect", ("old",)),
    ("resize", "resize@after-effect", ("new",)),
    ("snapshot", "snapshot@mid-effect", ("old",)),
    ("snapshot", "snapshot@after-effect", ("new",)),
]


def key_files(root: Path) -> set[str]:
    directory = Path(default_key_dir(root))
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def named_keys(engine: Engine) -> set[str]:
    return {f"{v.encryption.key}.key" for v in engine.list() if v.encryption is not None}


@pytest.mark.parametrize(("setup", "fault", "allowed"), CASES)
def test_a_kill_leaves_neither_a_leaked_key_nor_a_disk_without_its_key(
    tmp_path: Path,
    small_templates: dict[str, Path],
    setup: str,
    fault: str,
    allowed: tuple[str, ...],
) -> None:
    root = tmp_path / "root"
    case = SETUPS[setup](root, small_templates)
    done = cli(root, *case.argv, backend="qcow2", fault=fault, environ=FAST)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)
    recovered = cli(root, "recover", backend="qcow2", environ=FAST)
    assert recovered.returncode == 0, recovered.stderr
    report = json.loads(recovered.stdout)
    assert report["needs_operator"] == [] and report["in_flight"] == [], report
    assert_consistent(root, backend="qcow2")
    with _engine(root) as engine:
        state = _state(engine)
        assert state in [getattr(case, which) for which in allowed], (state, report)
        # The key directory holds exactly the keys of the live encrypted disks.
        assert key_files(root) == named_keys(engine), report
    if "after-key-created" in fault:
        assert len(report["keys_destroyed"]) == 1  # the key no intent named
