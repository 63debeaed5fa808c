"""The ``parallels`` backend: qemu's parallels format on the file backend (issue 14's ploop part).

The shipped contract suite runs on it (its resize checks skipped by ``Capability.FIXED_SIZE``,
one check of the refusal instead), the file-backend checks too; then what only it does: the
refusal of a resize through the engine and the CLI (nothing recorded, nothing touched), a disk
grown from a template without a resize, what qemu-img itself supports for the format, the
safety inspection, preallocation, and libvirt's name for the format (``ploop``).

The conftest's ``commands`` fixture checks every qemu-img call here pins a format.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from diskledger import Config, Engine, InvalidInput, InvalidSize, UnsafeImage
from diskledger.backends import (
    BACKENDS,
    Backend,
    Capability,
    DiskSource,
    ParallelsBackend,
    SourceKind,
    TemplateCache,
    backend_for,
    registry,
)
from diskledger.cli import main
from diskledger.errors import Unsupported
from diskledger.hypervisor.device import describe
from diskledger.testing import BackendContract, InspectingFileStorage, StorageAccess
from diskledger.testing.samples import cache_template, make_source
from tests.backends.helpers import MiB, has_pattern, info, write_pattern

# The checks every file backend passes, run here on parallels (``backend`` below).
from tests.backends.test_contract import (  # noqa: F401
    test_a_file_backend_keeps_disks_in_its_own_format,
    test_delete_removes_the_instance_directory,
    test_probe_does_not_trust_a_temporary_file,
)
from tests.recovery.helpers import (
    ABSENT,
    after,
    assert_consistent,
    cli,
    created_state,
    disk_state,
    open_engine,
)


class TestParallelsContract(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return ParallelsBackend(str(tmp_path))

    @pytest.fixture
    def storage(self, tmp_path: Path) -> StorageAccess:
        return InspectingFileStorage(tmp_path)


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    """The parallels backend, for the file-backend checks imported above."""
    return ParallelsBackend(str(tmp_path))


def digest(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


# -- what qemu-img supports for the format (docs/backends/parallels.md quotes these) ----------


def test_qemu_img_makes_reads_and_converts_parallels_but_cannot_resize_or_snapshot(
    tmp_path: Path,
) -> None:
    image = str(tmp_path / "disk.hdd")
    assert qemu_img("create", "-f", "parallels", image, "1M").returncode == 0
    assert info(image, "parallels")["virtual-size"] == MiB
    checked = qemu_img("check", "-f", "parallels", image)
    assert checked.returncode == 0 and "No errors were found" in checked.stdout

    resized = qemu_img("resize", "-f", "parallels", image, "2M")
    assert resized.returncode == 1
    assert resized.stderr.strip() == "qemu-img: Image format driver does not support resize"
    snapshot = qemu_img(
        "snapshot", "--image-opts", "-c", "s1", f"driver=parallels,file.filename={image}"
    )
    assert snapshot.returncode == 1
    assert snapshot.stderr.strip() == (
        "qemu-img: Could not create snapshot 's1': -95 (Operation not supported)"
    )
    assert info(image, "parallels")["virtual-size"] == MiB  # neither changed it


# -- the backend -----------------------------------------------------------------------------


def test_it_is_a_built_in_backend_that_declares_fixed_size(tmp_path: Path) -> None:
    assert "parallels" in BACKENDS and "parallels" in registry.names()
    made = backend_for("parallels", str(tmp_path))
    assert isinstance(made, ParallelsBackend)
    assert (made.name, made.disk_format) == ("parallels", "parallels")
    assert made.capabilities == frozenset({Capability.FIXED_SIZE})
    # ploop, Virtuozzo's own tools, stays unknown: this backend is qemu's format, not ploop.
    assert "ploop" not in registry.names()


def test_resize_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    made = ParallelsBackend(str(tmp_path))
    location = made.disk_location("vm1", "disk0")
    made.create(location, "op1", size=MiB, template=None)
    write_pattern(location, "parallels", 0x5A)
    before = digest(location)

    with pytest.raises(Unsupported, match="qemu's parallels driver does not implement resize"):
        made.resize(location, "parallels", 2 * MiB)

    assert digest(location) == before and info(location, "parallels")["virtual-size"] == MiB
    assert made.resize(location, "parallels", MiB).size == MiB  # that large already


def test_a_disk_larger_than_its_template_is_made_at_its_size_without_a_resize(
    tmp_path: Path, commands: list[tuple[str, ...]]
) -> None:
    made = ParallelsBackend(str(tmp_path))
    template = cache_template(TemplateCache(str(tmp_path)), tmp_path / "sources", "qcow2")
    location = made.disk_location("vm1", "disk0")
    commands.clear()

    seen = made.create(location, "op1", size=3 * MiB, template=template)

    assert seen.size == 3 * MiB and seen.backing is None
    assert has_pattern(location, "parallels", 0x11)
    assert has_pattern(location, "parallels", 0x00, 2 * MiB)
    assert not any(c[:2] == ("qemu-img", "resize") for c in commands)
    # A blank image of the size, then the template's data converted into it.
    tools = [c[1] for c in commands if c[0] == "qemu-img"]
    assert tools[:2] == ["create", "convert"]
    convert = next(c for c in commands if c[:2] == ("qemu-img", "convert"))
    assert "-n" in convert and convert[convert.index("-f") + 1] == "qcow2"


def test_rollback_to_a_smaller_snapshot_grows_by_copy(tmp_path: Path) -> None:
    made = ParallelsBackend(str(tmp_path))
    location = made.disk_location("vm1", "disk0")
    made.create(location, "op1", size=MiB, template=None)
    write_pattern(location, "parallels", 0xAB)
    made.snapshot(location, "parallels", "s1", "op2")
    write_pattern(location, "parallels", 0xCD)

    after = made.rollback(location, "parallels", "s1", "op3", size=2 * MiB)

    assert after.size == 2 * MiB
    assert has_pattern(location, "parallels", 0xAB)
    assert has_pattern(location, "parallels", 0x00, MiB + 64 * 1024)
    assert not [p for p in Path(location).parent.iterdir() if ".tmp-" in p.name]


def test_preallocation_is_not_claimed(tmp_path: Path) -> None:
    """qemu's parallels driver truncates the file to its data end when it closes an image it
    wrote: space reserved beyond it is given back, so parallels disks are never recorded as
    preallocated, whatever DISKLEDGER_PREALLOCATE says."""
    made = backend_for("parallels", str(tmp_path), preallocate=True)
    assert made.preallocates is False
    environ = {"DISKLEDGER_PREALLOCATE": "space"}
    config = Config.load(root=tmp_path / "root", backend="parallels", environ=environ)
    with Engine.open(config) as engine:
        assert not engine.create("vm-1/root", size=16 * MiB).preallocated


@pytest.mark.parametrize("source_format", ["parallels", "raw", "qcow2"])
def test_the_safety_inspection_refuses_what_is_not_the_declared_format(
    tmp_path: Path, source_format: str
) -> None:
    """oslo.utils' format inspector does not know the parallels format: an image declared as
    parallels is refused whatever it holds (fail closed), and a parallels image is never taken
    for a qcow2. Templates and imports come as raw or qcow2 and are converted."""
    source = tmp_path / "sources" / f"source.{source_format}"
    make_source(source, source_format, MiB, pattern=0x11)
    made = ParallelsBackend(str(tmp_path))
    location = made.disk_location("vm1", "imported")
    artifacts = made.import_artifacts(location, "op-import")

    with pytest.raises(UnsafeImage, match="declared parallels"):
        made.import_file(location, "op-import", str(source), "parallels", max_virtual_size=MiB)
    with pytest.raises(UnsafeImage, match="declared parallels"):
        TemplateCache(str(tmp_path)).import_file(str(source), "parallels", "tpl", "op-fetch")
    if source_format == "parallels":
        with pytest.raises(UnsafeImage, match="declared qcow2, but the image is raw"):
            made.import_file(location, "op-import", str(source), "qcow2", max_virtual_size=MiB)

    made.remove(artifacts)  # the compensation
    assert not any(o.exists for o in made.probe(artifacts))


def test_libvirt_names_the_format_ploop(tmp_path: Path) -> None:
    """libvirt's virStorageFileFormat has no 'parallels': its 'ploop' is what its qemu driver
    opens with qemu's parallels block driver."""
    source = DiskSource(SourceKind.FILE, path=str(tmp_path / "disk"))
    device = describe(source, "parallels", target_dev="vda")
    driver = ET.fromstring(device.to_xml()).find("driver")
    assert driver is not None and driver.attrib == {
        "name": "qemu",
        "type": "ploop",
        "cache": "none",
    }
    assert device.format == "parallels"  # the recorded fact is unchanged
    qcow2 = ET.fromstring(describe(source, "qcow2", target_dev="vda").to_xml()).find("driver")
    assert qcow2 is not None and qcow2.get("type") == "qcow2"


