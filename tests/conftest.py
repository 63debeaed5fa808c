"""Fixtures shared by the whole suite. Real components only; see tests/support/."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from diskledger.testing import STATS
from tests.support.ceph import CephCluster, CephUnavailable
from tests.support.fixtures import postgres_server, postgres_url  # noqa: F401
from tests.support.glance import glance_rbd_server, glance_server  # noqa: F401
from tests.support.guest import Guest, GuestDisk, GuestUnavailable, build, python_payload
from tests.support.libvirt import Domains, LibvirtDaemon, LibvirtUnavailable
from tests.support.xdist_scheduling import pytest_xdist_make_scheduler  # noqa: F401

if TYPE_CHECKING:
    import libvirt

# A crashed worker's native stacks in the log (gdb on its core).
pytest_plugins = ("tests.support.crash_report",)

IN_CI = os.environ.get("CI") == "true"
REPO = Path(__file__).resolve().parent.parent

# The peers' venvs (Glance's for its server, Nova's for its benchmark under CI=true) take 20-30 s
# each to make on a fresh clone: when the session has tests that need them, they are made in the
# background from the start, and are ready (or being finished, behind the scripts' lock) when
# those tests come.
_PREBUILDS: list[subprocess.Popen[bytes]] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    glance = any(
        {"glance_server", "glance_rbd_server"} & set(getattr(item, "fixturenames", ()))
        for item in session.items
    )
    nova = IN_CI and any(item.name == "test_the_nova_benchmark_runs" for item in session.items)
    for script, wanted in (("glance-venv.sh", glance), ("nova-venv.sh", nova)):
        if wanted:
            _PREBUILDS.append(
                subprocess.Popen(
                    [str(REPO / "scripts" / script)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )


# `make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`, mended for a crashed
# worker by tests/support/xdist_scheduling.py). What owns a part of
# the machine, or keeps time against it, runs on one worker, one test after the other, in one of
# these groups; everything else goes to whichever worker is free.
_MACHINE = ("guest", "powerloss", "multihost")
"""Directories whose tests run in group ``machine``: the session guest (one boot, 2 vCPUs of
emulation), /var/lib/diskledger-powerloss and the multihost rig's namespaces and firewall, and
lease timing, which must not meet a busy guest."""
_TIMED = ("tests/recovery/test_ceph_faults.py",)
"""Files also in group ``machine``: Ceph op timeouts of 2 s against a frozen OSD."""


# First: xdist's own hook turns the markers into the groups it schedules by (a suffix of the node
# id). This file is registered before xdist's worker plugin, so without tryfirst it ran after it
# and no test was grouped: both workers booted a session guest, and each ran libvirt tests with
# its own Ceph cluster against the one libvirt ceph secret.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(os.path.relpath(item.path, REPO)).as_posix()
        names = set(getattr(item, "fixturenames", ()))
        machine = any(path.startswith(f"tests/{directory}/") for directory in _MACHINE)
        if machine or path in _TIMED or "guest" in names:
            item.add_marker(pytest.mark.xdist_group("machine"))
        elif "libvirt_daemon" in names:
            # one libvirtd at qemu:///system: the worker that started it stops it at its end;
            # one ceph secret there, holding the key of one worker's cluster at a time
            item.add_marker(pytest.mark.xdist_group("libvirt"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if getattr(item.config.option, "loadgroup", False):  # an xdist worker, grouping: in its group?
        for mark in item.iter_markers("xdist_group"):
            if not item.nodeid.endswith(f"@{mark.args[0]}"):
                pytest.fail(f"not scheduled in group {mark.args[0]!r}: {item.nodeid}", False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: its harness counts go to the controller
        workeroutput["harness_stats"] = dataclasses.asdict(STATS)
    # Done long before in a whole run (what failed, the tests that used it reported); a run cut
    # short stops its own builds (a venv is renamed into place only once complete).
    for prebuild in _PREBUILDS:
        if prebuild.poll() is None:
            os.killpg(prebuild.pid, signal.SIGTERM)
        prebuild.wait()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    counts = getattr(node, "workeroutput", {}).get("harness_stats", {})
    for name, value in counts.items():
        setattr(STATS, name, getattr(STATS, name) + value)


# What a failed test reports of the shared infrastructure it used, as it found it: a cluster's
# daemons and sockets, its domains' qemu logs. Taken when the test fails, not at the end of the
# session, when all of it is gone.
_USED_CEPH = pytest.StashKey[CephCluster]()
_USED_DOMAINS = pytest.StashKey[Domains]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed and call.when == "call":
        if (cluster := item.stash.get(_USED_CEPH, None)) is not None:
            report.sections.append(("ceph cluster at the failure", cluster.diagnose()))
        if (booted := item.stash.get(_USED_DOMAINS, None)) is not None and (
            logs := booted.qemu_logs()
        ):
            report.sections.append(("qemu logs at the failure", logs))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the property-based harness did, on one line next to the run's result."""
    if STATS.examples:
        terminalreporter.write_line(f"diskledger.testing: {STATS.line()}")


def require_tool(tool: str, package: str) -> None:
    """Skip when ``tool`` is missing, except under CI=true, where that is a failure."""
    if shutil.which(tool) is None:
        reason = f"{tool} is not installed (Debian package {package})"
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true a missing component is a failure", pytrace=False)
        pytest.skip(reason)


