"""The libvirt commands of the CLI against a real libvirtd: define-secret / undefine-secret,
disk attach / detach with --json, and their refusals (one line, exit 1, nothing recorded)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.hypervisor.conftest import SECRET_UUID
from tests.recovery.helpers import cli, error_line
from tests.support.ceph import CephCluster
from tests.support.libvirt import Domains, binding, block_devices

libvirt = binding()

DISK = "vm-1/root"


def run(
    root: Path, *argv: str, backend: str = "raw", environ: dict[str, str] | None = None
) -> dict[str, object]:
    done = cli(root, *argv, backend=backend, environ=environ)
    assert done.returncode == 0, done.stderr
    document: dict[str, object] = json.loads(done.stdout)
    return document


def test_define_and_undefine_the_ceph_secret(
    tmp_path: Path,
    ceph: CephCluster,
    rbd_libvirt_environ: dict[str, str],
    libvirt_conn: libvirt.virConnect,
    domains: Domains,
) -> None:
    domains.track_secret(SECRET_UUID)  # removed even if the test fails half-way
    root = tmp_path / "root"
    defined = run(root, "libvirt", "define-secret", backend="rbd", environ=rbd_libvirt_environ)
    assert defined == {"uuid": SECRET_UUID}
    assert (
        libvirt_conn.secretLookupByUUIDString(SECRET_UUID).usageID() == "client.diskledger secret"
    )
    removed = run(root, "libvirt", "undefine-secret", backend="rbd", environ=rbd_libvirt_environ)
    assert removed == {"uuid": SECRET_UUID}
    assert run(root, "libvirt", "undefine-secret", backend="rbd", environ=rbd_libvirt_environ) == {
        "uuid": None
    }
    # without a keyring, or with a key that is not one, there is nothing to give libvirt
    no_keyring = {k: v for k, v in rbd_libvirt_environ.items() if k != "DISKLEDGER_CEPH_KEYRING"}
    done = cli(root, "libvirt", "define-secret", backend="rbd", environ=no_keyring)
    assert done.returncode == 1 and "DISKLEDGER_CEPH_KEYRING" in error_line(done.stderr)
    forged = tmp_path / "forged.keyring"
    forged.write_text("[client.diskledger]\n\tkey = not*base64\n")
    bad_key = {**rbd_libvirt_environ, "DISKLEDGER_CEPH_KEYRING": str(forged)}
    done = cli(root, "libvirt", "define-secret", backend="rbd", environ=bad_key)
    assert done.returncode == 1 and "is not base64" in error_line(done.stderr)
    done = cli(root, "libvirt", "undefine-secret", backend="raw")
    assert done.returncode == 1 and "DISKLEDGER_RBD_USER" in error_line(done.stderr)


def test_attach_and_detach_through_the_cli(
    libvirt_root: Path, domains: Domains, qemu_img: None
) -> None:
    run(libvirt_root, "disk", "create", DISK, "--blank", "--size", "64M")
    dom = domains.boot(scsi=True)
    before = run(libvirt_root, "history", DISK)

    refused = cli(
        libvirt_root, "disk", "attach", DISK, "no-such-guest", "--dev", "sdb", "--bus", "scsi"
    )
    assert refused.returncode == 1
    assert error_line(refused.stderr) == "diskledger: error: no such domain: no-such-guest"
    assert run(libvirt_root, "history", DISK) == before

    shown = run(libvirt_root, "disk", "attach", DISK, dom.name(), "--dev", "sdb", "--bus", "scsi")
    assert shown["attachment"] == {
        "domain": dom.name(),
        "domain_uuid": dom.UUIDString(),
        "target_dev": "sdb",
        "bus": "scsi",
    }
    assert block_devices(dom)["sdb"].virtual_size == 64 << 20
    refused = cli(libvirt_root, "disk", "delete", DISK)
    assert refused.returncode == 1
    assert error_line(refused.stderr).endswith(
        f"disk {DISK} is attached to domain {dom.name()} as sdb: delete refused: detach it first"
    )
    shown = run(libvirt_root, "disk", "detach", DISK)
    assert shown["attachment"] is None and "sdb" not in block_devices(dom)
    run(libvirt_root, "disk", "delete", DISK)
