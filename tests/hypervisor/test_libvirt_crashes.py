"""A ``diskledger`` process SIGKILLed in the middle of an attach, a detach or a live resize, and
the recovery that follows: it probes the domain (by name and UUID) or the disk's size on
storage, and records the outcome the evidence shows, never the one the intent hoped for."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from diskledger import Engine
from tests.hypervisor.conftest import open_engine
from tests.recovery.helpers import cli
from tests.support.libvirt import Domains, block_devices

MiB = 1 << 20
DISK = "vm-1/root"


@dataclass
class Host:
    root: Path
    backend: str
    environ: dict[str, str]

    def engine(self) -> Engine:
        """An engine that leaves recovery to the test."""
        return open_engine(self.root, self.backend, {**self.environ, "DISKLEDGER_RECOVER": "0"})

    def killed(self, *argv: str, fault: str) -> None:
        done = cli(self.root, *argv, backend=self.backend, fault=fault, environ=self.environ)
        assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)


@pytest.fixture(params=["raw", "qcow2", "rbd"])
def host(
    request: pytest.FixtureRequest, libvirt_root: Path, tmp_path: Path, qemu_img: None
) -> Iterator[Host]:
    if request.param != "rbd":
        yield Host(libvirt_root, request.param, {"DISKLEDGER_DETACH_TIMEOUT": "3"})
        return
    environ = request.getfixturevalue("rbd_libvirt_environ")
    booted: Domains = request.getfixturevalue("domains")  # after the cluster: destroyed first
    host = Host(tmp_path / "root", "rbd", environ)
    with host.engine() as engine:
        booted.track_secret(engine.define_ceph_secret())
    yield host


def make_disk(host: Host, template_files: dict[str, Path]) -> None:
    with host.engine() as engine:
        fmt = "qcow2" if host.backend == "qcow2" else "raw"
        engine.add_template("base", template_files[fmt], fmt)
        engine.create(DISK, template="base", size=96 * MiB)


def last_outcome(engine: Engine) -> tuple[str, str]:
    event = engine.history(DISK)[-1]
    return event.type, event.data["recovery"]["decision"]


# The domain decides, not the storage: a file backend and rbd show it.
@pytest.mark.parametrize("host", ["raw", "rbd"], indirect=True)
@pytest.mark.parametrize(
    ("point", "plugged", "outcome"),
    [
        ("after-intent", False, ("disk.attach.failed", "roll-back")),
        ("after-effect", True, ("disk.attach.completed", "roll-forward")),
    ],
)
def test_an_attach_cut_short_is_settled_by_what_the_domain_shows(
    host: Host,
    domains: Domains,
    template_files: dict[str, Path],
    point: str,
    plugged: bool,
    outcome: tuple[str, str],
) -> None:
    make_disk(host, template_files)
    dom = domains.boot(scsi=True)
    host.killed(
        "disk", "attach", DISK, dom.name(), "--dev", "sdb", "--bus", "scsi", fault=f"attach@{point}"
    )
    assert ("sdb" in block_devices(dom)) is plugged
    with host.engine() as engine:
        assert engine.recover().pending
        assert last_outcome(engine) == outcome
        assert (engine.show(DISK).attachment is not None) is plugged
        assert engine.verify().ok


@pytest.mark.parametrize("host", ["raw", "rbd"], indirect=True)
@pytest.mark.parametrize(
    ("point", "plugged", "outcome"),
    [
        ("after-intent", True, ("disk.detach.failed", "roll-back")),
        ("after-effect", False, ("disk.detach.completed", "roll-forward")),
    ],
)
def test_a_detach_cut_short_is_settled_by_what_the_domain_shows(
    host: Host,
    domains: Domains,
    template_files: dict[str, Path],
    point: str,
    plugged: bool,
    outcome: tuple[str, str],
) -> None:
    make_disk(host, template_files)
    dom = domains.boot(scsi=True)
    with host.engine() as engine:
        engine.attach(DISK, dom.name(), target_dev="sdb", bus="scsi")
    host.killed("disk", "detach", DISK, fault=f"detach@{point}")
    assert ("sdb" in block_devices(dom)) is plugged
    with host.engine() as engine:
        assert engine.recover().pending
        assert last_outcome(engine) == outcome
        assert (engine.show(DISK).attachment is not None) is plugged


@pytest.mark.parametrize(
    ("point", "size", "outcome"),
    [
        ("after-intent", 96 * MiB, ("disk.resize.failed", "roll-back")),
        ("after-effect", 160 * MiB, ("disk.resize.completed", "roll-forward")),
    ],
)
def test_a_live_resize_cut_short_is_settled_by_the_size_on_storage(
    host: Host,
    domains: Domains,
    template_files: dict[str, Path],
    point: str,
    size: int,
    outcome: tuple[str, str],
) -> None:
    make_disk(host, template_files)
    with host.engine() as engine:
        dom = domains.boot(engine.libvirt_disk(DISK, target_dev="vda"))
        engine.attach(DISK, dom.name(), target_dev="vda")
    host.killed("disk", "resize", DISK, "160M", fault=f"resize@{point}")
    assert dom.blockInfo("vda")[0] == size
    with host.engine() as engine:
        assert engine.recover().pending
        assert last_outcome(engine) == outcome
        view = engine.show(DISK)
        assert view.size == size and view.attachment is not None and view.pending is None
        assert engine.verify().ok


def test_recovery_defers_an_attach_while_libvirt_does_not_answer(
    libvirt_root: Path, domains: Domains, template_files: dict[str, Path], qemu_img: None
) -> None:
    host = Host(libvirt_root, "raw", {})
    make_disk(host, template_files)
    with host.engine() as engine:
        engine.create("vm-2/root", size=16 * MiB)
        engine.snapshot("vm-2/root", "s")
    dom = domains.boot(scsi=True)
    host.killed(
        "disk",
        "attach",
        DISK,
        dom.name(),
        "--dev",
        "sdb",
        "--bus",
        "scsi",
        fault="attach@after-effect",
    )
    host.killed("disk", "remove-snapshot", "vm-2/root", "s", fault="after-intent")
    unreachable = {"DISKLEDGER_LIBVIRT_URI": "qemu:///system?socket=/nonexistent/libvirt-sock"}
    with open_engine(host.root, "raw", {**unreachable, "DISKLEDGER_RECOVER": "0"}) as engine:
        report = engine.recover()
        assert [o.op for o in report.deferred] == ["attach"]
        assert "cannot ask libvirt" in report.deferred[0].reason
        assert [o.op for o in report.rolled_back] == ["remove-snapshot"]  # the rest goes on
        assert engine.show(DISK).pending is not None
    with host.engine() as engine:
        assert [o.op for o in engine.recover().rolled_forward] == ["attach"]
        assert engine.show(DISK).attachment is not None