def start_or_skip(
    start: Callable[[], None], stop: Callable[[], None], unavailable: type[Exception]
) -> None:
    """Start a component; when it is not installed (``unavailable``), skip, except under CI=true,
    where that is a failure. A component that fails to start is a failure everywhere. Whatever
    part of it did start is stopped on the way out."""
    try:
        start()
    except unavailable as exc:
        stop()
        if IN_CI:
            pytest.fail(f"{exc}; under CI=true a missing component is a failure", pytrace=False)
        pytest.skip(str(exc))
    except BaseException:
        stop()
        raise


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """A fresh, empty ledger on each database the store supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def qemu_img() -> None:
    require_tool("qemu-img", "qemu-utils")


@pytest.fixture(scope="session")
def template_files(tmp_path_factory: pytest.TempPathFactory, qemu_img: None) -> dict[str, Path]:
    """A 64 MiB raw and a 64 MiB qcow2 image with known bytes in the first sector."""
    directory = tmp_path_factory.mktemp("templates")
    raw = directory / "base.raw"
    with raw.open("wb") as handle:
        handle.write(b"TEMPLATE".ljust(512, b"\0"))
        handle.truncate(64 << 20)
    qcow2 = directory / "base.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    return {"raw": raw, "qcow2": qcow2}


@pytest.fixture(scope="session")
def ceph_cluster() -> Iterator[CephCluster]:
    """One real one-node Ceph cluster (cephx on) for the session; see tests/support/ceph.py.

    Skipped when Ceph is not installed, except under CI=true, where that is a failure, and a
    cluster that fails to start is a failure everywhere.
    """
    cluster = CephCluster()
    start_or_skip(cluster.start, cluster.stop, CephUnavailable)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ceph(ceph_cluster: CephCluster, request: pytest.FixtureRequest) -> Iterator[CephCluster]:
    """The session's cluster with both pools empty before the test (tests share the pools, so
    each starts from nothing and can compare the pool with its own ledger) and after it."""
    ceph_cluster.thaw_osd()
    ceph_cluster.settle()
    ceph_cluster.purge()
    request.node.stash[_USED_CEPH] = ceph_cluster
    yield ceph_cluster
    ceph_cluster.thaw_osd()
    ceph_cluster.settle()
    ceph_cluster.purge()


@pytest.fixture
def rbd_environ(ceph: CephCluster, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """DISKLEDGER_* settings for the rbd backend on the test cluster, also set in os.environ."""
    settings = ceph.environ()
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    return settings


@pytest.fixture(scope="session")
def libvirt_daemon() -> Iterator[LibvirtDaemon]:
    """A libvirtd answering at qemu:///system for the session; see tests/support/libvirt.py.

    One already running is used and left running; otherwise one is started (as root) and stopped
    at the end. Skipped when libvirt or KVM is missing, except under CI=true, where that is a
    failure, and a libvirtd that fails to start is a failure everywhere.
    """
    daemon = LibvirtDaemon()
    start_or_skip(daemon.start, daemon.stop, LibvirtUnavailable)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def libvirt_conn(libvirt_daemon: LibvirtDaemon) -> Iterator[libvirt.virConnect]:
    """One read-write connection to qemu:///system for the session."""
    conn = libvirt_daemon.connect()
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def domains(libvirt_conn: libvirt.virConnect, request: pytest.FixtureRequest) -> Iterator[Domains]:
    """Boots transient test domains; every domain and tracked secret is gone after the test,
    passed or failed."""
    booted = Domains(libvirt_conn)
    request.node.stash[_USED_DOMAINS] = booted
    try:
        yield booted
    finally:
        booted.cleanup()


@pytest.fixture
def libvirt_root() -> Iterator[Path]:
    """A fresh directory for disk images that libvirt domains open, removed after the test.

    qemu runs as libvirt-qemu, which must traverse every directory above an image; pytest's tmp
    dirs are 0700 root, so this one is under /var/tmp and 0711 (searchable, not listable).
    """
    directory = Path(tempfile.mkdtemp(prefix="diskledger-libvirt-", dir="/var/tmp"))
    try:
        directory.chmod(0o711)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    """One running Linux guest for the session (tests/support/guest.py): this machine's kernel
    has no device-mapper, the guest's has. It has diskledger and its dependencies at
    ``/payload`` (``PYTHONPATH=/payload/src:/payload/site``), three empty 8 GiB disks,
    ``/dev/disk/by-serial/pv0``, ``pv1`` and ``pv2`` (tests leave them as they found them), and
    two vCPUs, so that two in-guest runs can go side by side (tests/guest/test_lvm.py).

    Skipped when the guest cannot be built here, except under CI=true, where that is a failure;
    a guest that fails to boot is a failure everywhere."""
    work = tmp_path_factory.mktemp("guest")
    disks = []
    for serial in ("pv0", "pv1", "pv2"):
        path = work / f"{serial}.raw"
        with path.open("wb") as sparse:
            sparse.truncate(8 << 30)
        disks.append(GuestDisk(path, serial))
    try:
        image = build()
    except GuestUnavailable as exc:
        if IN_CI:
            pytest.fail(f"{exc}; under CI=true a missing component is a failure", pytrace=False)
        pytest.skip(str(exc))
    payload = python_payload(Path(__file__).resolve().parent.parent, work / "payload")
    with Guest(image, disks=disks, payload=payload, work_dir=work, cpus=2) as running:
        yield running
