"""Hostile images, names and paths: each refused in one line, recorded, nothing left behind.

The corpus is made here, with qemu-img and small writers, as the CVEs that inspired it did.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from diskledger.cli import main
from diskledger.engine import Config, Engine
from diskledger.errors import UnsafeImage
from tests.engine.test_recovery import crashed_resize

MiB = 1 << 20


def qimg(*argv: str) -> None:
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True)


def qcow2_with_backing(d: Path) -> Path:
    (d / "base.raw").write_bytes(b"\0" * MiB)
    qimg("create", "-f", "qcow2", "-b", str(d / "base.raw"), "-F", "raw", str(d / "x.qcow2"))
    return d / "x.qcow2"


def qcow2_with_data_file(d: Path) -> Path:
    qimg("create", "-f", "qcow2", "-o", f"data_file={d / 'data.raw'}", str(d / "x.qcow2"), "1M")
    return d / "x.qcow2"


def vmdk_descriptor(create_type: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        text = (
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
            f'createType="{create_type}"\n\n# Extent description\n'
            'RW 2048 FLAT "/etc/passwd" 0\n\n# The Disk Data Base\n#DDB\n'
        )
        (d / "x.vmdk").write_text(text)
        return d / "x.vmdk"

    return make


def raw_with_qcow2_header(d: Path) -> Path:
    qimg("create", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", "-u", str(d / "h.qcow2"), "1M")
    data = (d / "h.qcow2").read_bytes()
    (d / "x.raw").write_bytes(data.ljust(MiB, b"\0"))
    return d / "x.raw"


def truncated_qcow2(d: Path) -> Path:
    qimg("create", "-f", "qcow2", str(d / "full.qcow2"), "1M")
    (d / "x.qcow2").write_bytes((d / "full.qcow2").read_bytes()[:100])
    return d / "x.qcow2"


def qcow2_claiming_exabytes(d: Path) -> Path:
    qimg("create", "-f", "qcow2", str(d / "x.qcow2"), "1M")
    with (d / "x.qcow2").open("r+b") as handle:  # the size field of the header, big-endian
        handle.seek(24)
        handle.write(struct.pack(">Q", 1 << 60))
    return d / "x.qcow2"


def zero_bytes(d: Path) -> Path:
    (d / "x.raw").write_bytes(b"")
    return d / "x.raw"


def directory(d: Path) -> Path:
    (d / "dir").mkdir()
    return d / "dir"


def fifo(d: Path) -> Path:
    os.mkfifo(d / "fifo")
    return d / "fifo"


def symlink_to_passwd(d: Path) -> Path:
    (d / "link").symlink_to("/etc/passwd")
    return d / "link"


# (label, maker, declared format, what the one-line reason says)
CORPUS = [
    ("qcow2 with a backing file", qcow2_with_backing, "qcow2", "backing_file"),
    ("qcow2 with an external data file", qcow2_with_data_file, "qcow2", "data_file"),
    ("VMDK monolithicFlat", vmdk_descriptor("monolithicFlat"), "raw", "but the image is vmdk"),
    (
        "VMDK twoGbMaxExtentFlat",
        vmdk_descriptor("twoGbMaxExtentFlat"),
        "raw",
        "but the image is vmdk",
    ),
    (
        "raw carrying a qcow2 header",
        raw_with_qcow2_header,
        "raw",
        "declared raw, but the image is qcow2",
    ),
    ("truncated qcow2", truncated_qcow2, "qcow2", "qcow2"),
    ("qcow2 claiming exabytes", qcow2_claiming_exabytes, "qcow2", "ceiling"),
    ("zero-byte file", zero_bytes, "raw", "empty"),
    ("a directory", directory, "raw", "not a regular file"),
    ("a FIFO", fifo, "raw", "not a regular file"),
    ("a symlink to /etc/passwd", symlink_to_passwd, "raw", "symbolic link"),
]


def run(root: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*argv, "--root", str(root)])
    out, err = capsys.readouterr()
    return code, out, err


def files_under(root: Path) -> list[str]:
    return sorted(
        str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith("ledger.db")
    )


@pytest.mark.parametrize(("label", "make", "fmt", "reason"), CORPUS, ids=[c[0] for c in CORPUS])
def test_a_hostile_template_is_refused_recorded_and_leaves_nothing(
    label: str,
    make: Callable[[Path], Path],
    fmt: str,
    reason: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    qemu_img: None,
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    source = make(corpus)
    root = tmp_path / "root"
    code, out, err = run(root, capsys, "template", "add", "evil", str(source), "--format", fmt)
    assert code == 1 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("diskledger: error: ") and reason in line, line
    assert files_under(root) == []
    code, out, _ = run(root, capsys, "history", "--json")
    types = [(e["type"], e["data"].get("error", "")) for e in json.loads(out)]
    assert [t for t, _ in types] == ["template.fetch.started", "template.fetch.failed"]
    assert reason in types[-1][1]
    code, out, _ = run(root, capsys, "verify", "--json")
    assert code == 0 and json.loads(out)["ok"]


def test_a_symlink_planted_under_the_root_is_not_written_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], qemu_img: None
) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "disks").mkdir(parents=True)
    (root / "disks" / "vm-1").symlink_to(elsewhere)
    code, _, err = run(root, capsys, "disk", "create", "vm-1/root", "--blank", "--size", "1M")
    assert code == 1 and "symbolic link" in err
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    "name",
    ["vm\x07/root", "vm/ro\nt", "vm/\x1b[31m", "vm/\uff52\uff4f\uff4f\uff54", "vm/ro ot", "vm/-rf"],
)
def test_names_with_control_and_foreign_characters_are_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        tmp_path / "root", capsys, "disk", "create", name, "--blank", "--size", "1M"
    )
    assert code == 1 and out == "" and len(err.splitlines()) == 1 and "not allowed" in err


def test_cve_2026_24708_a_guest_written_qcow2_header_never_changes_a_raw_disk(
    tmp_path: Path, qemu_img: None
) -> None:
    """A guest writes a qcow2 header naming /etc/shadow as its backing file into its raw disk.
    Resize, snapshot, export and recovery treat the disk as the raw disk the ledger recorded."""
    config = Config.load(root=tmp_path / "root", backend="raw", environ={})
    with Engine.open(config) as engine:
        view = engine.create("vm-1/root", size="4M")
        assert view.location
        header = tmp_path / "header.qcow2"
        qimg("create", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", "-u", str(header), "4M")
        with open(view.location, "r+b") as disk:  # what the guest can do to its own disk
            disk.write(header.read_bytes()[:4096])
        guest_bytes = Path(view.location).read_bytes()[:4096]
        crashed_resize(engine, "vm-1/root", 6 * MiB)
        assert [o.decision for o in engine.recover().rolled_back] == ["roll-back"]
        engine.resize("vm-1/root", "8M")
        engine.snapshot("vm-1/root", "s1")
        exported = engine.export("vm-1/root", tmp_path / "out.raw", "raw")
        assert exported.size == 8 * MiB
        assert (tmp_path / "out.raw").read_bytes()[:4096] == guest_bytes
        converted = engine.export("vm-1/root", tmp_path / "out.qcow2", "qcow2")
        assert converted.size == 8 * MiB
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "-f", "qcow2", "--output=json", str(tmp_path / "out.qcow2")],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        assert "backing-filename" not in info, "the export followed the guest's backing file"
        assert engine.show("vm-1/root").format == "raw"
        assert engine.verify().ok
        assert all(
            e.data.get("format") in (None, "raw", "qcow2") for e in engine.history("vm-1/root")
        )
        assert {
            e.data.get("format")
            for e in engine.history("vm-1/root")
            if e.type == "disk.create.completed"
        } == {"raw"}


def test_the_template_size_ceiling_is_configurable(tmp_path: Path, qemu_img: None) -> None:
    source = tmp_path / "two-megs.qcow2"
    qimg("create", "-f", "qcow2", str(source), "2M")
    environ = {"DISKLEDGER_MAX_TEMPLATE_SIZE": "1M"}
    with Engine.open(Config.load(root=tmp_path / "root", environ=environ)) as engine:
        with pytest.raises(UnsafeImage, match="ceiling"):
            engine.add_template("t", source, "qcow2")
        assert files_under(tmp_path / "root") == []


def test_the_ledger_and_the_root_are_private(tmp_path: Path) -> None:
    with Engine.open(Config.load(root=tmp_path / "root", environ={})):
        pass
    assert (tmp_path / "root").stat().st_mode & 0o077 == 0
    assert (tmp_path / "root" / "ledger.db").stat().st_mode & 0o077 == 0
