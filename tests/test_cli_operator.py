"""The command line as an operator reads it: one line per mutating command, errors in the
operator's words with what to do next (every line pinned here), exit statuses, ``--quiet``,
colour only on a terminal, ``--version`` and ``status``. The --json documents are
tests/test_cli.py's."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from diskledger.cli import main
from diskledger.cli.messages import explain
from diskledger.errors import (
    CommandNotFound,
    ConcurrencyError,
    DiskAttached,
    FeedGap,
    Fenced,
    HypervisorUnavailable,
    IllegalTransition,
    OperationPending,
    OwnershipLost,
)

MiB = 1 << 20
OP = r"op [0-9a-f]{8}"


@pytest.fixture
def root(tmp_path: Path, qemu_img: None) -> Path:
    return tmp_path / "root"


@pytest.fixture
def image(tmp_path: Path, qemu_img: None) -> Path:
    path = tmp_path / "cirros.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def run(
    root: Path, capsys: pytest.CaptureFixture[str], *argv: str, json_mode: bool = False
) -> tuple[int, str, str]:
    capsys.readouterr()
    words = [*argv, "--root", str(root), "--backend", "qcow2"]
    try:
        code = main([*words, "--json"] if json_mode else words)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_mutating_command_says_what_it_did_in_one_line(
    root: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = root.parent / "exported.qcow2"
    steps = [
        (
            ["template", "add", "cirros", str(image), "--format", "qcow2"],
            rf"cached template cirros: 64\.0 MiB qcow2 from {re.escape(str(image))}, {OP}",
        ),
        (
            ["disk", "create", "vm-1/root", "--template", "cirros", "--size", "1G"],
            rf"created vm-1/root: 1\.0 GiB qcow2 from cirros, {OP}",
        ),
        (
            ["disk", "create", "vm-1/scratch", "--blank", "--size", "64M"],
            rf"created vm-1/scratch: 64\.0 MiB qcow2 blank, {OP}",
        ),
        (["disk", "resize", "vm-1/root", "2G"], rf"resized vm-1/root to 2\.0 GiB, {OP}"),
        (
            ["disk", "snapshot", "vm-1/root", "s1"],
            rf"snapshotted vm-1/root as s1 \(snapshots: s1\), {OP}",
        ),
        (
            ["disk", "rollback", "vm-1/root", "s1"],
            rf"rolled vm-1/root back to snapshot s1 \(2\.0 GiB\), {OP}",
        ),
        (
            ["disk", "export", "vm-1/root", str(export), "--format", "qcow2"],
            rf"exported vm-1/root to {re.escape(str(export))}: qcow2, 2\.0 GiB, {OP}",
        ),
        (
            ["disk", "remove-snapshot", "vm-1/root", "s1"],
            rf"removed snapshot s1 of vm-1/root \(none left\), {OP}",
        ),
        (
            ["disk", "import", "vm-2/root", str(image), "--format", "qcow2"],
            rf"imported vm-2/root: 64\.0 MiB qcow2 from {re.escape(str(image))}, {OP}",
        ),
        (["disk", "delete", "vm-1/root"], rf"deleted vm-1/root, {OP}"),
    ]
    for argv, line in steps:
        code, out, err = run(root, capsys, *argv)
        assert (code, err) == (0, ""), (argv, err)
        assert re.fullmatch(line + "\n", out), (argv, out)


def test_the_summary_names_the_op_id_given(
    root: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(root, capsys, "template", "add", "cirros", str(image), "--format", "qcow2")
    argv = ["disk", "create", "vm-1/root", "--template", "cirros", "--op-id", "fedcba9876543210"]
    assert run(root, capsys, *argv)[1].endswith(", op fedcba98\n")
    # Repeating a completed operation by its op id says the same, and records nothing more.
    assert run(root, capsys, *argv)[1].endswith(", op fedcba98\n")


def test_quiet_prints_nothing_and_json_is_unchanged(
    root: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(root, capsys, "template", "add", "cirros", str(image), "--format", "qcow2")
    assert run(root, capsys, "disk", "create", "vm-1/a", "--template", "cirros", "-q") == (
        0,
        "",
        "",
    )
    code, out, _ = run(
        root, capsys, "disk", "create", "vm-1/b", "--template", "cirros", json_mode=True
    )
    assert code == 0 and json.loads(out)["disk"] == "vm-1/b"
    # An error still says so with --quiet.
    code, out, err = run(root, capsys, "disk", "delete", "vm-1/zzz", "--quiet")
    assert (code, out) == (1, "") and err.startswith("diskledger: error: no disk vm-1/zzz")


# (argv after the set-up, the whole stderr line, the exit status): every refusal the CLI words
# itself, on a ledger holding template cirros and disk vm-1/root (1.0 GiB) with snapshot s1.
REFUSALS = [
    (
        ["disk", "create", "vm-1/root", "--template", "cirros"],
        "disk vm-1/root already exists (snapshotted, 1.0 GiB); delete it first or pick another "
        "name",
        1,
    ),
    (
        ["disk", "snapshot", "vm-1/root", "s1"],
        "disk vm-1/root already has a snapshot 's1'; pick another name, or remove that one "
        "first (diskledger disk remove-snapshot vm-1/root s1)",
        1,
    ),
    (
        ["disk", "rollback", "vm-1/root", "s9"],
        "disk vm-1/root has no snapshot 's9'; its snapshots: s1",
        1,
    ),
    (
        ["disk", "show", "vm-1/nope"],
        "no disk vm-1/nope in the ledger; see diskledger disk list",
        1,
    ),
    (
        ["disk", "create", "vm-1/other", "--template", "nope"],
        "no template nope is cached; add it with diskledger template add nope FILE --format "
        "FORMAT (or see diskledger template list)",
        1,
    ),
    (
        ["template", "add", "cirros", "{image}", "--format", "qcow2"],
        "template cirros is already cached; use it as it is, or add the new image under another "
        "name",
        1,
    ),
    (
        ["disk", "resize", "vm-1/root", "-5G"],
        "size -5G is negative: a size is a positive number of bytes, or with a K/M/G/T suffix",
        1,
    ),
    (
        ["disk", "create", "vm-1/b", "--blank", "--size", "-5G"],
        "size -5G is negative: a size is a positive number of bytes, or with a K/M/G/T suffix",
        1,
    ),
    (
        ["disk", "create", "vm-1/b", "--blank", "--size=-5G"],
        "size -5G is negative: a size is a positive number of bytes, or with a K/M/G/T suffix",
        1,
    ),
    (
        ["disk", "create", "vm-1/b", "--blank", "--size", "5X"],
        "size '5X' is not a size: use bytes or a K/M/G/T suffix",
        1,
    ),
    (
        ["disk", "resize", "vm-1/root", "512M"],
        "disk vm-1/root is 1.0 GiB; disks never shrink (asked for 512.0 MiB): give 1.0 GiB or more",
        1,
    ),
]


@pytest.mark.parametrize(
    ("argv", "line", "status"), REFUSALS, ids=[" ".join(r[0]) for r in REFUSALS]
)
def test_a_refusal_is_one_line_in_the_operators_words_and_changes_nothing(
    root: Path,
    image: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    line: str,
    status: int,
) -> None:
    run(root, capsys, "template", "add", "cirros", str(image), "--format", "qcow2")
    run(root, capsys, "disk", "create", "vm-1/root", "--template", "cirros", "--size", "1G")
    run(root, capsys, "disk", "snapshot", "vm-1/root", "s1")
    before = run(root, capsys, "history", json_mode=True)[1]
    argv = [word.replace("{image}", str(image)) for word in argv]
    assert run(root, capsys, *argv) == (status, "", f"diskledger: error: {line}\n")
    assert run(root, capsys, "history", json_mode=True)[1] == before


def test_debug_adds_the_engines_own_words(
    root: Path, capsys: pytest.CaptureFixture[str], qemu_img: None
) -> None:
    code, _, err = run(root, capsys, "disk", "show", "vm-1/nope", "--debug")
    lines = err.splitlines()
    assert code == 1
    assert (
        lines[0] == "diskledger: error: no disk vm-1/nope in the ledger; see diskledger disk list"
    )
    assert lines[1] == "diskledger: debug: DiskNotFound: no such disk: vm-1/nope"
    assert "Traceback (most recent call last):" in err


# The refusals a single command line cannot provoke on a one-host ledger, worded from the
# error itself (the races and members that raise them are tests/recovery's and tests/multihost's).
WORDED = [
    (
        OperationPending("disk:vm-1/root", "resize", "0123456789abcdef"),
        "disk vm-1/root has an operation in flight (resize, op 01234567); wait for it to finish, "
        "or if the process running it died, run diskledger recover",
        3,
    ),
    (
        ConcurrencyError("disk:vm-1/root", 4, 5),
        "disk vm-1/root changed while this command ran (another command recorded an operation "
        "first); look at it again (diskledger history) and retry if still wanted",
        1,
    ),
    (
        OwnershipLost("disk:vm-1/root", "0123456789abcdef", "taken over meanwhile"),
        "operation 01234567 on disk vm-1/root was taken over by another member, which finishes "
        "it; see diskledger history vm-1/root",
        3,
    ),
    (
        Fenced("member host-a/1 is being fenced"),
        "this member was fenced and stops here (member host-a/1 is being fenced); its operations "
        "are taken over by the others; start it again to rejoin",
        3,
    ),
    (
        FeedGap(7, 6, "prev_hash does not match"),
        "change feed broken at position 7 (expected 6): prev_hash does not match; the ledger is "
        "not what it was: run diskledger verify",
        3,
    ),
    (  # the engine's words already say what to do: they pass as they are
        DiskAttached("vm-1/root", "guest-1", "vda", "delete refused: detach it first"),
        "disk vm-1/root is attached to domain guest-1 as vda: delete refused: detach it first",
        1,
    ),
    (
        CommandNotFound("qemu-img is not installed"),
        "qemu-img is not installed; install it (make setup installs everything diskledger uses)",
        1,
    ),
    (
        HypervisorUnavailable("cannot reach libvirtd at qemu:///system"),
        "cannot reach libvirtd at qemu:///system; is libvirtd running? (make libvirt-dev starts "
        "one)",
        1,
    ),
    (
        IllegalTransition("disk:vm-1/root", "created", "disk.rollback.started"),
        "disk vm-1/root cannot be rolled back while it is created; see diskledger disk show "
        "vm-1/root",
        1,
    ),
    (
        IllegalTransition("template:local/cirros", "absent", "template.remove.started"),
        "template cirros cannot be removed while it is absent; see diskledger template show cirros",
        1,
    ),
    (
        IllegalTransition("template:local/cirros", "fetching", "template.fetch.started"),
        "template cirros is already cached; use it as it is, or add the new image under another "
        "name",
        1,
    ),
]


@pytest.mark.parametrize(
    ("error", "line", "status"), WORDED, ids=[type(w[0]).__name__ for w in WORDED]
)
def test_each_kind_of_refusal_is_worded_for_an_operator(
    error: Exception, line: str, status: int
) -> None:
    assert isinstance(error, Exception)
    explained = explain(error)  # type: ignore[arg-type]
    assert (explained.line, explained.status) == (line, status)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert re.fullmatch(r"diskledger \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def _diskledger(root: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISKLEDGER_")},
        "DISKLEDGER_ROOT": str(root),
        "DISKLEDGER_BACKEND": "qcow2",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "diskledger.cli", *argv],
        env=environ,
        capture_output=True,
        text=True,
        check=False,
    )


def _on_a_terminal(root: Path, *argv: str, **env: str) -> str:
    """What ``diskledger ARGV`` writes to a terminal (a pty as its stdout and stderr)."""
    controller, terminal = pty.openpty()
    environ = {
        **{k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")},
        "DISKLEDGER_ROOT": str(root),
        "DISKLEDGER_BACKEND": "qcow2",
        "TERM": "xterm",
        **env,
    }
    with subprocess.Popen(
        [sys.executable, "-m", "diskledger.cli", *argv],
        env=environ,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    ) as process:
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=60)
    os.close(controller)
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal_and_never_with_no_color(root: Path, image: Path) -> None:
    add = ["template", "add", "cirros", str(image), "--format", "qcow2"]
    painted = _on_a_terminal(root, *add)
    assert "\x1b[1;32mcached\x1b[0m template cirros" in painted
    refused = _on_a_terminal(root, *add)
    assert "diskledger: \x1b[1;31merror\x1b[0m: template cirros is already cached" in refused
    plain = _on_a_terminal(root, "disk", "create", "vm-1/a", "--template", "cirros", NO_COLOR="1")
    assert plain.startswith("created vm-1/a") and "\x1b[" not in plain
    piped = _diskledger(root, "disk", "create", "vm-1/b", "--template", "cirros")
    assert piped.stdout.startswith("created vm-1/b") and "\x1b[" not in piped.stdout


def test_status_after_a_crash_says_what_is_pending_and_what_recover_would_do(
    root: Path, image: Path
) -> None:
    assert (
        _diskledger(root, "template", "add", "cirros", str(image), "--format", "qcow2").returncode
        == 0
    )
    calm = _diskledger(root, "status")
    assert calm.returncode == 0, calm.stderr
    assert calm.stdout.splitlines()[0] == "pending:   nothing: every intent has its outcome"
    assert "verify:    ok" in calm.stdout and "templates: cirros (cached, 0 disks)" in calm.stdout

    killed = _diskledger(
        root,
        "disk",
        "create",
        "vm-1/root",
        "--template",
        "cirros",
        DISKLEDGER_FAULT="create@after-effect",
    )
    assert killed.returncode == -signal.SIGKILL
    shown = _diskledger(root, "status")
    assert shown.returncode == 3, shown.stderr  # needs an operator
    lines = shown.stdout.splitlines()
    assert lines[0] == "pending: 1 operation(s) without an outcome"
    assert re.fullmatch(r"  disk:vm-1/root  create [0-9a-f]{8}  \d+ s old", lines[1]), lines[1]
    assert lines[2] == "    recover would: roll forward (the disk was published whole)"
    assert lines[-1] == "next:      diskledger recover (then diskledger verify)"
    document = json.loads(_diskledger(root, "status", "--json").stdout)
    assert [p["recover_would"] for p in document["pending"]] == ["roll forward"]
    assert document["ledger"]["events"] > 0 and len(document["ledger"]["head_hash"]) == 64
    # status changed nothing: the operation is still pending for recover to settle.
    recovered = json.loads(_diskledger(root, "recover", "--json").stdout)
    assert [o["op"] for o in recovered["rolled_forward"]] == ["create"]
    assert _diskledger(root, "status").returncode == 0
