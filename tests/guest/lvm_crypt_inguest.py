"""Encrypted lvm disks (dm-crypt LUKS2 on the volume), tested INSIDE the test guest with real
LVM and real cryptsetup: tests/guest/test_lvm.py copies this file in and runs it with pytest,
thick and sparse, as it runs ``lvm_inguest.py``. Everything goes through the Engine API with the
local key directory (``<root>-keys``).

Self-contained: the guest has diskledger and pytest (``/payload``), not this repository's
``tests`` package.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from blockio import read_direct, write_synced

from diskledger import faults
from diskledger.backends import DiskSource
from diskledger.backends.lvm import LUKS_TAG, disk_lv, mapping, snapshot_lv
from diskledger.engine import Config, Engine
from diskledger.errors import HypervisorError, UnsafeKeyStore
from diskledger.hypervisor import DomainInfo, disks_in
from diskledger.keys import default_key_dir

VG = os.environ["DISKLEDGER_LVM_VG"]
POOL = os.environ.get("DISKLEDGER_LVM_SPARSE") or None
MiB = 1 << 20
HEADER = MiB
MARKER = b"diskledger plaintext marker 5f3c9e: not in the ciphertext\n"
MARKED = (MARKER * (MiB // len(MARKER) + 1))[:MiB]
"""The template's first MiB; the rest of its 4 MiB is zeroes."""
TEMPLATE_SIZE = 4 * MiB


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check:
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"
    return done


def lvs() -> dict[str, dict[str, str]]:
    out = sh("lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
             "lv_name,lv_size,lv_tags", VG).stdout  # fmt: skip
    rows = json.loads(out)["report"][0]["lv"]
    return {r["lv_name"]: r for r in rows if r["lv_name"] != POOL}


MINE = mapping(VG, "")
"""What the names of this group's mappings begin with (``luks-VG-``; the tests' names are far
from the length where ``mapping`` turns to a digest)."""


def mappings() -> set[str]:
    """The crypt mappings open on this group's volumes (diskledger's are ``luks-VG-LV``; LVM's
    are ``VG-LV``): the other variant's group, run beside this one, has its own."""
    return {n for n in os.listdir("/dev/mapper") if n.startswith(MINE)}


def remove_all() -> None:
    for name in mappings():
        sh("cryptsetup", "close", name)
    left = sorted(lvs())
    if left:
        sh("lvremove", "--yes", "-f", *(f"{VG}/{lv}" for lv in left))


def device_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


