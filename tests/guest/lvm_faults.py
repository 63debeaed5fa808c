"""The crash fault matrix on the lvm backend, run INSIDE the test guest (tests/guest/test_lvm.py
copies this file in and runs it with ``python3``; like ``lvm_inguest.py`` it is self-contained:
the guest has diskledger, not this repository's ``tests`` package).

Every operation is killed (SIGKILL, at its own hand: ``diskledger.faults``) at every fault point
-- ``after-intent``, ``mid-effect``, ``after-effect``, ``after-outcome`` -- then recovered, and
the result is checked as tests/recovery/test_fault_matrix.py checks the host backends: nothing
needs an operator, nothing is left pending, ``verify`` finds no orphan and no drift, the disk is
exactly as before the operation or exactly as after it (the one the recorded decision names;
before it at ``after-intent``, after it at ``after-outcome``), and the volume group holds exactly
the volumes that state names: no ``+.tmp-``, ``+.deleting`` or ``+.grow`` volume, nothing tagged
``diskledger`` the ledger does not name, nothing untagged. A resize's grown region must read
zero, and on a thick group it must be made of extents that held a pattern just before (left by
an operator's volume removed without clearing): a kill anywhere in a resize never hands stale
data to the disk.

Python starts slowly under emulation (seconds), so this is one process: diskledger is imported
once, each case is prepared here, its operation runs in a forked child (which kills itself at
the fault point), and recovery and the checks run here again. Each case has a fresh root and
starts from an empty group.

    python3 lvm_faults.py sample|all     (DISKLEDGER_LVM_VG, DISKLEDGER_LVM_SPARSE as usual)

One JSON line per case, then a summary line; exit status 1 when any case failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockio import read_direct

from diskledger import faults
from diskledger.backends.lvm import OWNER_TAG, disk_lv, snapshot_lv
from diskledger.engine import Config, Engine
from diskledger.errors import DiskLedgerError

VG = os.environ["DISKLEDGER_LVM_VG"]
POOL = os.environ.get("DISKLEDGER_LVM_SPARSE") or None
VARIANT = "sparse" if POOL else "thick"
POINTS = ("after-intent", "mid-effect", "after-effect", "after-outcome")
MiB = 1 << 20
DISK = "vm-1/root"
TEMPLATE_SIZE = 4 * MiB
GROWN = 8 * MiB
STALE = 0xA5  # what freed extents hold before a thick resize takes them
OLD_DATA, NEW_DATA = 0x42, 0x41  # a rollback case's disk before, and its snapshot
ABSENT: dict[str, Any] = {"state": "absent"}


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def lvs(*fields: str) -> list[dict[str, str]]:
    out = run("lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
              ",".join(fields), VG)  # fmt: skip
    rows: list[dict[str, str]] = json.loads(out)["report"][0]["lv"]
    return [r for r in rows if r["lv_name"] != POOL]


def remove_all() -> None:
    left = [f"{VG}/{r['lv_name']}" for r in lvs("lv_name")]
    if left:
        run("lvremove", "--yes", "-f", *left)


def fill(path: str, byte: int, length: int, offset: int = 0) -> None:
    with open(path, "r+b", buffering=0) as device:
        device.seek(offset)
        device.write(bytes([byte]) * length)
        os.fsync(device.fileno())


def extents(lv: str) -> set[tuple[str, int]]:
    """(PV, extent number) of every extent of ``lv``."""
    found: set[tuple[str, int]] = set()
    for row in lvs("lv_name", "seg_pe_ranges"):
        if row["lv_name"] != lv:
            continue
        for part in row["seg_pe_ranges"].split():
            pv, _, span = part.rpartition(":")
            first, _, last = span.partition("-")
            found.update((pv, n) for n in range(int(first), int(last or first) + 1))
    return found


def leave_stale_extents(length: int) -> set[tuple[str, int]]:
    """An operator's volume of ``length`` filled with ``STALE`` and removed without clearing:
    the extents it held, now free and the first a new thick volume gets."""
    run("lvcreate", "--yes", "-W", "n", "-Z", "n", "-n", "stale", "-L", f"{length}b", VG)
    fill(f"/dev/{VG}/stale", STALE, length)
    held = extents("stale")
    run("lvremove", "--yes", "-f", f"{VG}/stale")
    return held


@dataclass
class Case:
    fault_op: str
    call: Callable[[Engine], object]
    observe: Callable[[Engine], dict[str, Any]]
    old: dict[str, Any]
    new: dict[str, Any]
    after_intent: tuple[str, ...] = ("old",)
    check: Callable[[Engine, str], None] | None = None
    """More checks once recovered, given which end the case reached."""
    outside: list[Path] = field(default_factory=list)


@dataclass
class Setup:
    root: Path
    sources: dict[str, Path]

    def engine(self) -> Engine:
        environ = {k: v for k, v in os.environ.items() if k.startswith("DISKLEDGER_")}
        environ.pop("DISKLEDGER_FAULT", None)
        config = Config.load(root=self.root, backend="lvm", recover=False, environ=environ)
        return Engine.open(config)

    def base_disk(self, engine: Engine) -> dict[str, Any]:
        engine.add_template("base", self.sources["raw"], "raw")
        engine.create(DISK, template="base")
        return disk_state(engine)


def disk_state(engine: Engine) -> dict[str, Any]:
    try:
        view = engine.show(DISK)
    except DiskLedgerError:
        return ABSENT
    if view.state.value == "absent":
        return ABSENT
    return {
        "state": view.state.value,
        "size": view.size,
        "format": view.format,
        "template": view.template,
        "snapshots": list(view.snapshot_names),
        "location": view.location,
    }


def template_state(engine: Engine) -> dict[str, Any]:
    try:
        view = engine.template("base")
    except DiskLedgerError:
        return ABSENT
    if view.state.value == "absent":
        return ABSENT
    return {"state": view.state.value, "format": view.format, "size": view.virtual_size}


def after(before: dict[str, Any], op: str, arg: Any = None) -> dict[str, Any]:
    if op == "resize":
        state = "resized" if before["state"] == "created" else before["state"]
        return {**before, "state": state, "size": arg}
    if op == "snapshot":
        return {**before, "state": "snapshotted", "snapshots": [*before["snapshots"], arg]}
    if op == "remove-snapshot":
        left = [s for s in before["snapshots"] if s != arg]
        return {**before, "state": "snapshotted" if left else "created", "snapshots": left}
    if op == "delete":
        return ABSENT
    raise AssertionError(op)


def created(size: int, template: str | None) -> dict[str, Any]:
    return {
        "state": "created",
        "size": size,
        "format": "raw",
        "template": template,
        "snapshots": [],
        "location": f"{VG}/{disk_lv(*DISK.split('/'))}",
    }


# -- the operations, each prepared in a fresh root ----------------------------------------------


def template_add(s: Setup, engine: Engine) -> Case:
    new = {"state": "cached", "format": "raw", "size": TEMPLATE_SIZE}
    return Case(
        "fetch",
        lambda e: e.add_template("base", s.sources["raw"], "raw"),
        template_state,
        ABSENT,
        new,
    )


def create(s: Setup, engine: Engine) -> Case:
    engine.add_template("base", s.sources["raw"], "raw")
    new = created(TEMPLATE_SIZE, "base")
    return Case("create", lambda e: e.create(DISK, template="base"), disk_state, ABSENT, new)


def blank_create(s: Setup, engine: Engine) -> Case:
    new = created(8 * MiB, None)
    return Case("create", lambda e: e.create(DISK, size=8 * MiB), disk_state, ABSENT, new)


def import_(s: Setup, engine: Engine) -> Case:
    new = created(TEMPLATE_SIZE, None)

    def call(e: Engine) -> object:
        return e.import_disk(DISK, s.sources["qcow2"], "qcow2")

    return Case("import", call, disk_state, ABSENT, new)


def resize(s: Setup, engine: Engine) -> Case:
    """The extents a thick resize will take held ``STALE`` just before; the grown region must
    read zero whichever way recovery goes."""
    old = s.base_disk(engine)
    stale = leave_stale_extents(16 * MiB) if POOL is None else set()
    device = f"/dev/{old['location']}"

    def check(e: Engine, end: str) -> None:
        if end != "new":
            return
        grown = read_direct(device, TEMPLATE_SIZE, GROWN - TEMPLATE_SIZE)
        assert grown == bytes(len(grown)), f"the grown region holds {set(grown)}"
        if POOL is None:  # the grown region is made of the extents that held STALE
            taken = extents(disk_lv(*DISK.split("/")))
            assert len(taken & stale) == (GROWN - TEMPLATE_SIZE) // MiB, (taken, stale)

    return Case(
        "resize", lambda e: e.resize(DISK, GROWN), disk_state, old, after(old, "resize", GROWN),
        check=check,
    )  # fmt: skip


def snapshot(s: Setup, engine: Engine) -> Case:
    old = s.base_disk(engine)
    return Case(
        "snapshot", lambda e: e.snapshot(DISK, "s1"), disk_state, old, after(old, "snapshot", "s1")
    )


def rollback(s: Setup, engine: Engine) -> Case:
    """The snapshot holds NEW_DATA at the template's size; the disk grew since and holds
    OLD_DATA. After the rollback the disk holds NEW_DATA, and zeroes past the snapshot's end."""
    s.base_disk(engine)
    device = f"/dev/{engine.show(DISK).location}"
    fill(device, NEW_DATA, TEMPLATE_SIZE)
    engine.snapshot(DISK, "s1")
    engine.resize(DISK, GROWN)
    fill(device, OLD_DATA, GROWN)
    ledger = disk_state(engine)

    def observe(e: Engine) -> dict[str, Any]:
        head, tail = read_direct(device, 0, 4096), read_direct(device, GROWN - 4096, 4096)
        data = {bytes([OLD_DATA]) * 4096: "old", bytes([NEW_DATA]) * 4096: "new"}.get(head)
        return {**disk_state(e), "data": data, "tail": sorted(set(tail))}

    return Case(
        "rollback",
        lambda e: e.rollback(DISK, "s1"),
        observe,
        {**ledger, "data": "old", "tail": [OLD_DATA]},
        {**ledger, "data": "new", "tail": [0]},
        after_intent=("old", "new"),  # nothing to undo: the rule runs a rollback to its end
    )


