"""The engine against a real libvirtd and KVM: domains boot with the disks it describes, and
attached disks are resized through the running guest, or refused what would corrupt them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from diskledger import (
    DiskAttached,
    DiskView,
    DomainNotFound,
    Engine,
    HypervisorError,
    HypervisorUnavailable,
    InvalidInput,
)
from tests.hypervisor.conftest import SECRET_UUID, open_engine
from tests.support.libvirt import Domains, binding, block_devices

libvirt = binding()

MiB = 1 << 20
ROOT, DATA = "vm-1/root", "vm-1/data"


def make_disk(engine: Engine, template_files: dict[str, Path], disk: str = ROOT) -> DiskView:
    """``disk`` from the 64 MiB template ``base`` (a qcow2 overlay, a raw copy, an RBD clone),
    grown to 96 MiB."""
    if not engine.list_templates():
        fmt = "qcow2" if engine.backend.name == "qcow2" else "raw"
        engine.add_template("base", template_files[fmt], fmt)
    return engine.create(disk, template="base", size=96 * MiB)


def on_storage(engine: Engine, view: DiskView) -> int | None:
    backend = engine.backend_of(view)
    assert view.location
    (seen,) = backend.probe(backend.disk_artifacts(view.location, ()))
    return seen.size


def events_of(engine: Engine, disk: str) -> list[str]:
    return [e.type for e in engine.history(disk)]


def test_domains_boot_with_the_described_disks_and_see_them_as_recorded(
    engine: Engine, domains: Domains, template_files: dict[str, Path]
) -> None:
    root = make_disk(engine, template_files)
    data = engine.create(DATA, size=32 * MiB)
    dom = domains.boot(
        engine.libvirt_disk(
            ROOT,
            target_dev="vda",
            boot_order=1,
            extra_specs={"quota:disk_read_iops_sec": "500", "quota:cpu_shares": "1024"},
        ),
        engine.libvirt_disk(DATA, target_dev="sdb", bus="scsi", disk_unit=3, discard="unmap"),
        scsi=True,
    )
    assert dom.isActive()
    seen = block_devices(dom)
    assert (seen["vda"].virtual_size, seen["vda"].format) == (root.size, root.format)
    assert (seen["sdb"].virtual_size, seen["sdb"].format) == (data.size, data.format)
    assert dom.blockIoTune("vda", 0)["read_iops_sec"] == 500
    live = ET.fromstring(dom.XMLDesc(0))
    (scsi,) = [d for d in live.iterfind("devices/disk") if d.find("target").get("dev") == "sdb"]  # type: ignore[union-attr]
    assert scsi.find("address").get("unit") == "3"  # type: ignore[union-attr]
    if engine.backend.name == "rbd":
        assert seen["vda"].file.startswith("json:") and '"driver": "rbd"' in seen["vda"].file
    template = Path(engine.template("base").location or "")
    dom.destroy()
    if engine.backend.name == "qcow2":
        # the overlay's template was given as its backing store, not relabelled: still ours
        assert template.stat().st_uid == 0 and root.backing == str(template)


def test_a_ceph_secret_is_defined_from_the_restricted_key_and_removed(
    engine: Engine, backend_name: str, libvirt_conn: libvirt.virConnect
) -> None:
    if backend_name != "rbd":
        with pytest.raises(InvalidInput, match="DISKLEDGER_RBD_USER and DISKLEDGER_CEPH_KEYRING"):
            engine.define_ceph_secret()
        return
    assert engine.define_ceph_secret() == SECRET_UUID  # defined by the fixture: updated, same
    secret = libvirt_conn.secretLookupByUUIDString(SECRET_UUID)
    assert secret.usageID() == "client.diskledger secret"
    assert engine.undefine_ceph_secret() == SECRET_UUID
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.secretLookupByUUIDString(SECRET_UUID)
    assert engine.undefine_ceph_secret() is None


def test_an_attached_disk_is_resized_through_the_running_guest(
    engine: Engine, domains: Domains, template_files: dict[str, Path]
) -> None:
    make_disk(engine, template_files)
    dom = domains.boot(engine.libvirt_disk(ROOT, target_dev="vda"))
    view = engine.attach(ROOT, dom.name(), target_dev="vda")
    assert view.attachment is not None and view.attachment.domain_uuid == dom.UUIDString()
    assert engine.history(ROOT)[-1].data["added"] is False  # booted with it: recorded only

    view = engine.resize(ROOT, 160 * MiB)
    assert view.size == 160 * MiB
    assert dom.blockInfo("vda")[0] == 160 * MiB  # the guest sees it at once
    assert block_devices(dom)["vda"].virtual_size == 160 * MiB
    assert on_storage(engine, view) == 160 * MiB
    started = [e for e in engine.history(ROOT) if e.type == "disk.resize.started"][-1]
    assert started.data["params"]["live"] == {"domain": dom.name(), "target_dev": "vda"}


def test_what_would_change_an_attached_disk_under_the_guest_is_refused(
    engine: Engine, domains: Domains, template_files: dict[str, Path], tmp_path: Path
) -> None:
    make_disk(engine, template_files)
    engine.snapshot(ROOT, "before")
    dom = domains.boot(engine.libvirt_disk(ROOT, target_dev="vda"))
    engine.attach(ROOT, dom.name(), target_dev="vda")
    version = engine.show(ROOT).version

    refused = {
        "delete": lambda: engine.delete(ROOT),
        "rollback": lambda: engine.rollback(ROOT, "before"),
        "export": lambda: engine.export(ROOT, tmp_path / "copy.raw"),
        "attach": lambda: engine.attach(ROOT, dom.name(), target_dev="vdb"),
    }
    if engine.backend.name != "rbd":
        refused["snapshot"] = lambda: engine.snapshot(ROOT, "live")
        refused["remove-snapshot"] = lambda: engine.remove_snapshot(ROOT, "before")
    for op, call in refused.items():
        with pytest.raises(DiskAttached, match=f"attached to domain {dom.name()} as vda: {op}"):
            call()
    assert engine.show(ROOT).version == version  # nothing recorded
    assert not (tmp_path / "copy.raw").exists()
    assert dom.isActive() and block_devices(dom)["vda"].virtual_size == 96 * MiB

    if engine.backend.name == "rbd":
        # librbd hands the snapshot to the lock owner, qemu: crash-consistent, nothing behind
        # the guest's back.
        view = engine.snapshot(ROOT, "live")
        assert view.snapshot_names == ("before", "live")
        engine.remove_snapshot(ROOT, "live")


def test_a_detached_disk_can_be_deleted_once_its_domain_is_gone(
    engine: Engine, domains: Domains, template_files: dict[str, Path]
) -> None:
    make_disk(engine, template_files)
    dom = domains.boot(engine.libvirt_disk(ROOT, target_dev="vda"))
    engine.attach(ROOT, dom.name(), target_dev="vda")
    assert engine.verify().ok
    dom.destroy()  # a transient domain: gone, as after a host crash
    report = engine.verify()
    assert not report.ok and report.attachments_unchecked is None
    (stale,) = report.stale_attachments
    assert (stale["disk"], stale["domain"], stale["target_dev"]) == (ROOT, dom.name(), "vda")
    assert stale["problem"].startswith("the domain no longer exists")
    with pytest.raises(DiskAttached):
        engine.delete(ROOT)  # the ledger still says attached: the audit trail needs a detach
    view = engine.resize(ROOT, 128 * MiB)  # no running guest: straight to storage
    assert on_storage(engine, view) == 128 * MiB
    assert "live" not in engine.history(ROOT)[-2].data["params"]
    view = engine.detach(ROOT)
    assert view.attachment is None
    assert engine.history(ROOT)[-1].data["removed"] is False
    assert engine.verify().ok
    engine.delete(ROOT)
    assert events_of(engine, ROOT)[-1] == "disk.delete.completed"


def test_a_disk_is_hot_plugged_into_and_out_of_a_running_domain(
    engine: Engine, domains: Domains, template_files: dict[str, Path]
) -> None:
    make_disk(engine, template_files)
    dom = domains.boot(scsi=True)
    view = engine.attach(ROOT, dom.name(), target_dev="sdb", bus="scsi")
    assert view.attachment is not None and view.attachment.bus == "scsi"
    assert engine.history(ROOT)[-1].data["added"] is True
    assert block_devices(dom)["sdb"].virtual_size == 96 * MiB

    engine.resize(ROOT, 128 * MiB)
    assert dom.blockInfo("sdb")[0] == 128 * MiB

    view = engine.detach(ROOT)
    assert view.attachment is None and engine.history(ROOT)[-1].data["removed"] is True
    assert "sdb" not in block_devices(dom)
    engine.snapshot(ROOT, "after")  # offline again: every operation is allowed


def test_a_hot_plug_the_domain_refuses_is_recorded_as_failed(
    engine: Engine, domains: Domains, template_files: dict[str, Path]
) -> None:
    make_disk(engine, template_files)
    dom = domains.boot()  # no ACPI: its PCI bus takes no hot-plugged virtio disk
    with pytest.raises(HypervisorError, match="does not support hotplugging"):
        engine.attach(ROOT, dom.name(), target_dev="vdb")
    assert events_of(engine, ROOT)[-2:] == ["disk.attach.started", "disk.attach.failed"]
    failed = engine.history(ROOT)[-1].data
    assert failed["recovery"]["evidence"][-1]["uses_disk"] is False
    assert engine.show(ROOT).attachment is None


def test_a_guest_that_does_not_release_a_disk_keeps_it_attached(
    libvirt_root: Path, domains: Domains, template_files: dict[str, Path]
) -> None:
    # The guest refuses, not the storage: one backend shows it.
    with open_engine(libvirt_root, "raw") as engine:
        make_disk(engine, template_files)
        # virtio hot-unplug waits for the guest to acknowledge it (ACPI); this one has no OS
        dom = domains.boot(engine.libvirt_disk(ROOT, target_dev="vda"), acpi=True)
        engine.attach(ROOT, dom.name(), target_dev="vda")
        with pytest.raises(HypervisorError, match="did not release vda within 3 s"):
            engine.detach(ROOT)
        assert events_of(engine, ROOT)[-1] == "disk.detach.failed"
        assert engine.show(ROOT).attachment is not None


def test_attach_and_detach_refusals_change_nothing(
    engine: Engine, domains: Domains, template_files: dict[str, Path]
) -> None:
    make_disk(engine, template_files)
    other = engine.create(DATA, size=32 * MiB)
    dom = domains.boot(engine.libvirt_disk(DATA, target_dev="vda"))
    version = engine.show(ROOT).version
    with pytest.raises(DomainNotFound, match="no such domain: nowhere"):
        engine.attach(ROOT, "nowhere", target_dev="vdb")
    with pytest.raises(InvalidInput, match="already has another disk as vda"):
        engine.attach(ROOT, dom.name(), target_dev="vda")
    with pytest.raises(InvalidInput, match=f"domain {dom.name()} has disk {DATA} as vda, not vdb"):
        engine.attach(DATA, dom.name(), target_dev="vdb")
    with pytest.raises(InvalidInput, match="does not fit bus virtio"):
        engine.attach(ROOT, dom.name(), target_dev="sdb")
    with pytest.raises(InvalidInput, match="is not attached to a domain"):
        engine.detach(ROOT)
    assert engine.show(ROOT).version == version
    assert engine.show(DATA).version == other.version


def test_verify_without_libvirt_says_attachments_were_not_checked(
    libvirt_root: Path, domains: Domains
) -> None:
    with open_engine(libvirt_root, "raw") as engine:
        engine.create(ROOT, size=32 * MiB)
        dom = domains.boot(engine.libvirt_disk(ROOT, target_dev="vda"))
        engine.attach(ROOT, dom.name(), target_dev="vda")
    unreachable = {"DISKLEDGER_LIBVIRT_URI": "qemu:///system?socket=/nonexistent/libvirt-sock"}
    with open_engine(libvirt_root, "raw", unreachable) as engine:
        report = engine.verify()
        assert report.ok and report.stale_attachments == []
        assert report.attachments_unchecked is not None
        assert "cannot connect to libvirt" in report.attachments_unchecked
        with pytest.raises(HypervisorUnavailable):
            engine.resize(ROOT, 64 * MiB)  # whether the guest runs is unknown: not offline
        assert engine.show(ROOT).size == 32 * MiB


def test_a_shut_off_domain_gets_the_disk_in_its_definition_and_resizes_go_to_storage(
    engine: Engine, domains: Domains, template_files: dict[str, Path]
) -> None:
    make_disk(engine, template_files)
    dom = domains.define(scsi=True)  # persistent, shut off
    view = engine.attach(ROOT, dom.name(), target_dev="sdc", bus="scsi", op_id="attach-1")
    assert engine.attach(ROOT, dom.name(), target_dev="sdc", bus="scsi", op_id="attach-1") == view
    assert engine.history(ROOT)[-1].data["added"] is True  # into the definition
    inactive = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert [t.get("dev") for t in inactive.iterfind("devices/disk/target")] == ["sdc"]

    view = engine.resize(ROOT, 128 * MiB)  # nobody runs it: offline, on storage
    assert "live" not in engine.history(ROOT)[-2].data["params"]
    assert on_storage(engine, view) == 128 * MiB
    dom.create()
    assert block_devices(dom)["sdc"].virtual_size == 128 * MiB
    assert engine.verify().ok

    view = engine.detach(ROOT, op_id="detach-1")
    assert engine.detach(ROOT, op_id="detach-1") == view
    assert "sdc" not in block_devices(dom)
    inactive = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert inactive.find("devices/disk") is None  # gone from the definition too


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_preallocated_disk_boots_with_native_aio(
    fmt: str, libvirt_root: Path, domains: Domains, qemu_img: None
) -> None:
    with open_engine(libvirt_root, fmt, {"DISKLEDGER_PREALLOCATE": "space"}) as engine:
        view = engine.create(ROOT, size=32 * MiB)
        dom = domains.boot(engine.libvirt_disk(ROOT, target_dev="vda"))
        (driver,) = ET.fromstring(dom.XMLDesc(0)).iterfind("devices/disk/driver")
        assert (driver.get("io"), driver.get("cache")) == ("native", "none")
        assert block_devices(dom)["vda"].virtual_size == view.size
