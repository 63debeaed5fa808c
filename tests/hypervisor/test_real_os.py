"""A real OS boots from a diskledger disk and sees it grow live (issue 14).

For each backend (qcow2, raw, rbd): the root image of tests/support/rootfs.py (ext4, busybox and
e2fsprogs, an init that reports its disks' sizes) is ``template add``ed, a disk is made from it
larger than the template, and a libvirt domain of ``type='qemu'`` boots Linux from it through
the ``<disk>`` element ``diskledger disk xml`` printed (root=/dev/vda; a KVM domain cannot boot
Linux on these machines, see docs/libvirt.md). The guest itself reports its root device and the
size of /dev/vda (``/sys/block/vda/size``). Then the disk is attached in the ledger and
``diskledger disk resize`` grows it while the guest runs: the engine goes through qemu
(``virDomainBlockResize``) and the guest reports the new size, then grows its mounted root
filesystem into it (``resize2fs``) and reports that too.

Everything is done through the CLI, in its own processes, as an operator would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.hypervisor.conftest import SECRET_UUID
from tests.recovery.helpers import cli_json
from tests.support.libvirt import Domains, binding
from tests.support.rootfs import IMAGE_SIZE, RealGuest, RootImage

libvirt = binding()

MiB = 1 << 20
SECTOR = 512
DISK = "vm-os/root"
CREATED, GROWN = 96 * MiB, 128 * MiB


@dataclass
class Host:
    root: Path
    backend: str
    environ: dict[str, str]

    def run(self, *argv: str) -> Any:
        return cli_json(self.root, *argv, backend=self.backend, environ=self.environ)


@pytest.fixture(params=["qcow2", "raw", "rbd"])
def host(
    request: pytest.FixtureRequest, libvirt_root: Path, tmp_path: Path, qemu_img: None
) -> Host:
    if request.param != "rbd":
        return Host(libvirt_root, request.param, {})
    environ: dict[str, str] = request.getfixturevalue("rbd_libvirt_environ")
    secrets: Domains = request.getfixturevalue("domains")  # undefines the secret at the end
    secrets.track_secret(SECRET_UUID)
    host = Host(tmp_path / "root", "rbd", environ)
    assert host.run("libvirt", "define-secret") == {"uuid": SECRET_UUID}
    return host


@pytest.fixture
def guests(host: Host) -> Iterator[list[RealGuest]]:
    """Every guest a test boots is destroyed after it, passed or failed; set up after ``host``,
    so before the cluster's pools are emptied."""
    booted: list[RealGuest] = []
    try:
        yield booted
    finally:
        for guest in booted:
            guest.stop()


def test_a_real_os_boots_from_the_disk_and_sees_it_grow_live(
    host: Host,
    guests: list[RealGuest],
    root_image: RootImage,
    libvirt_conn: libvirt.virConnect,
    libvirt_root: Path,
) -> None:
    fmt = "qcow2" if host.backend == "qcow2" else "raw"
    template = host.run("template", "add", "os", str(root_image.image(fmt)), "--format", fmt)
    assert (template["format"], template["virtual_size"]) == (fmt, IMAGE_SIZE)
    created = host.run("disk", "create", DISK, "--template", "os", "--size", str(CREATED))
    assert created["size"] == CREATED
    element = host.run("disk", "xml", DISK, "--dev", "vda")["xml"]

    guest = RealGuest(libvirt_conn, root_image, [element], libvirt_root)
    guests.append(guest)
    booted = guest.start()
    print(f"{host.backend}: first report {guest.booted_in:.1f} s after the domain started")
    # Linux runs from the disk: its root filesystem is the template's (the recipe it carries),
    # mounted from /dev/vda, and the kernel sees the disk at the size diskledger made it.
    assert (booted.root, booted.os) == ("/dev/vda", root_image.recipe), guest.console()
    assert booted.sectors == {"vda": CREATED // SECTOR}
    assert booted.rootfs <= IMAGE_SIZE  # the template's filesystem, not grown yet

    attached = host.run("disk", "attach", DISK, guest.name, "--dev", "vda")
    assert attached["attachment"]["domain"] == guest.name
    resized = host.run("disk", "resize", DISK, str(GROWN))
    assert resized["size"] == GROWN
    started = [e for e in host.run("history", DISK) if e["type"] == "disk.resize.started"]
    assert started[-1]["data"]["params"]["live"] == {"domain": guest.name, "target_dev": "vda"}

    # The guest's own kernel sees the new size (asked again until it does, for up to 30 s).
    seen = guest.wait_for(lambda report: report.sectors.get("vda") == GROWN // SECTOR)
    assert seen.sectors == {"vda": GROWN // SECTOR}, guest.console()
    # ... and its mounted root filesystem grows into the space that was not there before.
    grown = guest.ask("grow", "vda")
    assert grown.sectors == {"vda": GROWN // SECTOR}
    assert grown.rootfs > CREATED, guest.console()
    print(
        f"{host.backend}: the guest saw vda {booted.bytes('vda')} -> {seen.bytes('vda')} bytes, "
        f"its root filesystem {booted.rootfs} -> {grown.rootfs} bytes"
    )
