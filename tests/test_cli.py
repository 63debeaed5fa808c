"""The command line contract: every command, its --json document, and every kind of bad input,
on every backend (``rbd`` on the session's Ceph cluster, its settings in the environment as an
operator would set them). The rbd-only commands and ``disk import`` have tests/test_cli_rbd.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diskledger.cli import main
from diskledger.store import open_store
from tests.recovery.helpers import PoolView, template_location
from tests.support.ceph import POOL, SNAPSHOT_POOL, CephCluster

MiB = 1 << 20
BACKENDS = ("qcow2", "raw", "rbd")


class Cli:
    """``diskledger ... --root ROOT`` run in this process; ``backend`` comes from the environment
    (DISKLEDGER_BACKEND and, for rbd, the cluster's settings), as an operator would set it."""

    def __init__(
        self,
        root: Path,
        capsys: pytest.CaptureFixture[str],
        backend: str = "qcow2",
        ceph: CephCluster | None = None,
    ) -> None:
        self.root = root
        self.capsys = capsys
        self.backend = backend
        self.ceph = ceph

    def run(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        try:
            code = main([*argv, "--root", str(self.root)])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self.run(*argv, "--json")
        assert code == 0, err
        return json.loads(out)

    def fingerprint(self) -> tuple[int, list[tuple[str, int]]]:
        """The ledger head, every file under the root and, on rbd, every image and snapshot in
        both pools: what bad input must not change."""
        store = open_store(f"sqlite:///{self.root}/ledger.db")
        try:
            head = store.head()
        finally:
            store.close()
        files = sorted(
            (str(p.relative_to(self.root)), p.stat().st_size)
            for p in self.root.rglob("*")
            if p.is_file() and not p.name.startswith("ledger.db")
        )
        if self.ceph is not None:
            with PoolView(self.ceph) as pools:
                files += sorted(
                    (f"{pool}/{name}", 0)
                    for pool in (POOL, SNAPSHOT_POOL)
                    for name in pools.contents(pool)
                )
        return head, files


def cli_for(
    backend: str,
    root: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Cli:
    """A ``Cli`` on ``backend``: the environment cleared of DISKLEDGER_* settings but the
    backend's (for rbd, the ``rbd_environ`` fixture: the cluster's, its pools emptied)."""
    for name in ("DISKLEDGER_ROOT", "DISKLEDGER_LEDGER", "DISKLEDGER_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    ceph: CephCluster | None = None
    if backend == "rbd":
        request.getfixturevalue("rbd_environ")
        ceph = request.getfixturevalue("ceph")
    else:
        monkeypatch.setenv("DISKLEDGER_BACKEND", backend)
    return Cli(root, capsys, backend, ceph)


@pytest.fixture(params=BACKENDS)
def cli(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    qemu_img: None,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Cli]:
    yield cli_for(request.param, tmp_path / "root", capsys, monkeypatch, request)


@pytest.fixture
def populated(cli: Cli, template_files: dict[str, Path]) -> Cli:
    cli.json("template", "add", "base", str(template_files["qcow2"]), "--format", "qcow2")
    cli.json("disk", "create", "vm-1/root", "--template", "base", "--size", "96M")
    cli.json("disk", "snapshot", "vm-1/root", "s1")
    return cli


def test_template_commands(cli: Cli, template_files: dict[str, Path]) -> None:
    added = cli.json("template", "add", "base", str(template_files["raw"]), "--format", "raw")
    assert (added["template"], added["state"], added["format"], added["virtual_size"]) == (
        "base",
        "cached",
        "raw",
        64 * MiB,
    )
    assert [t["template"] for t in cli.json("template", "list")] == ["base"]
    shown = cli.json("template", "show", "base")
    assert shown["users"] == []
    assert shown["location"] == template_location(cli.root, "base", cli.backend)
    code, out, _ = cli.run("template", "list")
    assert code == 0 and "base" in out and "cached" in out


def test_disk_lifecycle_through_the_cli(populated: Cli, tmp_path: Path) -> None:
    cli = populated
    shown = cli.json("disk", "show", "vm-1/root")
    for key in (
        "disk",
        "state",
        "size",
        "format",
        "template",
        "snapshots",
        "version",
        "pending",
        "location",
    ):
        assert key in shown
    assert (
        shown["state"],
        shown["size"],
        shown["template"],
        shown["snapshots"],
        shown["pending"],
    ) == (
        "snapshotted",
        96 * MiB,
        "base",
        ["s1"],
        None,
    )
    assert cli.json("disk", "resize", "vm-1/root", "128M")["size"] == 128 * MiB
    assert cli.json("disk", "rollback", "vm-1/root", "s1")["size"] == 128 * MiB
    exported = cli.json("disk", "export", "vm-1/root", str(tmp_path / "out.raw"), "--format", "raw")
    assert exported == {
        "disk": "vm-1/root",
        "target": str(tmp_path / "out.raw"),
        "format": "raw",
        "size": 128 * MiB,
    }
    assert cli.json("disk", "remove-snapshot", "vm-1/root", "s1")["state"] == "resized"
    blank = cli.json("disk", "create", "vm-1/swap", "--blank", "--size", "8M")
    assert (blank["state"], blank["size"], blank["template"]) == ("created", 8 * MiB, None)
    assert [d["disk"] for d in cli.json("disk", "list")] == ["vm-1/root", "vm-1/swap"]
    assert cli.json("disk", "delete", "vm-1/swap")["state"] == "absent"
    assert [d["disk"] for d in cli.json("disk", "list")] == ["vm-1/root"]

    history = cli.json("history", "vm-1/root")
    assert [e["version"] for e in history] == list(range(1, len(history) + 1))
    for event in history:
        for key in ("position", "stream", "version", "type", "time", "op_id", "data"):
            assert key in event
    assert history[0]["type"] == "disk.template-bound"
    everything = cli.json("history")
    assert len(everything) > len(history) and {e["stream"] for e in everything} >= {
        "disk:vm-1/swap"
    }


def test_human_output_is_tables_and_states(populated: Cli) -> None:
    code, out, _ = populated.run("disk", "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["DISK", "STATE", "SIZE"]
    code, out, _ = populated.run("history", "vm-1/root")
    assert code == 0 and "disk.snapshot.completed" in out
    code, out, _ = populated.run("disk", "show", "vm-1/root")
    assert code == 0 and "snapshotted" in out


def test_demo_runs_twice_on_one_root(cli: Cli) -> None:
    first = cli.json("demo")
    assert {d["disk"] for d in first["disks"]} == {
        "web-1/root",
        "web-2/root",
        "db-1/root",
        "db-1/ephemeral",
    }
    second = cli.json("demo")
    assert [d["state"] for d in second["disks"]] == [d["state"] for d in first["disks"]]
    code, out, _ = cli.run("demo")
    assert code == 0 and "audit trail" in out


NAME_RULE = "use letters, digits, '.', '_' and '-', starting with a letter or digit, and no '..'"
QOS_KEYS = ", ".join(
    f"quota:disk_{what}_{unit}_sec{peak}"
    for what in ("read", "total", "write")
    for unit in ("bytes", "iops")
    for peak in ("", "_max")
)


def bad_inputs(tmp_path: Path, template_files: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    """(what, argv, the whole error line after ``diskledger: error: ``) on the populated ledger:
    template base (64 MiB), disk vm-1/root (96 MiB) with snapshot s1. Every line pinned."""
    long = "a" * 65
    missing = tmp_path / "missing.img"
    no_template = (
        "no template nope is cached; add it with diskledger template add nope FILE --format "
        "FORMAT (or see diskledger template list)"
    )
    no_disk = "no disk vm-9/root in the ledger; see diskledger disk list"
    return [
        ("unknown template", ["template", "show", "nope"], no_template),
        (
            "create from an unknown template",
            ["disk", "create", "vm-2/root", "--template", "nope"],
            no_template,
        ),
        ("unknown disk", ["disk", "show", "vm-9/root"], no_disk),
        ("resize an unknown disk", ["disk", "resize", "vm-9/root", "1G"], no_disk),
        ("snapshot of an absent disk", ["disk", "snapshot", "vm-9/root", "s"], no_disk),
        ("delete an unknown disk", ["disk", "delete", "vm-9/root"], no_disk),
        ("history of an unknown disk", ["history", "vm-9/root"], no_disk),
        (
            "rollback to a missing snapshot",
            ["disk", "rollback", "vm-1/root", "nope"],
            "disk vm-1/root has no snapshot 'nope'; its snapshots: s1",
        ),
        (
            "remove a missing snapshot",
            ["disk", "remove-snapshot", "vm-1/root", "nope"],
            "disk vm-1/root has no snapshot 'nope'; its snapshots: s1",
        ),
        (
            "a snapshot name taken",
            ["disk", "snapshot", "vm-1/root", "s1"],
            "disk vm-1/root already has a snapshot 's1'; pick another name, or remove that one "
            "first (diskledger disk remove-snapshot vm-1/root s1)",
        ),
        (
            "create an existing disk",
            ["disk", "create", "vm-1/root", "--template", "base"],
            "disk vm-1/root already exists (snapshotted, 96.0 MiB); delete it first or pick "
            "another name",
        ),
        (
            "negative size",
            ["disk", "create", "vm-2/root", "--blank", "--size=-1G"],
            "size -1G is negative: a size is a positive number of bytes, or with a K/M/G/T suffix",
        ),
        (
            "negative resize",
            ["disk", "resize", "vm-1/root", "-5"],
            "size -5 is negative: a size is a positive number of bytes, or with a K/M/G/T suffix",
        ),
        (
            "zero size for a blank disk",
            ["disk", "create", "vm-2/root", "--blank", "--size", "0"],
            "size must be greater than zero, got 0: a size is a positive number of bytes, or "
            "with a K/M/G/T suffix",
        ),
        (
            "unparsable size",
            ["disk", "create", "vm-2/root", "--blank", "--size", "ten gigs"],
            "size 'ten gigs' is not a size: use bytes or a K/M/G/T suffix",
        ),
        (
            "unparsable resize",
            ["disk", "resize", "vm-1/root", "1Q"],
            "size '1Q' is not a size: use bytes or a K/M/G/T suffix",
        ),
        (
            "size smaller than the template",
            ["disk", "create", "vm-2/root", "--template", "base", "--size", "1M"],
            "size 1.0 MiB is smaller than template base (64.0 MiB): give at least that, or no "
            "size to take the template's",
        ),
        (
            "a shrink",
            ["disk", "resize", "vm-1/root", "64M"],
            "disk vm-1/root is 96.0 MiB; disks never shrink (asked for 64.0 MiB): give 96.0 MiB "
            "or more",
        ),
        (
            "absurd size",
            ["disk", "create", "vm-2/root", "--blank", "--size", "99999999T"],
            "size 99999999T is larger than the ceiling of 1.0 PiB (1125899906842624 bytes)",
        ),
        (
            "name with a slash",
            ["disk", "create", "vm-2/a/b", "--blank", "--size", "1M"],
            f"disk name 'a/b' is not allowed: {NAME_RULE}",
        ),
        (
            "name without instance",
            ["disk", "create", "root", "--blank", "--size", "1M"],
            "disk 'root' is not INSTANCE/NAME",
        ),
        (
            "name with ..",
            ["disk", "create", "../root", "--blank", "--size", "1M"],
            f"instance name '..' is not allowed: {NAME_RULE}",
        ),
        (
            "name with NUL",
            ["disk", "create", "vm-2/ro\0ot", "--blank", "--size", "1M"],
            f"disk name 'ro\\x00ot' is not allowed: {NAME_RULE}",
        ),
        (
            "over-long instance",
            ["disk", "create", f"{long}/root", "--blank", "--size", "1M"],
            "instance name is longer than 64 characters",
        ),
        (
            "over-long name",
            ["disk", "create", f"vm-2/{long}", "--blank", "--size", "1M"],
            "disk name is longer than 64 characters",
        ),
        (
            "all-digit snapshot name",
            ["disk", "snapshot", "vm-1/root", "2"],
            "snapshot name '2' is all digits: qcow2 reads it as an id",
        ),
        (
            "snapshot name with a slash",
            ["disk", "snapshot", "vm-1/root", "a/b"],
            f"snapshot name 'a/b' is not allowed: {NAME_RULE}",
        ),
        (
            "template id with ..",
            ["template", "add", "..", str(template_files["raw"]), "--format", "raw"],
            f"template name '..' is not allowed: {NAME_RULE}",
        ),
        (
            "template already cached",
            ["template", "add", "base", str(template_files["raw"]), "--format", "raw"],
            "template base is already cached; use it as it is, or add the new image under "
            "another name",
        ),
        (
            "missing source file",
            ["template", "add", "t2", str(missing), "--format", "raw"],
            f"source file '{missing}' does not exist",
        ),
        (
            "unreadable source file",
            ["template", "add", "t2", "/proc/self/mem", "--format", "raw"],
            "source file '/proc/self/mem' cannot be read: Input/output error",
        ),
        (
            "export onto an existing file",
            ["disk", "export", "vm-1/root", str(template_files["raw"])],
            f"export target '{template_files['raw']}' already exists",
        ),
        *(
            (f"disk xml: {label}", ["disk", "xml", "vm-1/root", *args], line)
            for label, args, line in (
                (
                    "unknown bus",
                    ["--dev", "vda", "--bus", "floppy"],
                    "bus 'floppy' is not one of virtio, scsi, sata, usb, ide, xen",
                ),
                (
                    "device off its bus",
                    ["--dev", "sda"],
                    "target device 'sda' does not fit bus virtio: its disks are vd*",
                ),
                (
                    "not a device name",
                    ["--dev", "vda1"],
                    "target device 'vda1' is not a disk name like vda, sdb, hdc or xvdd",
                ),
                (
                    "unit off scsi",
                    ["--dev", "vda", "--unit", "1"],
                    "a disk unit addresses a SCSI drive; bus virtio has none",
                ),
                (
                    "negative unit",
                    ["--dev", "sda", "--bus", "scsi", "--unit=-1"],
                    "disk unit -1 is not between 0 and 16383",
                ),
                (
                    "unknown cache",
                    ["--dev", "vda", "--cache", "fast"],
                    "cache mode 'fast' is not one of none, writethrough, writeback, directsync, "
                    "unsafe, default",
                ),
                (
                    "unknown discard",
                    ["--dev", "vda", "--discard", "trim"],
                    "discard mode 'trim' is not one of unmap, ignore",
                ),
                (
                    "boot order 0",
                    ["--dev", "vda", "--boot-order", "0"],
                    "boot order 0 is not a whole number from 1",
                ),
                (
                    "QoS not a number",
                    ["--dev", "vda", "--extra-spec", "quota:disk_read_bytes_sec=lots"],
                    "extra spec quota:disk_read_bytes_sec='lots' is not a whole number from 0 "
                    "to 1000000000000000",
                ),
                (
                    "unknown QoS key",
                    ["--dev", "vda", "--extra-spec", "quota:disk_readbytes_sec=1"],
                    f"unknown disk QoS extra spec 'quota:disk_readbytes_sec'; known: {QOS_KEYS}",
                ),
                (
                    "total with read",
                    [
                        "--dev",
                        "vda",
                        "--extra-spec",
                        "quota:disk_total_iops_sec=9",
                        "--extra-spec",
                        "quota:disk_read_iops_sec=1",
                    ],
                    "quota:disk_total_iops_sec cannot be combined with quota:disk_read_iops_sec "
                    "or quota:disk_write_iops_sec (libvirt refuses both limits at once)",
                ),
                (
                    "extra spec without =",
                    ["--dev", "vda", "--extra-spec", "quota"],
                    "extra spec 'quota' is not KEY=VALUE",
                ),
            )
        ),
        ("disk xml of a missing disk", ["disk", "xml", "vm-9/root", "--dev", "vda"], no_disk),
        (
            "attach with a device off its bus",
            ["disk", "attach", "vm-1/root", "guest", "--dev", "sdb"],
            "target device 'sdb' does not fit bus virtio: its disks are vd*",
        ),
        (
            "attach to a domain name with ..",
            ["disk", "attach", "vm-1/root", "../guest", "--dev", "vdb"],
            f"domain name '../guest' is not allowed: {NAME_RULE}",
        ),
        (
            "detach of a disk not attached",
            ["disk", "detach", "vm-1/root"],
            "disk vm-1/root is not attached to a domain",
        ),
    ]


def test_every_bad_input_is_one_line_exit_1_and_changes_nothing(
    populated: Cli, tmp_path: Path, template_files: dict[str, Path]
) -> None:
    before = populated.fingerprint()
    for label, argv, line in bad_inputs(tmp_path, template_files):
        code, out, err = populated.run(*argv)
        assert code == 1, f"{label}: exit {code}, stderr {err!r}"
        assert out == "", label
        assert err == f"diskledger: error: {line}\n", label
        assert populated.fingerprint() == before, f"{label} changed the ledger or storage"


def test_disk_xml_describes_the_recorded_format_and_the_backends_source(
    populated: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    if populated.backend == "rbd":
        code, out, err = populated.run("disk", "xml", "vm-1/root", "--dev", "vda")
        assert code == 1 and out == ""
        assert "run `diskledger libvirt define-secret` and set DISKLEDGER_RBD_SECRET_UUID" in err
        monkeypatch.setenv("DISKLEDGER_RBD_SECRET_UUID", "5d1b2f0e-8a44-4c1b-9d1e-6c0f3a9e7b21")
    code, out, err = populated.run(
        "disk", "xml", "vm-1/root", "--dev", "sdb", "--bus", "scsi", "--unit", "2"
    )
    assert code == 0, err
    disk = ET.fromstring(out)
    shown = populated.json("disk", "show", "vm-1/root")
    assert disk.find("driver").get("type") == shown["format"]  # type: ignore[union-attr]
    assert disk.find("target").attrib == {"dev": "sdb", "bus": "scsi"}  # type: ignore[union-attr]
    assert disk.find("address").get("unit") == "2"  # type: ignore[union-attr]
    source = disk.find("source")
    assert source is not None
    if populated.backend == "rbd":
        assert disk.get("type") == "network"
        assert source.get("name") == shown["location"] and source.find("host") is not None
        assert disk.find("auth").get("username") == "diskledger"  # type: ignore[union-attr]
    else:
        assert disk.get("type") == "file" and source.get("file") == shown["location"]
    document = populated.json("disk", "xml", "vm-1/root", "--dev", "vda")
    assert document["disk"] == "vm-1/root" and document["xml"].startswith("<disk ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file regardless of its mode")
def test_an_unreadable_source_file_is_refused(cli: Cli, tmp_path: Path) -> None:
    secret = tmp_path / "secret.img"
    secret.write_bytes(b"\0" * 512)
    secret.chmod(0)
    code, _, err = cli.run("template", "add", "t", str(secret), "--format", "raw")
    assert code == 1 and "cannot be read" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["disk"],
        ["disk", "create", "vm/root"],
        ["disk", "create", "vm/root", "--blank"],
        ["disk", "create", "vm/root", "--blank", "--template", "t", "--size", "1G"],
        ["template", "add", "t", "/x", "--format", "vmdk"],
        ["disk", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(cli: Cli, argv: list[str]) -> None:
    code, _, err = cli.run(*argv)
    assert code == 2 and "usage" in err
    assert not (cli.root / "ledger.db").exists() or cli.fingerprint() == (0, [])


def test_the_console_script(tmp_path: Path) -> None:
    env = {**os.environ, "DISKLEDGER_ROOT": str(tmp_path / "root")}
    script = Path(sys.executable).with_name("diskledger")
    ok = subprocess.run(
        [str(script), "disk", "list", "--json"], env=env, capture_output=True, text=True
    )
    assert (ok.returncode, json.loads(ok.stdout)) == (0, [])
    bad = subprocess.run(
        [str(script), "disk", "show", "vm/x"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1 and bad.stderr.strip() == (
        "diskledger: error: no disk vm/x in the ledger; see diskledger disk list"
    )
    usage = subprocess.run([str(script), "disk", "show"], env=env, capture_output=True, text=True)
    assert usage.returncode == 2


@pytest.mark.parametrize("where", ["option", "environment"])
def test_an_unknown_backend_is_one_line_exit_1_and_touches_nothing(
    tmp_path: Path, where: str
) -> None:
    root = tmp_path / "root"
    env = {**os.environ, "DISKLEDGER_ROOT": str(root)}
    argv = ["disk", "create", "vm/x", "--blank", "--size", "1M"]
    if where == "option":
        argv += ["--backend", "ploop"]
    else:
        env["DISKLEDGER_BACKEND"] = "ploop"
    script = Path(sys.executable).with_name("diskledger")
    done = subprocess.run([str(script), *argv], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr == (
        "diskledger: error: unknown backend 'ploop'; choose one of: raw, qcow2, rbd, lvm, "
        "parallels\n"
    )
    assert not root.exists()