class Opened:
    """A mapping of ``VG/lv`` opened with ``key`` for a test to look through (its own name)."""

    def __init__(self, lv: str, key: Path) -> None:
        self.name = "check-" + str(os.getpid())
        sh("cryptsetup", "open", "--key-file", str(key), f"/dev/{VG}/{lv}", self.name)
        self.path = f"/dev/mapper/{self.name}"

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        sh("cryptsetup", "close", self.name)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A fresh root (keys beside it); the group is left empty of volumes and mappings."""
    remove_all()
    yield tmp_path / "root"
    remove_all()


def open_engine(root: Path, *, recover: bool = False) -> Engine:
    environ = {k: v for k, v in os.environ.items() if k.startswith("DISKLEDGER_")}
    environ.pop("DISKLEDGER_FAULT", None)
    return Engine.open(Config.load(root=root, backend="lvm", recover=recover, environ=environ))


@pytest.fixture
def engine(root: Path) -> Iterator[Engine]:
    with open_engine(root) as opened:
        yield opened


@pytest.fixture
def template(tmp_path: Path) -> Path:
    raw = tmp_path / "base.raw"
    with raw.open("wb") as f:
        f.write(MARKED)
        f.truncate(TEMPLATE_SIZE)
    return raw


def keys(root: Path) -> set[str]:
    directory = Path(default_key_dir(root))
    return (
        {p.name[: -len(".key")] for p in directory.glob("*.key")} if directory.exists() else set()
    )


def key_of(root: Path, engine: Engine, disk: str) -> Path:
    made = engine.show(disk).encryption
    assert made is not None
    return Path(default_key_dir(root)) / f"{made.key}.key"


def leave_stale_extents(length: int) -> None:
    """An operator's volume filled with 0xA5 and removed uncleared: a thick volume made next
    gets its extents."""
    sh("lvcreate", "--yes", "-W", "n", "-Z", "n", "-n", "stale", "-L", f"{length}b", VG)
    write_synced(f"/dev/{VG}/stale", 0, b"\xa5" * length)
    sh("lvremove", "--yes", "-f", f"{VG}/stale")


# -- (a) (b) (c) (d): the lifecycle of an encrypted disk ---------------------------------------


def test_an_encrypted_disk_from_create_to_delete(
    root: Path, engine: Engine, template: Path
) -> None:
    timings: dict[str, float] = {}

    def timed(what: str, call: Callable[[], object]) -> object:
        started = time.monotonic()
        result = call()
        timings[what] = round(time.monotonic() - started, 2)
        return result

    engine.add_template("base", template, "raw")
    leave_stale_extents(8 * MiB)
    view = timed("create", lambda: engine.create("vm1/root", template="base", encrypt=True))
    disk = disk_lv("vm1", "root")
    lv = f"{VG}/{disk}"

    # (d) the disk is the size asked; its volume is a header larger and tagged as encrypted
    shown = engine.show("vm1/root")
    assert shown.size == TEMPLATE_SIZE, view
    assert shown.encryption is not None and shown.encryption.format == "luks2"
    volume = lvs()[disk]
    assert int(volume["lv_size"]) == TEMPLATE_SIZE + HEADER
    assert {LUKS_TAG, f"{LUKS_TAG}-header-1m"} <= set(volume["lv_tags"].split(","))
    assert mappings() == set(), "the mapping of the copy was left open"

    # (a) the marker is not in the volume's bytes, and is through a mapping opened with the key
    raw = read_direct(f"/dev/{lv}", 0, TEMPLATE_SIZE + HEADER)
    assert raw[:6] == b"LUKS\xba\xbe"
    assert MARKER[:24] not in raw and b"\xa5" * 512 not in raw[HEADER:]
    key = key_of(root, engine, "vm1/root")
    with Opened(disk, key) as plain:
        assert device_size(plain.path) == TEMPLATE_SIZE
        assert read_direct(plain.path, 0, MiB) == MARKED
        assert read_direct(plain.path, MiB, TEMPLATE_SIZE - MiB) == bytes(TEMPLATE_SIZE - MiB)

    # (b) another key opens nothing
    wrong = root.parent / "wrong.key"
    wrong.write_bytes(os.urandom(32).hex().encode())
    refused = sh("cryptsetup", "open", "--key-file", str(wrong), f"/dev/{lv}", "wrong", check=False)
    assert refused.returncode != 0 and "wrong" not in os.listdir("/dev/mapper")

    # a blank encrypted disk on extents that held another volume's data reads zeroes
    timed("blank create", lambda: engine.create("vm1/blank", size=3 * MiB, encrypt=True))
    with Opened(disk_lv("vm1", "blank"), key_of(root, engine, "vm1/blank")) as plain:
        assert read_direct(plain.path, 0, 3 * MiB) == bytes(3 * MiB)

    # (d) resize grows the disk and its plaintext reads zeroes there
    timed("resize", lambda: engine.resize("vm1/root", 8 * MiB))
    assert engine.show("vm1/root").size == 8 * MiB
    assert int(lvs()[disk]["lv_size"]) == 8 * MiB + HEADER
    with Opened(disk, key) as plain:
        assert device_size(plain.path) == 8 * MiB
        assert read_direct(plain.path, 0, MiB) == MARKED
        assert read_direct(plain.path, TEMPLATE_SIZE, 4 * MiB) == bytes(4 * MiB)
    # ... and grows an open mapping (a guest's) with it
    backend = engine.runtime.backend
    name = mapping(VG, disk)
    backend.open_mapping(lv, engine_luks(key))  # type: ignore[attr-defined]
    assert mappings() == {name}
    timed("resize, mapping open", lambda: engine.resize("vm1/root", 10 * MiB))
    assert device_size(f"/dev/mapper/{name}") == 10 * MiB
    assert read_direct(f"/dev/mapper/{name}", 8 * MiB, 2 * MiB) == bytes(2 * MiB)
    assert backend.close_mapping(lv) and mappings() == set()  # type: ignore[attr-defined]

    # (d) snapshot and rollback work on the ciphertext and bring the data back
    timed("snapshot", lambda: engine.snapshot("vm1/root", "s1"))
    snap = lvs()[snapshot_lv(disk, "s1")]
    assert LUKS_TAG in snap["lv_tags"].split(",")
    assert int(snap["lv_size"]) == 10 * MiB + HEADER
    with Opened(disk, key) as plain:
        write_synced(plain.path, 0, b"\x42" * MiB)
    timed("resize after snapshot", lambda: engine.resize("vm1/root", 12 * MiB))
    with Opened(disk, key) as plain:
        write_synced(plain.path, 10 * MiB, b"\x43" * (2 * MiB))
    timed("rollback", lambda: engine.rollback("vm1/root", "s1"))
    assert engine.show("vm1/root").size == 12 * MiB
    with Opened(disk, key) as plain:
        assert read_direct(plain.path, 0, MiB) == MARKED
        assert read_direct(plain.path, 10 * MiB, 2 * MiB) == bytes(2 * MiB)
    checked = engine.verify()
    assert checked.ok, checked.to_json()  # sizes as the ledger has them: no drift

    # (c) delete leaves no key, no mapping, no volume
    made = engine.show("vm1/root").encryption
    assert made is not None
    backend.open_mapping(lv, engine_luks(key))  # type: ignore[attr-defined]  # left open
    timed("delete", lambda: engine.delete("vm1/root"))
    assert made.key not in keys(root) and not key.exists()
    assert mappings() == set()
    assert not any(n.startswith(disk) for n in lvs()), lvs()
    engine.delete("vm1/blank")
    assert keys(root) == set() and lvs() == {}
    assert engine.verify().ok
    print("timings", json.dumps(timings))


def engine_luks(key: Path) -> object:
    from diskledger.backends.qemu import Luks

    return Luks(str(key), 100)


class Libvirt:
    """A stand-in for libvirt (the guest that runs LVM has none): one running domain, ``dom1``,
    whose disks are what was attached; ``refuse`` makes the next attach fail as libvirt would.
    A libvirt secret must never be asked for: the host decrypts an lvm disk."""

    UUID = "6d1b7c0e-8f53-4b0a-9a49-3e2f5d7c1a10"

    def __init__(self) -> None:
        self.disks: dict[str, DiskSource] = {}
        self.xml: list[str] = []
        self.refuse = False

    def find(self, domain: str) -> DomainInfo | None:
        return self.domain(domain) if domain == "dom1" else None

    def domain(self, domain: str, *, stored: bool = False) -> DomainInfo:
        return DomainInfo("dom1", self.UUID, True, dict(self.disks))

    def attach(self, domain: str, device_xml: str) -> None:
        if self.refuse:
            raise HypervisorError("the domain refused the device (a stand-in's refusal)")
        self.xml.append(device_xml)
        self.disks.update(disks_in(f"<domain><devices>{device_xml}</devices></domain>"))

    def detach(self, domain: str, device_xml: str, target_dev: str) -> None:
        del self.disks[target_dev]

    def define_volume_secret(self, *args: object, **kwargs: object) -> str:
        raise AssertionError("a libvirt secret for an lvm disk")

    undefine_volume_secret = define_volume_secret

    def close(self) -> None:
        pass


def test_attach_opens_the_mapping_the_guest_uses_and_detach_closes_it(
    root: Path, engine: Engine, template: Path
) -> None:
    """attach opens ``/dev/mapper/luks-VG-LV`` with the key and the domain gets it as a block
    device (no <encryption>, no secret); detach closes it; an attach the domain refuses is
    rolled back and closes it too."""
    libvirt = Libvirt()
    engine.runtime.hypervisor = libvirt  # type: ignore[assignment]
    engine.add_template("base", template, "raw")
    engine.create("vm1/data", template="base", encrypt=True)
    name = mapping(VG, disk_lv("vm1", "data"))
    plain = f"/dev/mapper/{name}"

    engine.attach("vm1/data", "dom1", target_dev="vdb")

    assert mappings() == {name}
    (xml,) = libvirt.xml
    assert f'dev="{plain}"' in xml or f"dev='{plain}'" in xml, xml
    assert "<encryption" not in xml and 'type="block"' in xml.replace("'", '"'), xml
    assert read_direct(plain, 0, MiB) == MARKED  # what the guest reads: the plaintext
    assert engine.show("vm1/data").attachment is not None
    assert engine.verify().ok

    engine.detach("vm1/data")

    assert mappings() == set() and libvirt.disks == {}
    libvirt.refuse = True
    with pytest.raises(HypervisorError, match="refused"):
        engine.attach("vm1/data", "dom1", target_dev="vdb")
    assert mappings() == set() and engine.show("vm1/data").attachment is None
    (failed,) = [e for e in engine.history("vm1/data") if e.type == "disk.attach.failed"]
    assert "mapping_closed" in failed.data, failed.data  # rolled back: closed (again)
    engine.delete("vm1/data")
    assert keys(root) == set()


# -- (e) bad input --------------------------------------------------------------------------------


def test_a_loose_key_directory_refuses_encrypt_unchanged(root: Path, engine: Engine) -> None:
    directory = Path(default_key_dir(root))
    directory.mkdir(mode=0o700)
    directory.chmod(0o755)
    events, before = len(engine.history()), lvs()
    with pytest.raises(UnsafeKeyStore, match="mode 0755") as caught:
        engine.create("vm1/root", size=2 * MiB, encrypt=True)
    message = str(caught.value)
    assert message and "\n" not in message
    assert len(engine.history()) == events and lvs() == before and keys(root) == set()
    assert mappings() == set()


# -- (f) crashes --------------------------------------------------------------------------------


def killed(root: Path, fault: str, call: Callable[[Engine], object]) -> None:
    """Run ``call`` in a forked child with ``fault`` armed: it SIGKILLs itself there."""
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        code = 3
        try:
            with faults.armed(fault), open_engine(root) as engine:
                call(engine)
            code = 2  # not killed: the fault point was never reached
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"not killed at {fault}: exit {os.waitstatus_to_exitcode(status)}"
    )


def recovered(root: Path, engine: Engine) -> None:
    """Recover, and check: nothing for an operator, the key directory holds exactly the keys of
    the live disks, no mapping and no temporary volume is left, verify is clean."""
    report = engine.recover()
    assert not report.needs_operator and not report.in_flight, report.to_json()
    live = {view.encryption.key for view in engine.list() if view.encryption is not None}
    assert keys(root) == live, (keys(root), live)
    assert mappings() == set()
    assert not [lv for lv in lvs() if "+." in lv], lvs()
    checked = engine.verify()
    assert checked.ok, checked.to_json()


def test_killed_encrypted_operations_are_recovered(
    root: Path, engine: Engine, template: Path
) -> None:
    engine.add_template("base", template, "raw")
    qcow2 = template.with_suffix(".qcow2")
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(template), str(qcow2))
    engine.import_disk("vm1/keep", qcow2, "qcow2", encrypt=True)  # a live disk and its key
    keep = disk_lv("vm1", "keep")
    assert int(lvs()[keep]["lv_size"]) == TEMPLATE_SIZE + HEADER
    with Opened(keep, key_of(root, engine, "vm1/keep")) as plain:
        assert read_direct(plain.path, 0, MiB) == MARKED

    def create(e: Engine) -> object:
        return e.create("vm1/root", template="base", encrypt=True)

    # the key made, no intent yet: nothing names it, recovery's sweep destroys it
    killed(root, "create@after-key-created:kill", create)
    assert len(keys(root)) == 2
    recovered(root, engine)

    # killed with the copy's mapping open: rolled back, the mapping closed, the volume gone
    killed(root, "create@mid-effect:kill", create)
    assert len(mappings()) == 1 and [lv for lv in lvs() if "+.tmp-" in lv], lvs()
    recovered(root, engine)
    assert engine.show("vm1/root").state.value == "absent"

    # a delete killed with the data gone and the key not yet: finished, the key destroyed
    engine.create("vm1/root", template="base", encrypt=True)
    engine.snapshot("vm1/root", "s1")
    killed(root, "delete@before-key-destroyed:kill", lambda e: e.delete("vm1/root"))
    assert len(keys(root)) == 2 and disk_lv("vm1", "root") not in lvs()
    recovered(root, engine)
    assert engine.show("vm1/root").state.value == "absent"
    assert set(lvs()) == {keep}
    engine.delete("vm1/keep")
    assert keys(root) == set() and lvs() == {}


# -- a group of 4 MiB extents: the header is one extent --------------------------------------


def test_a_group_of_larger_extents_gets_a_header_of_one_extent(tmp_path: Path) -> None:
    """LVM's default extent is 4 MiB: a 1 MiB header would make every encrypted disk 3 MiB
    larger than asked (the volume rounded up to whole extents); a header of one extent keeps a
    disk of whole extents exactly its size."""
    if POOL is not None:
        pytest.skip("once is enough: the header follows the group's extents, thick or thin")
    pv, vg = "/dev/disk/by-serial/pv1", "dlvg4"
    sh("pvcreate", "-q", pv)
    sh("vgcreate", "-q", "-s", "4m", vg, pv)
    try:
        environ = {"DISKLEDGER_LVM_VG": vg}
        config = Config.load(root=tmp_path / "root", backend="lvm", recover=False, environ=environ)
        with Engine.open(config) as engine:
            engine.create("vm1/root", size=8 * MiB, encrypt=True)
            assert engine.show("vm1/root").size == 8 * MiB
            disk = disk_lv("vm1", "root")
            out = sh("lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
                     "lv_size,lv_tags", f"{vg}/{disk}").stdout  # fmt: skip
            (row,) = json.loads(out)["report"][0]["lv"]
            assert int(row["lv_size"]) == 12 * MiB
            assert f"{LUKS_TAG}-header-4m" in row["lv_tags"].split(",")
            dump = sh("cryptsetup", "luksDump", f"/dev/{vg}/{disk}").stdout
            assert "offset: 4194304 [bytes]" in dump, dump
            assert engine.verify().ok
            engine.delete("vm1/root")
            assert keys(tmp_path / "root") == set()
    finally:
        sh("vgremove", "-q", "-f", vg)
        sh("pvremove", "-q", "-ff", "-y", pv)
        sh("dd", "if=/dev/zero", f"of={pv}", "bs=1M", "count=1", "conv=fsync", "status=none")
