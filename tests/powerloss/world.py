"""What the power-loss rig compares: the world a caller sees through diskledger, reduced to
JSON. The workload (in the guest) records it after every operation it ran; the checker (on
this machine, after replaying a crash state and recovering it) observes it again and compares.

Self-contained (diskledger and the standard library only): it is copied into the guest beside
``workload.py``.

The world has one entry per engine (``raw`` and ``qcow2``: each its own root and SQLite
ledger on the file system under test) with its disks and templates, and the files of the
exports directory (on that file system too). A disk is its state, size, format, snapshots and
the SHA-256 of its guest-visible bytes (``qemu-img convert`` to raw): "its data".
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from diskledger.backends.qemu import Luks
from diskledger.engine import Config, Engine, encryption
from diskledger.errors import DiskLedgerError
from diskledger.events import split_type
from diskledger.states import DiskState

__all__ = [
    "BACKENDS",
    "HOST",
    "MOUNT",
    "differences",
    "digest",
    "exports_of",
    "ledger_outcomes",
    "observe",
    "observe_disk",
    "observe_exports",
    "open_engines",
    "recover_and_judge",
    "root_of",
    "touched",
]

MOUNT = "/var/lib/diskledger-powerloss"
"""Where the file system under test is mounted, in the guest and (in a private mount namespace)
here: the ledger records absolute locations."""
BACKENDS = ("raw", "qcow2")
HOST = "powerloss"
"""``DISKLEDGER_HOST`` on both sides: the guest's operations are this machine's to recover (the
boot id tells that their writer is gone)."""


def root_of(backend: str, mount: str = MOUNT) -> str:
    return os.path.join(mount, backend)


def exports_of(mount: str = MOUNT) -> str:
    return os.path.join(mount, "exports")


def digest(location: str, fmt: str, luks: Luks | None = None) -> str:
    """SHA-256 of what a guest would read from the image (``luks``: an encrypted one's key)."""
    if fmt == "raw":
        return _sha256(location)
    source = ["-f", fmt, location]
    if luks is not None:
        source = [*luks.object_args(), "--image-opts", luks.image_opts(location, fmt)]
    with tempfile.TemporaryDirectory(prefix="pl-digest-") as scratch:
        flat = os.path.join(scratch, "flat.raw")
        done = subprocess.run(
            ["qemu-img", "convert", "-U", *source, "-O", "raw", flat],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            return f"unreadable: {done.stderr.strip()}"
        return _sha256(flat)


def _sha256(path: str) -> str:
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as image:
            while chunk := image.read(1 << 20):
                hasher.update(chunk)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return hasher.hexdigest()


def observe_disk(engine: Engine, disk: str) -> dict[str, Any] | None:
    """The disk as a caller sees it, or None when it does not exist."""
    view = next((d for d in engine.list() if d.disk == disk), None)
    if view is None or view.state is DiskState.ABSENT:
        return None
    assert view.location is not None and view.format is not None, view
    seen = {
        "state": view.state.value,
        "size": view.size,
        "format": view.format,
        "snapshots": list(view.snapshot_names),
        "pending": view.pending is not None,
        "encrypted": view.encryption is not None,
    }
    if view.encryption is None:
        return {**seen, "digest": digest(view.location, view.format)}
    try:
        with encryption.luks(engine.runtime, view.encryption) as luks:
            return {**seen, "digest": digest(view.location, view.format, luks)}
    except DiskLedgerError as exc:  # its key is gone: verify says so too
        return {**seen, "digest": f"no key: {type(exc).__name__}"}


def observe_exports(mount: str = MOUNT) -> dict[str, str]:
    directory = exports_of(mount)
    if not os.path.isdir(directory):
        return {}
    return {name: _sha256(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}


def observe(engines: Mapping[str, Engine], mount: str = MOUNT) -> dict[str, Any]:
    """The whole world, every disk read."""
    world: dict[str, Any] = {}
    for backend, engine in engines.items():
        disks = {}
        for view in engine.list():
            seen = observe_disk(engine, view.disk)
            if seen is not None:
                disks[view.disk] = seen
        world[backend] = {
            "disks": disks,
            "templates": sorted(t.template for t in engine.list_templates()),
        }
    world["exports"] = observe_exports(mount)
    return world


def differences(
    expected: Mapping[str, Any],
    seen: Mapping[str, Any],
    where: str = "",
    ignore: frozenset[str] = frozenset(),
) -> list[str]:
    """Where two worlds differ, one line each; paths in ``ignore`` (``raw/disks/vm-1/root``)
    are not compared."""
    out: list[str] = []
    for key in sorted(set(expected) | set(seen)):
        path = f"{where}/{key}" if where else str(key)
        if path in ignore:
            continue
        if key not in seen:
            out.append(f"{path}: missing (expected {_short(expected[key])})")
        elif key not in expected:
            out.append(f"{path}: unexpected {_short(seen[key])}")
        elif isinstance(expected[key], Mapping) and isinstance(seen[key], Mapping):
            out.extend(differences(expected[key], seen[key], path, ignore))
        elif expected[key] != seen[key]:
            out.append(f"{path}: {_short(seen[key])}, expected {_short(expected[key])}")
    return out


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def touched(record: Mapping[str, Any]) -> frozenset[str]:
    """What a call whose result nobody saw may have changed, as ``differences`` paths."""
    backend, args = record["backend"], record["args"]
    if record["op"] == "add_template":
        return frozenset({f"{backend}/templates"})
    if record["op"] == "export":
        return frozenset({"exports"})
    return frozenset({f"{backend}/disks/{args[0]}"})


def recover_and_judge(
    engines: Mapping[str, Engine], records: Sequence[Mapping[str, Any]], lo: int, hi: int
) -> dict[str, Any]:
    """Recover every engine as an operator would after the power came back, verify it, and
    judge what a caller now sees against what the calls promised.

    ``records[n]`` is call ``n`` (0: the world before any), with the world after it, or with
    ``world`` None for a call that was running when the power went (nobody saw its result).
    Calls up to ``lo`` had returned: each must be in the ledger with the outcome its caller saw
    and the world must be at least theirs; it may be that of any later call up to ``hi``."""
    problems: list[str] = []
    recovered = {"forward": 0, "back": 0, "ledger_tails": 0}
    for backend, engine in engines.items():
        report = engine.recover()
        recovered["forward"] += len(report.rolled_forward)
        recovered["back"] += len(report.rolled_back)
        recovered["ledger_tails"] += report.ledger_tail is not None
        for kind in ("needs_operator", "in_flight", "deferred"):
            if getattr(report, kind):
                problems.append(f"{backend}: recovery left {kind}: {getattr(report, kind)}")
        verified = engine.verify()
        if not verified.ok:
            problems.append(f"{backend}: verify: {json.dumps(verified.to_json())[:600]}")
    outcomes = ledger_outcomes(engines)
    for record in records[1 : lo + 1]:
        problems.extend(_ledger_agrees(record, outcomes))
    seen = observe(engines)
    matched = None
    for n in range(lo, min(hi, len(records) - 1) + 1):
        world, ignore = records[n].get("world"), frozenset[str]()
        if world is None:
            world, ignore = records[n - 1]["world"], touched(records[n])
        if not differences(world, seen, ignore=ignore):
            matched = n
            break
    if matched is None:
        diff = differences(records[lo]["world"], seen)
        problems.append(
            f"the world matches no call from {lo} to {hi}; against {lo}: " + "; ".join(diff[:6])
        )
    else:
        for record in records[lo + 1 : matched + 1]:
            problems.extend(_ledger_agrees(record, outcomes))
    return {"recovered": recovered, "matched": matched, "problems": problems}


def ledger_outcomes(engines: Mapping[str, Engine]) -> dict[str, str]:
    """Each op id's last phase in the ledgers."""
    phases: dict[str, str] = {}
    for engine in engines.values():
        for event in engine.history():
            op_id = event.metadata.op_id
            if op_id is not None:
                phase = split_type(event.type)[2]
                if phase:
                    phases[op_id] = phase
    return phases


def _ledger_agrees(record: Mapping[str, Any], outcomes: Mapping[str, str]) -> list[str]:
    op_id = record.get("op_id")
    if op_id is None or record["returned"] is None:  # a guest write, or nobody saw its result
        return []
    phase = outcomes.get(op_id)
    if record["returned"] and phase != "completed":
        return [f"call {record['n']} ({record['op']} {record['args']}) returned, ledger: {phase}"]
    if not record["returned"] and phase == "completed":
        return [
            f"call {record['n']} ({record['op']}) raised {record.get('error')}, ledger: completed"
        ]
    return []


def open_engines(mount: str = MOUNT, *, recover: bool = False) -> dict[str, Engine]:
    environ = {**os.environ, "DISKLEDGER_HOST": HOST}
    return {
        backend: Engine.open(
            Config.load(
                root=root_of(backend, mount), backend=backend, recover=recover, environ=environ
            )
        )
        for backend in BACKENDS
    }