def remove_snapshot(s: Setup, engine: Engine) -> Case:
    s.base_disk(engine)
    engine.snapshot(DISK, "s1")
    old = disk_state(engine)
    new = after(old, "remove-snapshot", "s1")
    return Case("remove-snapshot", lambda e: e.remove_snapshot(DISK, "s1"), disk_state, old, new)


def export(s: Setup, engine: Engine) -> Case:
    old = s.base_disk(engine)
    exports = s.root.parent / "exports"
    exports.mkdir()
    target = exports / "out.img"

    def observe(e: Engine) -> dict[str, Any]:
        size = target.stat().st_size if target.exists() else None
        return {**disk_state(e), "export": size, "beside": sorted(os.listdir(exports))}

    return Case(
        "export",
        lambda e: e.export(DISK, target, "raw"),
        observe,
        {**old, "export": None, "beside": []},
        {**old, "export": TEMPLATE_SIZE, "beside": ["out.img"]},
        outside=[exports],
    )


def delete(s: Setup, engine: Engine) -> Case:
    s.base_disk(engine)
    engine.snapshot(DISK, "s1")
    engine.snapshot(DISK, "s2")
    old = disk_state(engine)
    return Case("delete", lambda e: e.delete(DISK), disk_state, old, ABSENT)


OPERATIONS: dict[str, Callable[[Setup, Engine], Case]] = {
    "template-add": template_add,
    "create": create,
    "blank-create": blank_create,
    "import": import_,
    "resize": resize,
    "snapshot": snapshot,
    "rollback": rollback,
    "remove-snapshot": remove_snapshot,
    "export": export,
    "delete": delete,
}


