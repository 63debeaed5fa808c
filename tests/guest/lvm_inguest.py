"""The lvm backend's tests that run INSIDE the test guest (tests/guest/test_lvm.py copies this
file into the guest and runs it there with pytest; its name keeps pytest on this host from
collecting it). The volume group is ``DISKLEDGER_LVM_VG``, thick, or sparse in the thin pool
``DISKLEDGER_LVM_SPARSE``; the host side makes and removes them.

Self-contained: the guest has diskledger and pytest (``/payload``), not this repository's
``tests`` package.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockio import read_direct

from diskledger.backends import Artifact, ArtifactKind, Backend
from diskledger.backends.lvm import LvmBackend, LvmSettings, disk_lv, snapshot_lv
from diskledger.engine import Config, Engine
from diskledger.errors import InvalidInput, InvalidName, InvalidSize
from diskledger.testing import BackendContract, FileStorage, StorageAccess

VG = os.environ["DISKLEDGER_LVM_VG"]
POOL = os.environ.get("DISKLEDGER_LVM_SPARSE") or None
MiB = 1 << 20


def lvm(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"
    return done.stdout


def report(command: str, fields: str, *target: str) -> list[dict[str, str]]:
    out = lvm(command, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields,
              *target)  # fmt: skip
    kind = {"lvs": "lv", "pvs": "pv", "vgs": "vg"}[command]
    rows: list[dict[str, str]] = json.loads(out)["report"][0][kind]
    return rows


def volumes() -> set[str]:
    """Every active volume of the group but the thin pool, as the kernel has them: what LVM
    made in ``/dev/VG`` (cheaper than an ``lvs`` under emulation, and every volume diskledger
    makes is active)."""
    try:
        return set(os.listdir(f"/dev/{VG}")) - {POOL or ""}
    except FileNotFoundError:
        return set()


def remove_all() -> None:
    left = sorted(volumes())
    if left:
        lvm("lvremove", "--yes", "-f", *(f"{VG}/{lv}" for lv in left))


class LvmStorage(FileStorage):
    """Volumes read and written through ``/dev/VG/LV`` as a guest's qemu would (raw), files
    under the root as ``FileStorage`` does; ``existing()`` lists both."""

    def read(self, location: str, fmt: str, offset: int, length: int) -> bytes:
        if fmt != "raw":
            # qemu-io's hex dump of megabytes takes seconds under emulation: a raw copy does not.
            raw = self.root / ".read.raw"
            lvm("qemu-img", "convert", "-f", fmt, "-O", "raw", location, str(raw))
            try:
                return super().read(str(raw), "raw", offset, length)
            finally:
                raw.unlink()
        return super().read(self._path(location), fmt, offset, length)

    def write(self, location: str, fmt: str, offset: int, data: bytes) -> None:
        super().write(self._path(location), fmt, offset, data)

    def existing(self) -> set[str]:
        return super().existing() | {f"{VG}/{lv}" for lv in volumes()}

    def _path(self, location: str) -> str:
        return f"/dev/{location}" if location.startswith(f"{VG}/") else location


def settings(**changes: object) -> LvmSettings:
    found = LvmSettings.from_environ(os.environ)
    assert found is not None
    return LvmSettings(**{**{f: getattr(found, f) for f in found.__slots__}, **changes})


@pytest.fixture
def clean() -> Iterator[None]:
    """Each test starts on an empty group (the host makes it so) and leaves it empty."""
    yield
    remove_all()


class TestLvmContract(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path, clean: None) -> Backend:
        return LvmBackend(str(tmp_path), settings())

    @pytest.fixture
    def storage(self, tmp_path: Path) -> StorageAccess:
        return LvmStorage(tmp_path)

    def artifact_names(self, artifact: Artifact) -> set[str]:
        if artifact.kind is ArtifactKind.LVM_SNAPSHOT:
            assert artifact.name is not None
            disk = artifact.location.partition("/")[2]
            return {f"{VG}/{snapshot_lv(disk, artifact.name)}"}
        return super().artifact_names(artifact)


# -- volume_clear: the freed extents, read back from the physical volume -----------------------


def extents(lv: str) -> list[tuple[str, int, int]]:
    """(PV, offset, length) in bytes of each segment of ``lv`` on its physical volumes."""
    extent = int(report("vgs", "vg_extent_size", VG)[0]["vg_extent_size"])
    starts = {row["pv_name"]: int(row["pe_start"]) for row in report("pvs", "pv_name,pe_start")}
    found = []
    for row in report("lvs", "seg_pe_ranges", f"{VG}/{lv}"):
        for part in row["seg_pe_ranges"].split():
            pv, _, span = part.rpartition(":")
            first, _, last = span.partition("-")
            found.append(
                (pv, starts[pv] + int(first) * extent, (int(last) - int(first) + 1) * extent)
            )
    return found


@pytest.mark.parametrize(
    "method, clear_mib, zeroed_mib",
    [("zero", 0, 4), ("zero", 1, 1), ("none", 0, 0), ("shred", 0, 0)],
    ids=["zero-all", "zero-first-MiB", "none-control", "shred"],
)
def test_volume_clear_on_delete(
    tmp_path: Path, clean: None, method: str, clear_mib: int, zeroed_mib: int
) -> None:
    """Write a pattern over a thick disk, delete it, and read its freed extents on the PV."""
    if POOL is not None:
        pytest.skip("thin volumes are not cleared: the pool zeroes what it provisions")
    backend = LvmBackend(str(tmp_path), settings(volume_clear=method, volume_clear_size=clear_mib))
    location = backend.disk_location("vm1", "secret")
    backend.create(location, "op1", size=4 * MiB, template=None)
    pattern = b"\xa5" * (4 * MiB)
    with open(f"/dev/{location}", "r+b") as disk:
        disk.write(pattern)
        disk.flush()
        os.fsync(disk.fileno())
    where = extents(disk_lv("vm1", "secret"))
    assert sum(length for _, _, length in where) == 4 * MiB

    backend.delete(location, "raw", [])

    assert disk_lv("vm1", "secret") not in volumes()
    freed = b"".join(read_direct(pv, offset, length) for pv, offset, length in where)
    zeroed = zeroed_mib * MiB
    assert freed[:zeroed] == bytes(zeroed)
    if method == "shred":
        assert freed.count(0xA5) < len(freed) // 100  # random bytes, not the pattern
    else:
        assert freed[zeroed:] == pattern[zeroed:]  # the control: what is not cleared stays


def test_a_new_sparse_disk_never_reads_a_deleted_ones_data(tmp_path: Path, clean: None) -> None:
    if POOL is None:
        pytest.skip("thick volumes are cleared on delete (test_volume_clear_on_delete)")
    backend = LvmBackend(str(tmp_path), settings())
    assert backend.lvm.pool_zeroes(POOL)  # LVM's default: what makes skipping the clear safe
    first = backend.disk_location("vm1", "first")
    backend.create(first, "op1", size=4 * MiB, template=None)
    with open(f"/dev/{first}", "r+b") as disk:
        disk.write(b"\xa5" * (4 * MiB))
    backend.delete(first, "raw", [])
    second = backend.disk_location("vm1", "second")
    backend.create(second, "op2", size=4 * MiB, template=None)
    with open(f"/dev/{second}", "rb") as disk:
        assert disk.read() == bytes(4 * MiB)


# -- bad input: one line, nothing changed ------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path, clean: None) -> Iterator[Engine]:
    environ = {k: v for k, v in os.environ.items() if k.startswith("DISKLEDGER_")}
    config = Config.load(root=tmp_path / "root", backend="lvm", environ=environ)
    with Engine.open(config) as opened:
        yield opened


def refused(engine: Engine, error: type[Exception], call: object, match: str) -> str:
    events, lvs = len(engine.history()), volumes()
    with pytest.raises(error, match=match) as caught:
        assert callable(call)
        call()
    message = str(caught.value)
    assert "\n" not in message and message
    assert len(engine.history()) == events and volumes() == lvs
    return message


def test_a_volume_group_that_does_not_exist(tmp_path: Path, clean: None) -> None:
    environ = {"DISKLEDGER_LVM_VG": "no-such-vg"}
    config = Config.load(root=tmp_path / "root", backend="lvm", environ=environ)
    with Engine.open(config) as engine:
        refused(
            engine,
            InvalidInput,
            lambda: engine.create("vm1/root", size="4M"),
            "volume group 'no-such-vg' does not exist",
        )


def test_a_thin_pool_that_does_not_exist(tmp_path: Path, clean: None) -> None:
    if POOL is None:
        pytest.skip("thick volumes need no pool")
    environ = {"DISKLEDGER_LVM_VG": VG, "DISKLEDGER_LVM_SPARSE": "no-such-pool"}
    config = Config.load(root=tmp_path / "root", backend="lvm", environ=environ)
    with Engine.open(config) as engine:
        refused(
            engine,
            InvalidInput,
            lambda: engine.create("vm1/root", size="4M"),
            f"volume group '{VG}' has no thin pool 'no-such-pool'",
        )


def test_a_name_lvm_would_reject(engine: Engine) -> None:
    instance, disk = "i" * 64, "d" * 64
    refused(
        engine,
        InvalidName,
        lambda: engine.create(f"{instance}/{disk}", size="4M"),
        "longer than LVM allows",
    )


def test_a_size_beyond_the_volume_group(engine: Engine) -> None:
    refused(engine, InvalidSize, lambda: engine.create("vm1/big", size="64G"), "size")
    engine.create("vm1/root", size="4M")
    refused(engine, InvalidSize, lambda: engine.resize("vm1/root", "64G"), "size")


def test_a_shrink(engine: Engine) -> None:
    engine.create("vm1/root", size="8M")
    refused(engine, InvalidSize, lambda: engine.resize("vm1/root", "4M"), "never shrink")
    assert engine.verify().ok


# -- crashes: a real process killed inside the guest, then recovery --------------------------


def killed(tmp_path: Path, fault: str, *argv: str) -> None:
    """Run the CLI with ``DISKLEDGER_FAULT`` armed: it SIGKILLs itself at that point."""
    environ = {
        **os.environ,
        "DISKLEDGER_ROOT": str(tmp_path / "root"),
        "DISKLEDGER_BACKEND": "lvm",
        "DISKLEDGER_FAULT": fault,
    }
    done = subprocess.run(
        ["python3", "-m", "diskledger.cli", *argv], env=environ, capture_output=True, check=False
    )
    assert done.returncode == -9, done.stderr


def test_killed_operations_are_recovered(tmp_path: Path, engine: Engine) -> None:
    """A create killed after its volume was written, before the rename, is rolled back (the
    temporary goes); a delete killed mid-way is finished when it had renamed the disk aside to
    clear it (thick), and rolled back when it had not removed anything yet (thin)."""
    killed(
        tmp_path, "create@mid-effect:kill", "disk", "create", "vm1/root", "--blank", "--size", "4M"
    )
    assert [lv for lv in volumes() if "+.tmp-" in lv], volumes()

    report = engine.recover()

    assert len(report.rolled_back) == 1 and not report.needs_operator
    assert volumes() == set() and engine.verify().ok
    engine.create("vm1/root", size="4M")
    engine.snapshot("vm1/root", "s1")
    killed(tmp_path, "delete@mid-effect:kill", "disk", "delete", "vm1/root")
    if POOL is None:  # renamed aside to be cleared: the pending delete's, not an orphan
        assert any(lv.endswith("+.deleting") for lv in volumes()), volumes()
        pending = engine.verify()
        assert pending.orphans == [] and pending.ok, pending.to_json()

    report = engine.recover()

    assert not report.needs_operator and engine.verify().ok
    if POOL is None:  # renamed aside to be cleared: gone, so the delete is finished
        assert len(report.rolled_forward) == 1 and volumes() == set()
        assert engine.show("vm1/root").state.value == "absent"
    else:  # thin volumes are not cleared: killed before the first lvremove, nothing changed
        assert len(report.rolled_back) == 1 and len(volumes()) == 2
        engine.delete("vm1/root")
        assert volumes() == set()
