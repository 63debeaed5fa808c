"""The command line contract of ``disk import`` (every backend) and of the rbd-only ``disk
flatten`` and ``disk direct-snapshot``: their --json documents, human output, bad input (one line
on stderr, exit 1, nothing changed in the ledger, under the root or in the pools) and usage errors.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.recovery.helpers import PoolView, clone_backing, disk_format, disk_location
from tests.support.ceph import SNAPSHOT_POOL
from tests.test_cli import Cli, cli_for

MiB = 1 << 20
DISK = "vm-1/root"


@pytest.fixture
def rbd_cli(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    qemu_img: None,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Cli:
    return cli_for("rbd", tmp_path / "root", capsys, monkeypatch, request)


@pytest.fixture(params=["raw", "qcow2", "rbd"])
def any_cli(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    qemu_img: None,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Cli:
    return cli_for(request.param, tmp_path / "root", capsys, monkeypatch, request)


@pytest.fixture(params=["raw", "qcow2"])
def file_cli(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    qemu_img: None,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Cli:
    return cli_for(request.param, tmp_path / "root", capsys, monkeypatch, request)


def refused(cli: Cli, argv: list[str], reason: str) -> str:
    """Run ``argv``: one error line naming ``reason``, exit 1, nothing on stdout, nothing
    changed in the ledger, under the root or in the pools. Returns the line."""
    before = cli.fingerprint()
    code, out, err = cli.run(*argv)
    assert code == 1, f"{argv}: exit {code}, stderr {err!r}"
    assert out == "", argv
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("diskledger: error: "), f"{argv}: {err!r}"
    assert reason in lines[0], f"{argv}: {lines[0]!r}"
    assert cli.fingerprint() == before, f"{argv} changed the ledger or storage"
    return lines[0]


def fsid(cli: Cli) -> str:
    assert cli.ceph is not None
    for line in cli.ceph.conf.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "fsid":
            return value.strip()
    raise AssertionError("no fsid in ceph.conf")


# -- disk import, on every backend ---------------------------------------------------------------


def test_disk_import(any_cli: Cli, template_files: dict[str, Path]) -> None:
    cli = any_cli
    imported = cli.json("disk", "import", DISK, str(template_files["qcow2"]), "--format", "qcow2")
    assert imported == {
        "disk": DISK,
        "state": "created",
        "size": 64 * MiB,
        "format": disk_format(cli.backend),
        "template": None,
        "backing": None,
        "snapshots": [],
        "version": 2,
        "pending": None,
        "location": disk_location(cli.root, DISK, cli.backend),
        "attachment": None,
    }
    code, out, err = cli.run(
        "disk", "import", "vm-1/data", str(template_files["raw"]), "--format", "raw"
    )
    assert (code, err) == (0, "")
    assert out.startswith("imported vm-1/data: 64.0 MiB ")  # one line: what it did
    assert [d["disk"] for d in cli.json("disk", "list")] == ["vm-1/data", DISK]
    types = [e["type"] for e in cli.json("history", DISK)]
    assert types == ["disk.import.started", "disk.import.completed"]
    # An imported disk is a disk like any other.
    assert cli.json("disk", "resize", DISK, "96M")["size"] == 96 * MiB
    assert cli.json("disk", "snapshot", DISK, "s1")["snapshots"] == ["s1"]
    assert cli.json("verify")["ok"]


def test_disk_import_bad_input_changes_nothing(
    any_cli: Cli, template_files: dict[str, Path], tmp_path: Path
) -> None:
    cli = any_cli
    cli.json("disk", "import", DISK, str(template_files["raw"]), "--format", "raw")
    refused(
        cli,
        ["disk", "import", "vm-2/root", str(tmp_path / "missing.img"), "--format", "raw"],
        "does not exist",
    )
    refused(
        cli,
        ["disk", "import", DISK, str(template_files["qcow2"]), "--format", "qcow2"],
        "exists",
    )
    refused(
        cli,
        ["disk", "import", "vm-2/../x", str(template_files["raw"]), "--format", "raw"],
        "not allowed",
    )
    refused(
        cli,
        ["disk", "import", "root", str(template_files["raw"]), "--format", "raw"],
        "INSTANCE/NAME",
    )
    refused(
        cli, ["disk", "import", "vm-2/root", "/proc/self/mem", "--format", "raw"], "cannot be read"
    )
    assert cli.json("disk", "show", DISK)["size"] == 64 * MiB


def test_a_qcow2_imported_as_raw_is_refused_recorded_and_leaves_nothing(
    any_cli: Cli, template_files: dict[str, Path]
) -> None:
    """The format is checked on a copy (what is inspected is what is kept), so the refusal comes
    after the intent: it is recorded for the audit trail, as a hostile template's is, and
    nothing is left under the root or in the pool."""
    cli = any_cli
    head, storage = cli.fingerprint()
    code, out, err = cli.run(
        "disk", "import", DISK, str(template_files["qcow2"]), "--format", "raw"
    )
    assert (code, out) == (1, "")
    (line,) = err.splitlines()
    assert line.startswith("diskledger: error: ") and "declared raw, but the image is qcow2" in line
    assert cli.fingerprint() == (head + 2, storage)
    assert [e["type"] for e in cli.json("history", DISK)] == [
        "disk.import.started",
        "disk.import.failed",
    ]
    assert cli.json("disk", "show", DISK)["state"] == "absent"
    assert cli.json("disk", "list") == []
    assert cli.json("verify")["ok"]
    # The name is free: the same file, declared as what it is, is imported.
    done = cli.json("disk", "import", DISK, str(template_files["qcow2"]), "--format", "qcow2")
    assert done["state"] == "created"


# -- flatten and direct-snapshot on rbd ----------------------------------------------------------


@pytest.fixture
def cloned(rbd_cli: Cli, template_files: dict[str, Path]) -> Cli:
    """A clone of the template ``base`` with one snapshot ``s1``."""
    cli = rbd_cli
    cli.json("template", "add", "base", str(template_files["raw"]), "--format", "raw")
    cli.json("disk", "create", DISK, "--template", "base")
    cli.json("disk", "snapshot", DISK, "s1")
    return cli


def test_disk_flatten(cloned: Cli) -> None:
    cli = cloned
    before = cli.json("disk", "show", DISK)
    assert before["backing"] == clone_backing(cli.root, "base", "rbd")
    flat = cli.json("disk", "flatten", DISK)
    assert flat == {**before, "backing": None, "version": before["version"] + 2}
    assert cli.json("template", "show", "base")["users"] == [DISK]  # made from it, still
    types = [e["type"] for e in cli.json("history", DISK)][-2:]
    assert types == ["disk.flatten.started", "disk.flatten.completed"]
    # A flat disk is left as it is.
    assert cli.json("disk", "flatten", DISK)["backing"] is None
    code, out, _ = cli.run("disk", "flatten", DISK)
    assert code == 0 and re.fullmatch(
        rf"flattened {DISK} \(it was flat already\), op \w{{8}}\n", out
    )
    assert cli.json("verify")["ok"]
    # Flat, it no longer holds the template's snapshot: the disk goes, the template stays.
    assert cli.json("disk", "delete", DISK)["state"] == "absent"


def test_disk_direct_snapshot(cloned: Cli) -> None:
    cli = cloned
    assert cli.ceph is not None
    before = cli.json("disk", "show", DISK)
    url = f"rbd://{fsid(cli)}/{SNAPSHOT_POOL}/img-1/snap"
    done = cli.json("disk", "direct-snapshot", DISK, "ds", "img-1")
    assert done == {"disk": DISK, "url": url, "size": 64 * MiB}
    code, out, err = cli.run("disk", "direct-snapshot", DISK, "ds", "img-2")
    assert (code, out, err) == (0, f"{url.replace('img-1', 'img-2')}\n", "")
    with PoolView(cli.ceph) as pools:
        assert pools.contents(SNAPSHOT_POOL) == {"img-1", "img-1@snap", "img-2", "img-2@snap"}
        assert pools.contents("diskledger") == {
            "_base~base",
            "_base~base@snap",
            "vm-1~root",
            "vm-1~root@s1",
        }
    after = cli.json("disk", "show", DISK)
    assert after == {**before, "version": before["version"] + 4}  # the disk is as it was
    assert cli.json("verify")["ok"]
    # A published copy is the image service's: it stays when the disk goes.
    cli.json("disk", "delete", DISK)
    with PoolView(cli.ceph) as pools:
        assert pools.contents(SNAPSHOT_POOL) == {"img-1", "img-1@snap", "img-2", "img-2@snap"}


def test_repeating_an_op_id_returns_the_first_result(cloned: Cli) -> None:
    cli = cloned
    first = cli.json("disk", "direct-snapshot", DISK, "ds", "img-1", "--op-id", "publish-1")
    again = cli.json("disk", "direct-snapshot", DISK, "ds", "img-1", "--op-id", "publish-1")
    assert again == first
    flat = cli.json("disk", "flatten", DISK, "--op-id", "flatten-1")
    assert cli.json("disk", "flatten", DISK, "--op-id", "flatten-1") == flat
    refused(cli, ["disk", "flatten", DISK, "--op-id", "publish-1"], "was used for direct-snapshot")


def test_flatten_and_direct_snapshot_bad_input_changes_nothing(cloned: Cli) -> None:
    cli = cloned
    cli.json("disk", "direct-snapshot", DISK, "ds", "img-1")
    cases = [
        (["disk", "direct-snapshot", DISK, "s1", "img-2"], "already has a snapshot 's1'"),
        (["disk", "direct-snapshot", DISK, "ds", "img-1"], "exists but the ledger does not own it"),
        (["disk", "direct-snapshot", DISK, "ds", "a/b"], "not allowed"),
        (["disk", "direct-snapshot", DISK, "ds", ".."], "not allowed"),
        (["disk", "direct-snapshot", DISK, "ds", ""], "empty"),
        (["disk", "direct-snapshot", DISK, "ds", "x" * 65], "longer than 64"),
        (["disk", "direct-snapshot", DISK, "7", "img-2"], "all digits"),
        (["disk", "direct-snapshot", DISK, "a@b", "img-2"], "not allowed"),
        (["disk", "direct-snapshot", "vm-9/root", "ds", "img-2"], "no disk"),
        (["disk", "direct-snapshot", "root", "ds", "img-2"], "INSTANCE/NAME"),
        (["disk", "flatten", "vm-9/root"], "no disk"),
        (["disk", "flatten", "vm-1/.."], "not allowed"),
    ]
    for argv, reason in cases:
        refused(cli, argv, reason)
    cli.json("disk", "delete", DISK)
    refused(cli, ["disk", "flatten", DISK], "no disk")
    refused(cli, ["disk", "direct-snapshot", DISK, "ds", "img-2"], "no disk")


def test_direct_snapshot_needs_a_snapshot_pool(
    cloned: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISKLEDGER_RBD_SNAPSHOT_POOL")
    refused(cloned, ["disk", "direct-snapshot", DISK, "ds", "img-1"], "snapshot pool")


def test_flatten_and_direct_snapshot_are_refused_on_file_backends(
    file_cli: Cli, template_files: dict[str, Path]
) -> None:
    cli = file_cli
    fmt = cli.backend
    cli.json("template", "add", "base", str(template_files[fmt]), "--format", fmt)
    cli.json("disk", "create", DISK, "--template", "base")
    line = refused(cli, ["disk", "flatten", DISK], f"the {fmt} backend cannot flatten a disk")
    assert line == f"diskledger: error: the {fmt} backend cannot flatten a disk"
    refused(
        cli,
        ["disk", "direct-snapshot", DISK, "ds", "img-1"],
        f"the {fmt} backend cannot direct-snapshot a disk",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["disk", "import", DISK, "/x"],
        ["disk", "import", DISK, "/x", "--format", "vmdk"],
        ["disk", "import", DISK],
        ["disk", "flatten"],
        ["disk", "flatten", DISK, "extra"],
        ["disk", "direct-snapshot", DISK, "ds"],
        ["disk", "direct-snapshot", DISK],
        ["disk", "direct-snapshot", DISK, "ds", "img", "extra"],
    ],
)
def test_usage_errors_exit_2(rbd_cli: Cli, argv: list[str]) -> None:
    code, out, err = rbd_cli.run(*argv)
    assert code == 2 and out == "" and "usage" in err
    assert not (rbd_cli.root / "ledger.db").exists() or rbd_cli.fingerprint() == (0, [])


def test_the_cli_reaches_the_cluster_from_the_environment_alone(
    rbd_cli: Cli, template_files: dict[str, Path]
) -> None:
    """The console script, given only the DISKLEDGER_* settings (as ``make ceph-dev`` prints
    them), makes an rbd disk; a bad keyring is one clear line and exit 1."""
    import os
    import sys

    script = Path(sys.executable).with_name("diskledger")
    env = {**os.environ, "DISKLEDGER_ROOT": str(rbd_cli.root)}
    argv = [str(script), "disk", "import", DISK, str(template_files["raw"]), "--format", "raw"]
    done = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["location"] == disk_location(rbd_cli.root, DISK, "rbd")
    bad = {**env, "DISKLEDGER_CEPH_KEYRING": str(rbd_cli.root / "no-such.keyring")}
    failed = subprocess.run(
        [str(script), "disk", "flatten", DISK], env=bad, capture_output=True, text=True
    )
    assert failed.returncode == 1, failed.stderr
    (line,) = failed.stderr.splitlines()
    assert line.startswith("diskledger: error: "), line