SAMPLE = {
    "thick": [
        ("create", "mid-effect"),
        ("import", "after-outcome"),
        ("resize", "mid-effect"),  # killed with its zeroed +.grow volume still there
        ("resize", "after-effect"),  # the grown region: extents that held STALE, read zero
        ("snapshot", "after-effect"),
        ("rollback", "after-intent"),
        ("delete", "mid-effect"),  # the disk renamed +.deleting, half cleared
    ],
    "sparse": [
        ("template-add", "after-intent"),
        ("blank-create", "after-effect"),
        ("resize", "mid-effect"),
        ("snapshot", "mid-effect"),
        ("remove-snapshot", "mid-effect"),
        ("export", "after-outcome"),
        ("delete", "after-effect"),
    ],
}
"""What ``make test`` runs: every operation at least once across the two variants, every point
on each, and what differs most between them (clearing, full-copy and thin snapshots, a thick
resize's zeroing) where it differs."""


def cases(which: str) -> list[tuple[str, str]]:
    """``all``: every operation at every point; ``sample``: ``SAMPLE`` for this variant."""
    if which == "all":
        return [(op, point) for op in OPERATIONS for point in POINTS]
    return SAMPLE[VARIANT]


# -- one case -----------------------------------------------------------------------------------


def expected_volumes(state: dict[str, Any]) -> set[str]:
    if state.get("state") in (None, "absent", "cached"):
        return set()
    disk = disk_lv(*DISK.split("/"))
    return {disk, *(snapshot_lv(disk, s) for s in state["snapshots"])}