LIBVIRT_SCHEMA = Path("/usr/share/libvirt/schemas/storagecommon.rng")


def test_the_installed_libvirt_accepts_ploop_and_not_parallels() -> None:
    """The driver types a disk element may name are libvirt's storageFormat values (its RNG
    schema, which follows virStorageFileFormat): every one we emit is among them."""
    if not LIBVIRT_SCHEMA.exists():
        message = f"{LIBVIRT_SCHEMA} is missing (Debian package libvirt-daemon)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    rng = "{http://relaxng.org/ns/structure/1.0}"
    accepted = {
        value.text
        for define in ET.parse(LIBVIRT_SCHEMA).getroot().iter(f"{rng}define")
        if define.get("name") in ("storageFormat", "storageFormatBacking")
        for value in define.iter(f"{rng}value")
    }
    assert "ploop" in accepted and "parallels" not in accepted
    source = DiskSource(SourceKind.FILE, path="/var/lib/diskledger/disks/vm-1/root")
    for fmt in ("raw", "qcow2", "parallels"):
        driver = ET.fromstring(describe(source, fmt, target_dev="vda").to_xml()).find("driver")
        assert driver is not None and driver.get("type") in accepted, fmt


# -- through the engine ------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path, qemu_img: None) -> Iterator[Engine]:
    config = Config.load(root=tmp_path / "root", backend="parallels", environ={})
    with Engine.open(config) as engine:
        yield engine


def test_the_lifecycle_through_the_engine(
    engine: Engine, template_files: dict[str, Path], tmp_path: Path
) -> None:
    engine.add_template("base", template_files["qcow2"], "qcow2")
    disk = engine.create("vm-1/root", template="base", size="96M")
    assert (disk.format, disk.size, disk.backing) == ("parallels", 96 * MiB, None)
    assert disk.location is not None and info(disk.location, "parallels")["virtual-size"] == (
        96 * MiB
    )
    blank = engine.create("vm-1/swap", size="8M")
    assert (blank.format, blank.size) == ("parallels", 8 * MiB)

    engine.snapshot("vm-1/root", "s1")
    write_pattern(disk.location, "parallels", 0x42)
    engine.rollback("vm-1/root", "s1")
    assert not has_pattern(disk.location, "parallels", 0x42)
    for fmt in ("raw", "qcow2"):
        exported = engine.export("vm-1/root", str(tmp_path / f"out.{fmt}"), fmt)
        assert (exported.format, exported.size) == (fmt, 96 * MiB)
        out = info(exported.target, fmt)
        assert out["virtual-size"] == 96 * MiB and "backing-filename" not in out
        # Converted out, and back in: the export passes the safety inspection as what it is.
        back = engine.import_disk(f"vm-2/{fmt}", exported.target, fmt)
        assert (back.format, back.size) == ("parallels", 96 * MiB)
        assert back.location is not None
        head_bytes = subprocess.run(
            ["qemu-io", "-f", "parallels", "-c", "read -v 0 8", back.location],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "TEMPLATE" in head_bytes
        engine.delete(f"vm-2/{fmt}")
    # An export names its format: the disk's own is not one an export writes.
    head = engine.store.head()
    # qemu's LUKS lives inside qcow2: a parallels disk cannot be encrypted (refused at once).
    with pytest.raises(InvalidInput, match="the parallels backend cannot encrypt disks"):
        engine.create("vm-1/secret", size="8M", encrypt=True)
    with pytest.raises(InvalidInput, match="export format 'parallels' is not one of raw, qcow2"):
        engine.export("vm-1/root", str(tmp_path / "out.hdd"))
    assert engine.store.head() == head and not (tmp_path / "out.hdd").exists()
    engine.remove_snapshot("vm-1/root", "s1")
    engine.delete("vm-1/root")
    engine.delete("vm-1/swap")
    assert not os.path.exists(disk.location)
    assert engine.verify().ok


def test_a_resize_is_refused_before_anything_is_recorded(engine: Engine) -> None:
    disk = engine.create("vm-1/root", size="8M")
    assert disk.location is not None
    write_pattern(disk.location, "parallels", 0x5A)
    before = (engine.store.head(), digest(disk.location), engine.show("vm-1/root"))

    with pytest.raises(Unsupported) as caught:
        engine.resize("vm-1/root", "16M")

    assert str(caught.value) == (
        "the parallels backend cannot resize disk vm-1/root: its disks keep the size they were "
        "made with"
    )
    assert (caught.value.disk, caught.value.backend, caught.value.operation) == (
        "vm-1/root",
        "parallels",
        "resize",
    )
    assert isinstance(caught.value, ValueError)  # an InvalidInput: nothing was touched
    assert (engine.store.head(), digest(disk.location), engine.show("vm-1/root")) == before
    assert engine.store.pending() == []
    # The disk's own size is no change; a smaller one is a shrink, refused as for every backend.
    assert engine.resize("vm-1/root", "8M") == before[2]
    with pytest.raises(InvalidSize, match="never shrink"):
        engine.resize("vm-1/root", "4M")
    assert (engine.store.head(), digest(disk.location)) == before[:2]


# -- through the CLI ---------------------------------------------------------------------------


def run_cli(root: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([*argv, "--root", str(root), "--backend", "parallels"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def fingerprint(root: Path) -> tuple[int, list[tuple[str, str]]]:
    with Engine.open(Config.load(root=root, backend="parallels", environ={})) as engine:
        head = engine.store.head()
    files = sorted(
        (str(p.relative_to(root)), digest(p))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("ledger.db")
    )
    return head, files


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_the_cli_refuses_a_resize_in_one_line_with_exit_1(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    qemu_img: None,
    as_json: bool,
) -> None:
    for name in ("DISKLEDGER_ROOT", "DISKLEDGER_LEDGER", "DISKLEDGER_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "root"
    code, out, err = run_cli(root, capsys, "disk", "create", "vm-1/root", "--blank", "--size", "8M")
    assert code == 0, err
    json_flag = ("--json",) if as_json else ()
    code, out, err = run_cli(root, capsys, "disk", "show", "vm-1/root", "--json")
    location = json.loads(out)["location"]
    write_pattern(location, "parallels", 0x5A)
    before = fingerprint(root)

    code, out, err = run_cli(root, capsys, "disk", "resize", "vm-1/root", "16M", *json_flag)

    assert (code, out) == (1, "")
    assert err == (
        "diskledger: error: the parallels backend cannot resize disk vm-1/root: its disks keep "
        "the size they were made with\n"
    )
    assert fingerprint(root) == before
    assert has_pattern(location, "parallels", 0x5A)
    code, out, err = run_cli(root, capsys, "disk", "show", "vm-1/root", "--json")
    shown = json.loads(out)
    assert (shown["state"], shown["size"]) == ("created", 8 * MiB)


def test_the_cli_describes_a_parallels_disk_to_libvirt_as_ploop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISKLEDGER_BACKEND", raising=False)
    root = tmp_path / "root"
    assert run_cli(root, capsys, "disk", "create", "vm-1/root", "--blank", "--size", "8M")[0] == 0

    code, out, err = run_cli(root, capsys, "disk", "xml", "vm-1/root", "--dev", "vda", "--json")

    assert code == 0, err
    element = ET.fromstring(json.loads(out)["xml"])
    driver, source = element.find("driver"), element.find("source")
    assert driver is not None and driver.get("type") == "ploop"
    assert source is not None and source.get("file", "").endswith("/disks/vm-1/root")


# -- crash recovery: a CLI process SIGKILLed at each point of each operation -------------------

DISK = "vm-1/root"
OLD_DATA, NEW_DATA = 0x42, 0x41
SMALL = 4 * MiB


@pytest.fixture(scope="module")
def small_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4 MiB qcow2 template source with data in its first 64 KiB."""
    source = tmp_path_factory.mktemp("parallels-sources") / "small.qcow2"
    make_source(source, "qcow2", SMALL, pattern=0x11)
    return {"qcow2": source}


def _prepare(
    op: str, root: Path, sources: dict[str, Path], exports: Path
) -> tuple[list[str], Callable[[Engine], Any], Any, Any]:
    """The CLI arguments of ``op`` on a parallels disk, how to observe what it changes, and
    what that is before and after it."""
    location = str(root / "disks" / DISK)
    with open_engine(root, "parallels") as engine:
        engine.add_template("base", sources["qcow2"], "qcow2")
        observe: Callable[[Engine], Any] = lambda e: disk_state(e, DISK)  # noqa: E731
        if op == "create":
            new = created_state(root, DISK, "parallels", SMALL, template="base")
            return ["disk", "create", DISK, "--template", "base"], observe, ABSENT, new
        if op == "import":
            new = created_state(root, DISK, "parallels", SMALL)
            argv = ["disk", "import", DISK, str(sources["qcow2"]), "--format", "qcow2"]
            return argv, observe, ABSENT, new
        engine.create(DISK, template="base")
        old = disk_state(engine, DISK)
        if op == "snapshot":
            return ["disk", "snapshot", DISK, "s1"], observe, old, after(old, "snapshot", "s1")
        if op == "export":
            target = exports / "out.raw"

            def exported(e: Engine) -> Any:
                seen = info(str(target), "raw") if target.exists() else None
                return disk_state(e, DISK), seen and (seen["format"], seen["virtual-size"])

            argv = ["disk", "export", DISK, str(target), "--format", "raw"]
            return argv, exported, (old, None), (old, ("raw", SMALL))
        if op == "delete":
            return ["disk", "delete", DISK], observe, old, ABSENT
        write_pattern(location, "parallels", NEW_DATA)
        engine.snapshot(DISK, "s1")
        old = disk_state(engine, DISK)
        if op == "remove-snapshot":
            new = after(old, "remove-snapshot", "s1")
            return ["disk", "remove-snapshot", DISK, "s1"], observe, old, new
        assert op == "rollback"
        write_pattern(location, "parallels", OLD_DATA)

        def data(e: Engine) -> Any:
            held = next(p for p in (OLD_DATA, NEW_DATA) if has_pattern(location, "parallels", p))
            return disk_state(e, DISK), held

        return ["disk", "rollback", DISK, "s1"], data, (old, OLD_DATA), (old, NEW_DATA)


@pytest.mark.parametrize("point", ["after-intent", "mid-effect", "after-effect", "after-outcome"])
@pytest.mark.parametrize(
    "op", ["create", "import", "snapshot", "rollback", "remove-snapshot", "export", "delete"]
)
def test_a_killed_operation_recovers_to_before_or_after(
    op: str, point: str, tmp_path: Path, small_sources: dict[str, Path]
) -> None:
    """SIGKILLed at each point, the next ``recover`` leaves the disk as it was or as the
    operation makes it, nothing pending, nothing leaked, and the ledger verifies."""
    root, exports = tmp_path / "root", tmp_path / "exports"
    exports.mkdir()
    argv, observe, old, new = _prepare(op, root, small_sources, exports)

    crashed = cli(root, *argv, backend="parallels", fault=f"{op}@{point}")
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    recovered = cli(root, "recover", backend="parallels")
    assert recovered.returncode == 0, recovered.stderr
    assert json.loads(recovered.stdout)["needs_operator"] == []

    assert_consistent(root, exports, backend="parallels")
    with open_engine(root, "parallels") as engine:
        state = observe(engine)
    assert state in (old, new), f"neither before nor after {op}: {state}"
    if point == "after-outcome":
        assert state == new
