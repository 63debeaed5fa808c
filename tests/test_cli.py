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


def bad_inputs(tmp_path: Path, template_files: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    long = "a" * 65
    return [
        ("unknown template", ["template", "show", "nope"], "no template"),
        (
            "create from an unknown template",
            ["disk", "create", "vm-2/root", "--template", "nope"],
            "no template",
        ),
        ("unknown disk", ["disk", "show", "vm-9/root"], "no disk"),
        ("resize an unknown disk", ["disk", "resize", "vm-9/root", "1G"], "no disk"),
        ("snapshot of an absent disk", ["disk", "snapshot", "vm-9/root", "s"], "no disk"),
        ("delete an unknown disk", ["disk", "delete", "vm-9/root"], "no disk"),
        ("history of an unknown disk", ["history", "vm-9/root"], "no disk"),
        (
            "rollback to a missing snapshot",
            ["disk", "rollback", "vm-1/root", "nope"],
            "no snapshot",
        ),
        (
            "remove a missing snapshot",
            ["disk", "remove-snapshot", "vm-1/root", "nope"],
            "no snapshot",
        ),
        ("a snapshot name taken", ["disk", "snapshot", "vm-1/root", "s1"], "already has a snapshot"),
        (
            "create an existing disk",
            ["disk", "create", "vm-1/root", "--template", "base"],
            "exists",
        ),
        ("negative size", ["disk", "create", "vm-2/root", "--blank", "--size=-1G"], "size"),
        ("negative resize", ["disk", "resize", "vm-1/root", "-5"], "size"),
        (
            "zero size for a blank disk",
            ["disk", "create", "vm-2/root", "--blank", "--size", "0"],
            "greater than zero",
        ),
        (
            "unparsable size",
            ["disk", "create", "vm-2/root", "--blank", "--size", "ten gigs"],
            "not a size",
        ),
        ("unparsable resize", ["disk", "resize", "vm-1/root", "1Q"], "not a size"),
        (
            "size smaller than the template",
            ["disk", "create", "vm-2/root", "--template", "base", "--size", "1M"],
            "smaller than template",
        ),
        ("a shrink", ["disk", "resize", "vm-1/root", "64M"], "never shrink"),
        (
            "absurd size",
            ["disk", "create", "vm-2/root", "--blank", "--size", "99999999T"],
            "ceiling",
        ),
        (
            "name with a slash",
            ["disk", "create", "vm-2/a/b", "--blank", "--size", "1M"],
            "not allowed",
        ),
        (
            "name without instance",
            ["disk", "create", "root", "--blank", "--size", "1M"],
            "INSTANCE/NAME",
        ),
        ("name with ..", ["disk", "create", "../root", "--blank", "--size", "1M"], "not allowed"),
        (
            "name with NUL",
            ["disk", "create", "vm-2/ro\0ot", "--blank", "--size", "1M"],
            "not allowed",
        ),
        (
            "over-long instance",
            ["disk", "create", f"{long}/root", "--blank", "--size", "1M"],
            "longer than 64",
        ),
        (
            "over-long name",
            ["disk", "create", f"vm-2/{long}", "--blank", "--size", "1M"],
            "longer than 64",
        ),
        ("all-digit snapshot name", ["disk", "snapshot", "vm-1/root", "2"], "all digits"),
        ("snapshot name with a slash", ["disk", "snapshot", "vm-1/root", "a/b"], "not allowed"),
        (
            "template id with ..",
            ["template", "add", "..", str(template_files["raw"]), "--format", "raw"],
            "not allowed",
        ),
        (
            "template already cached",
            ["template", "add", "base", str(template_files["raw"]), "--format", "raw"],
            "already cached",
        ),
        (
            "missing source file",
            ["template", "add", "t2", str(tmp_path / "missing.img"), "--format", "raw"],
            "does not exist",
        ),
        (
            "unreadable source file",
            ["template", "add", "t2", "/proc/self/mem", "--format", "raw"],
            "cannot be read",
        ),
        (
            "export onto an existing file",
            ["disk", "export", "vm-1/root", str(template_files["raw"])],
            "already exists",
        ),
        *(
            (f"disk xml: {label}", ["disk", "xml", "vm-1/root", *args], reason)
            for label, args, reason in (
                ("unknown bus", ["--dev", "vda", "--bus", "floppy"], "bus 'floppy' is not one of"),
                ("device off its bus", ["--dev", "sda"], "does not fit bus virtio"),
                ("not a device name", ["--dev", "vda1"], "is not a disk name"),
                ("unit off scsi", ["--dev", "vda", "--unit", "1"], "addresses a SCSI drive"),
                ("negative unit", ["--dev", "sda", "--bus", "scsi", "--unit=-1"], "between 0"),
                ("unknown cache", ["--dev", "vda", "--cache", "fast"], "cache mode 'fast'"),
                ("unknown discard", ["--dev", "vda", "--discard", "trim"], "discard mode"),
                ("boot order 0", ["--dev", "vda", "--boot-order", "0"], "boot order 0"),
                (
                    "QoS not a number",
                    ["--dev", "vda", "--extra-spec", "quota:disk_read_bytes_sec=lots"],
                    "not a whole number",
                ),
                (
                    "unknown QoS key",
                    ["--dev", "vda", "--extra-spec", "quota:disk_readbytes_sec=1"],
                    "unknown disk QoS extra spec",
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
                    "cannot be combined",
                ),
                ("extra spec without =", ["--dev", "vda", "--extra-spec", "quota"], "KEY=VALUE"),
            )
        ),
        ("disk xml of a missing disk", ["disk", "xml", "vm-9/root", "--dev", "vda"], "no disk"),
        (
            "attach with a device off its bus",
            ["disk", "attach", "vm-1/root", "guest", "--dev", "sdb"],
            "does not fit bus virtio",
        ),
        (
            "attach to a domain name with ..",
            ["disk", "attach", "vm-1/root", "../guest", "--dev", "vdb"],
            "not allowed",
        ),
        ("detach of a disk not attached", ["disk", "detach", "vm-1/root"], "not attached"),
    ]


def test_every_bad_input_is_one_line_exit_1_and_changes_nothing(
    populated: Cli, tmp_path: Path, template_files: dict[str, Path]
) -> None:
    before = populated.fingerprint()
    for label, argv, reason in bad_inputs(tmp_path, template_files):
        code, out, err = populated.run(*argv)
        assert code == 1, f"{label}: exit {code}, stderr {err!r}"
        assert out == "", label
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("diskledger: error: "), f"{label}: {err!r}"
        assert reason in lines[0], f"{label}: {lines[0]!r}"
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
