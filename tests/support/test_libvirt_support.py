"""The libvirt test support itself, against the real libvirtd at qemu:///system: domains boot
with the disks given, qemu's view of them comes back by target dev, and clean-up leaves nothing."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.libvirt import BlockDevice, Domains, block_devices

if TYPE_CHECKING:
    import libvirt

MiB = 1 << 20


def file_disk(path: Path, fmt: str, target: str, bus: str) -> str:
    return (
        "<disk type='file' device='disk'>"
        f"<driver name='qemu' type='{fmt}'/>"
        f"<source file='{path}'/>"
        f"<target dev='{target}' bus='{bus}'/>"
        "</disk>"
    )


def make_image(path: Path, fmt: str, size_mib: int) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), f"{size_mib}M"], check=True)
    return path


def test_qcow2_virtio_disk_as_qemu_sees_it(
    domains: Domains, libvirt_root: Path, qemu_img: None
) -> None:
    image = make_image(libvirt_root / "disk.qcow2", "qcow2", 64)

    dom = domains.boot(file_disk(image, "qcow2", "vda", "virtio"))

    assert dom.isActive()
    assert dom.name().startswith("diskledger-test-")
    assert block_devices(dom) == {
        "vda": BlockDevice(target="vda", virtual_size=64 * MiB, format="qcow2", file=str(image))
    }


def test_raw_scsi_disk_next_to_a_virtio_one(
    domains: Domains, libvirt_root: Path, qemu_img: None
) -> None:
    raw = make_image(libvirt_root / "disk.raw", "raw", 32)
    qcow2 = make_image(libvirt_root / "disk.qcow2", "qcow2", 16)

    dom = domains.boot(
        file_disk(raw, "raw", "sda", "scsi"), file_disk(qcow2, "qcow2", "vda", "virtio"), scsi=True
    )

    found = block_devices(dom)
    assert set(found) == {"sda", "vda"}
    assert (found["sda"].format, found["sda"].virtual_size, found["sda"].file) == (
        "raw",
        32 * MiB,
        str(raw),
    )
    assert (found["vda"].format, found["vda"].virtual_size) == ("qcow2", 16 * MiB)


def test_cleanup_destroys_domains_and_undefines_secrets(
    domains: Domains, libvirt_conn: libvirt.virConnect, libvirt_root: Path, qemu_img: None
) -> None:
    import libvirt  # importable once the libvirt_conn fixture has run

    image = make_image(libvirt_root / "disk.raw", "raw", 1)
    dom = domains.boot(file_disk(image, "raw", "vda", "virtio"))
    name = dom.name()
    secret_uuid = str(uuid.uuid4())
    secret = libvirt_conn.secretDefineXML(
        f"<secret ephemeral='yes' private='yes'><uuid>{secret_uuid}</uuid>"
        f"<usage type='ceph'><name>diskledger-test {secret_uuid}</name></usage></secret>"
    )
    secret.setValue(b"not a real key")
    domains.track_secret(secret_uuid)
    gone = Domains(libvirt_conn)
    other = make_image(libvirt_root / "other.raw", "raw", 1)
    gone.boot(file_disk(other, "raw", "vda", "virtio"), name=f"{name}-gone").destroy()
    gone.cleanup()  # a domain already gone is not an error

    domains.cleanup()

    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(name)
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.secretLookupByUUIDString(secret_uuid)
    domains.cleanup()  # and cleaning up twice is harmless