def run_case(op: str, point: str, sources: dict[str, Path]) -> dict[str, Any]:
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="case-", dir=os.environ.get("TMPDIR", "/tmp")))
    setup = Setup(scratch / "root", sources)
    result: dict[str, Any] = {"variant": VARIANT, "op": op, "point": point}
    try:
        with setup.engine() as engine:
            case = OPERATIONS[op](setup, engine)
            assert case.observe(engine) == case.old, (case.observe(engine), case.old)
        prepared = time.monotonic()

        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            code = 3
            try:
                with faults.armed(f"{case.fault_op}@{point}:kill"), setup.engine() as engine:
                    case.call(engine)
                code = 2  # not killed: the fault point was never reached
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"the operation was not killed at {point}: exit {os.waitstatus_to_exitcode(status)}"
        )
        killed = time.monotonic()

        with setup.engine() as engine:
            report = engine.recover()
            assert not report.needs_operator and not report.in_flight, report.to_json()
            assert not report.deferred, report.to_json()
            decided = [o.decision for o in (*report.rolled_forward, *report.rolled_back)]
            if point == "after-outcome":
                assert not report.pending, report.to_json()
            else:
                assert len(report.pending) == 1 and len(decided) == 1, report.to_json()
            checked = engine.verify()
            assert checked.ok, checked.to_json()
            state = case.observe(engine)
            assert state in (case.old, case.new), f"neither before nor after: {state}"
            end = "new" if state == case.new else "old"
            if decided:
                assert end == ("old" if decided == ["roll-back"] else "new"), (decided, end)
            allowed = {"after-intent": case.after_intent, "after-outcome": ("new",)}.get(point)
            assert allowed is None or end in allowed, f"killed at {point}, ended {end}"
            volumes = {r["lv_name"]: r["lv_tags"] for r in lvs("lv_name", "lv_tags")}
            wanted = expected_volumes(disk_state(engine))
            assert set(volumes) == wanted, f"volumes {sorted(volumes)}, the ledger names {wanted}"
            untagged = [lv for lv, tags in volumes.items() if OWNER_TAG not in tags.split(",")]
            assert not untagged, f"volumes without the {OWNER_TAG} tag: {untagged}"
            for directory in case.outside:
                left = [n for n in os.listdir(directory) if ".tmp-" in n]
                assert not left, f"temporaries beside an export: {left}"
            if case.check is not None:
                case.check(engine, end)
        result.update(
            ok=True,
            decision=decided[0] if decided else None,
            end=end,
            seconds={
                "prepare": round(prepared - started, 2),
                "killed": round(killed - prepared, 2),
                "recover+check": round(time.monotonic() - killed, 2),
            },
        )
    except Exception as exc:  # reported, and the run goes on
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
    finally:
        try:
            remove_all()
        except AssertionError as exc:
            result.update(ok=False, error=f"{result.get('error', '')} cleanup: {exc}")
        shutil.rmtree(scratch, ignore_errors=True)
    result["total"] = round(time.monotonic() - started, 2)
    return result


def make_sources(directory: Path) -> dict[str, Path]:
    """The template: 4 MiB, its first MiB 0x5A; and the same as qcow2, for import."""
    raw = directory / "base.raw"
    with raw.open("wb") as f:
        f.write(b"\x5a" * MiB)
        f.truncate(TEMPLATE_SIZE)
    qcow2 = directory / "base.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    return {"raw": raw, "qcow2": qcow2}


def main(argv: list[str]) -> int:
    which = argv[0] if argv else "sample"
    if which not in ("sample", "all"):
        print("usage: lvm_faults.py sample|all", file=sys.stderr)
        return 2
    remove_all()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sources-") as directory:
        sources = make_sources(Path(directory))
        results = []
        for op, point in cases(which):
            result = run_case(op, point, sources)
            results.append(result)
            print(json.dumps(result), flush=True)
    failed = [r for r in results if not r["ok"]]
    summary = {
        "summary": True,
        "variant": VARIANT,
        "cases": len(results),
        "failed": len(failed),
        "seconds": round(time.monotonic() - started, 1),
        "decisions": {
            d: sum(1 for r in results if str(r.get("decision")) == d)
            for d in sorted({str(r.get("decision")) for r in results if r["ok"]})
        },
    }
    print(json.dumps(summary), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
