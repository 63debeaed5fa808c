"""What of the lvm backend needs no volume group: its settings and its volume names. The
backend itself runs against a real volume group in the test guest (tests/guest/test_lvm.py)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import cast

import pytest

from diskledger.backends import SetAsideVolumes, registry
from diskledger.backends.lvm import LvmBackend, LvmSettings, Volume, names
from diskledger.engine import verify
from diskledger.engine.runtime import Runtime
from diskledger.errors import InvalidInput, InvalidName
from diskledger.hypervisor.device import describe

LVM_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")
RESERVED = ("_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage", "_rmeta",
            "_tdata", "_tmeta", "_vorigin", "_vdata")  # fmt: skip


def test_settings_defaults_follow_nova() -> None:
    found = LvmSettings.from_environ({"DISKLEDGER_LVM_VG": "vg0"})
    assert found == LvmSettings("vg0", None, "zero", 0)
    assert not found.sparse
    sparse = LvmSettings.from_environ(
        {
            "DISKLEDGER_LVM_VG": "vg0",
            "DISKLEDGER_LVM_SPARSE": "pool",
            "DISKLEDGER_LVM_VOLUME_CLEAR": "shred",
            "DISKLEDGER_LVM_VOLUME_CLEAR_SIZE": "16",
        }
    )
    assert sparse == LvmSettings("vg0", "pool", "shred", 16) and sparse.sparse


def test_settings_load_from_nothing_and_the_backend_then_asks_for_a_group() -> None:
    spec = registry.spec("lvm")
    assert spec.load_settings({}) is None
    with pytest.raises(InvalidInput, match=r"^the lvm backend needs a volume group: set DISK"):
        spec.make("/nonexistent", None)
    backend = spec.make("/nonexistent", spec.load_settings({"DISKLEDGER_LVM_VG": "vg0"}))
    assert isinstance(backend, LvmBackend) and backend.preallocates


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("DISKLEDGER_LVM_VG", "-vg", "is not an LVM name"),
        ("DISKLEDGER_LVM_VG", "vg/0", "is not an LVM name"),
        ("DISKLEDGER_LVM_VG", "..", "is not an LVM name"),
        ("DISKLEDGER_LVM_VG", "v" * 128, "is not an LVM name"),
        ("DISKLEDGER_LVM_SPARSE", "snapshot1", "is not an LVM name"),
        ("DISKLEDGER_LVM_VOLUME_CLEAR", "wipe", "is not one of zero, shred, none"),
        ("DISKLEDGER_LVM_VOLUME_CLEAR_SIZE", "-1", "is not a number of MiB"),
        ("DISKLEDGER_LVM_VOLUME_CLEAR_SIZE", "1G", "is not a number of MiB"),
    ],
)
def test_bad_settings_are_one_clear_line(variable: str, value: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as caught:
        LvmSettings.from_environ({"DISKLEDGER_LVM_VG": "vg0", variable: value})
    assert str(caught.value).startswith(f"{variable}=") and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "instance, disk",
    [
        ("vm1", "root"),
        ("0b7e4a36-5e0c-4d6f-9a51-1c2d3e4f5a6b", "disk.local"),
        ("snapshot", "pvmove"),
        ("pvmove0", "snapshot"),
        ("a_b", "c+d"),
        ("vm_mlog", "x_tdata"),
        ("ü", "日本"),
        ("i" * 40, "d" * 40),
    ],
)
def test_names_are_lvm_names_and_reversible(instance: str, disk: str) -> None:
    lv = names.disk_lv(instance, disk)
    snap = names.snapshot_lv(lv, "s_1")
    temp = names.temporary(snap, "0" * 32)
    for name in (lv, snap, temp, names.deleting(lv)):
        assert LVM_NAME.fullmatch(name) and len(name) <= 127, name
        assert not name.startswith(("snapshot", "pvmove"))
        assert not any(reserved in name for reserved in RESERVED)
    assert names.parse(lv) == names.LvName(lv, None, None)
    assert names.parse(snap) == names.LvName(lv, "s_1", None)
    assert names.parse(temp) == names.LvName(lv, "s_1", "tmp-" + "0" * 32)
    assert names.parse(names.deleting(lv)) == names.LvName(lv, None, "deleting")
    encoded_instance, encoded_disk = lv.split("+")
    assert (names.decode(encoded_instance), names.decode(encoded_disk)) == (instance, disk)


def test_names_never_collide() -> None:
    pairs = [("a", "b_c"), ("a_b", "c"), ("a", "b+c"), ("a+b", "c"), ("a", "b5Fc")]
    assert len({names.disk_lv(i, d) for i, d in pairs}) == len(pairs)


def test_an_operators_volumes_are_not_ours() -> None:
    for name in ("root", "lv_home", "a+b+c+d", "a+.tmp-x", "+b", "a+"):
        assert names.parse(name) is None, name


def test_a_name_too_long_for_lvm_is_refused() -> None:
    with pytest.raises(InvalidName, match="longer than LVM allows"):
        names.disk_lv("i" * 64, "d" * 64)
    lv = names.disk_lv("i" * 40, "d" * 40)
    with pytest.raises(InvalidName, match="longer than LVM allows"):
        names.snapshot_lv(lv, "s" * 20)
    with pytest.raises(InvalidName, match="invalid operation id"):
        names.temporary(lv, "op id")


def test_locations_and_the_libvirt_source() -> None:
    backend = LvmBackend("/nonexistent", LvmSettings("vg0"))
    location = backend.disk_location("vm-1", "root")
    assert location == "vg0/vm-1+root"
    source = backend.disk_source(location)
    assert (source.kind.value, source.path, source.preallocated) == (
        "block",
        "/dev/vg0/vm-1+root",
        True,
    )
    with pytest.raises(InvalidInput, match="not a volume of volume group 'vg0'"):
        backend.disk_source("vg1/vm-1+root")


def test_the_libvirt_description_is_a_block_disk() -> None:
    for sparse, io in ((None, "native"), ("pool", None)):
        backend = LvmBackend("/nonexistent", LvmSettings("vg0", sparse))
        source = backend.disk_source(backend.disk_location("vm-1", "root"))
        xml = describe(source, backend.disk_format, target_dev="vda").to_xml()
        assert '<disk type="block" device="disk">' in xml
        assert '<source dev="/dev/vg0/vm-1+root" />' in xml
        driver = f'<driver name="qemu" type="raw" cache="none"{f" io={io!r}" if io else ""} />'
        assert driver.replace("'", '"') in xml, xml


def _volume(name: str, *, ours: bool = True) -> Volume:
    tags = frozenset({names.OWNER_TAG} if ours else ())
    return Volume(name, 4 << 20, tags, None, None, None, "linear")


def test_verify_gives_a_set_aside_volume_to_its_disks_pending_operation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delete killed while clearing leaves ``+.deleting`` volumes (the disk's, a snapshot's),
    a resize killed while zeroing a ``+.grow``: while the disk has an operation pending they
    are that operation's (recovery finishes or removes them); once nothing pending will,
    they are orphans. Another disk's pending operation does not own them."""
    backend = LvmBackend("/nonexistent", LvmSettings("vg0"))
    disk = names.disk_lv("vm-1", "root")
    aside = [
        names.deleting(disk),
        names.deleting(names.snapshot_lv(disk, "s1")),
        names.growing(disk),
    ]
    found = {lv: _volume(lv) for lv in [*aside, names.disk_lv("vm-2", "root")]}
    monkeypatch.setattr(backend.lvm, "report", lambda: found)
    runtime = cast(Runtime, SimpleNamespace(backend=backend))
    assert isinstance(backend, SetAsideVolumes)
    assert [backend.set_aside_from(a) for a in backend.inventory()] == [
        "vg0/vm-1+root",
        "vg0/vm-1+root",
        "vg0/vm-1+root",
        None,
    ]

    def orphans(owned: set[str], busy: set[str]) -> list[str]:
        report = verify.VerifyReport()
        verify._check_inventory(runtime, owned, busy, report)
        return report.orphans

    owned = {"vg0/vm-2+root"}
    assert orphans(owned, busy={"vg0/vm-1+root"}) == []  # the pending delete's
    assert orphans(owned, busy={"vg0/vm-3+root"}) == [f"vg0/{lv}" for lv in aside]
    assert orphans(owned | {"vg0/vm-1+root"}, busy=set()) == [f"vg0/{lv}" for lv in aside]
