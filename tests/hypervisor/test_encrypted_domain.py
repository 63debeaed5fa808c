"""An encrypted qcow2 disk in a real KVM domain: libvirt gets the key as a secret, qemu opens and
decrypts the disk, and the wrong secret is refused.

The proof that qemu opened it is qemu's own: it shows the drive open and encrypted
(query-block), the domain's qemu writes a pattern through its block layer (HMP ``qemu-io`` on
the running guest's drive), and after the detach qemu-io with the provider's key reads that
pattern, beside the one written before the domain started. A domain given a libvirt secret
holding another passphrase does not start.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diskledger import Engine
from diskledger.engine.operations.attachment import secret_uuid
from tests.backends.helpers import keyed_io
from tests.hypervisor.conftest import open_engine
from tests.support.libvirt import Domains, binding, block_devices

libvirt = binding()

MiB = 1 << 20
DISK = "vm-1/secret"


def guest_io(dom: libvirt.virDomain, target_dev: str, command: str) -> str:
    """``command`` run by the domain's own qemu on the drive at ``target_dev`` (HMP qemu-io)."""
    import libvirt_qemu

    alias = next(
        d.find("alias").get("name")  # type: ignore[union-attr]
        for d in ET.fromstring(dom.XMLDesc(0)).iterfind("devices/disk")
        if d.find("target") is not None and d.find("target").get("dev") == target_dev  # type: ignore[union-attr]
    )
    hmp = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
    # -d: the drive is named by its device id (libvirt's alias): with -blockdev it has no other.
    return str(libvirt_qemu.qemuMonitorCommand(dom, f'qemu-io -d {alias} "{command}"', hmp))


def query_block(dom: libvirt.virDomain) -> list[dict[str, Any]]:
    """qemu's query-block rows of the drives that have an image open."""
    import libvirt_qemu

    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, '{"execute":"query-block"}', 0))
    return [row for row in reply["return"] if row.get("inserted")]


@pytest.fixture
def encrypting(libvirt_root: Path, tmp_path: Path, qemu_img: None) -> Iterator[Engine]:
    environ = {"DISKLEDGER_LUKS_ITER_TIME": "10", "DISKLEDGER_KEY_DIR": str(tmp_path / "keys")}
    with open_engine(libvirt_root, "qcow2", environ) as engine:
        yield engine
        for view in engine.list():
            if view.disk == DISK and view.attachment is None:
                engine.delete(DISK)


def test_a_domain_opens_an_encrypted_disk_through_its_libvirt_secret(
    encrypting: Engine, domains: Domains, tmp_path: Path
) -> None:
    engine = encrypting
    view = engine.create(DISK, size=32 * MiB, encrypt=True)
    assert view.location and view.encryption
    key = tmp_path / "keys" / f"{view.encryption.key}.key"
    uuid = secret_uuid(view.encryption)
    domains.track_secret(uuid)
    written = keyed_io(view.location, key, "write -P 0x5a 0 64k")
    assert written.returncode == 0, written.stderr

    dom = domains.boot(scsi=True)
    engine.attach(DISK, dom.name(), target_dev="sdb", bus="scsi")
    secret = domains.conn.secretLookupByUUIDString(uuid)
    assert secret.XMLDesc(0).count("private='yes'") == 1
    with pytest.raises(libvirt.libvirtError):
        secret.value()  # private: libvirt never hands the key back
    assert dom.isActive()
    assert block_devices(dom)["sdb"].virtual_size == 32 * MiB
    assert dom.blockInfo("sdb")[0] == 32 * MiB
    # qemu opened the image and unlocked it with the secret (it refuses to open one it cannot
    # unlock: the next test) ...
    assert [row["inserted"]["encrypted"] for row in query_block(dom)] == [True]
    # ... and what the domain's qemu writes through its block layer, encrypted with the key it
    # got from libvirt, reads back with the key from the provider after the detach, beside
    # what was written before it started.
    guest_io(dom, "sdb", "write -P 0x6b 1M 64k")

    engine.detach(DISK)
    with pytest.raises(libvirt.libvirtError):
        domains.conn.secretLookupByUUIDString(uuid)  # detach undefined it
    back = keyed_io(view.location, key, "read -P 0x6b 1M 64k")
    assert back.returncode == 0 and "verification failed" not in back.stdout, back.stdout
    before = keyed_io(view.location, key, "read -P 0x5a 0 64k")
    assert before.returncode == 0 and "verification failed" not in before.stdout, before.stdout
    assert b"\x6b" * 4096 not in Path(view.location).read_bytes()


def test_a_domain_given_the_wrong_secret_does_not_start(
    encrypting: Engine, domains: Domains
) -> None:
    engine = encrypting
    view = engine.create(DISK, size=32 * MiB, encrypt=True)
    assert view.location and view.encryption
    uuid = secret_uuid(view.encryption)
    domains.track_secret(uuid)
    # The secret the disk names, holding another passphrase.
    engine.runtime.hypervisor.define_volume_secret(view.location, b"A" * 43, secret_uuid=uuid)
    xml = engine.libvirt_disk(DISK, target_dev="vdb")
    assert '<encryption format="luks">' in xml
    with pytest.raises(libvirt.libvirtError, match=r"(?i)password|keyslot"):
        domains.boot(xml)


def test_an_attach_the_domain_refuses_takes_its_secret_away_again(
    encrypting: Engine, domains: Domains
) -> None:
    from diskledger import HypervisorError

    engine = encrypting
    view = engine.create(DISK, size=32 * MiB, encrypt=True)
    assert view.encryption
    uuid = secret_uuid(view.encryption)
    domains.track_secret(uuid)
    dom = domains.boot()  # no ACPI: its PCI bus takes no hot-plugged virtio disk
    with pytest.raises(HypervisorError, match="does not support hotplugging"):
        engine.attach(DISK, dom.name(), target_dev="vdb")
    failed = engine.history(DISK)[-1]
    assert failed.type == "disk.attach.failed"
    assert failed.data["secret_undefined"] == uuid
    with pytest.raises(libvirt.libvirtError):
        domains.conn.secretLookupByUUIDString(uuid)
