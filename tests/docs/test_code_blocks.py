"""The code blocks of README.md and docs/ run, so that they cannot go stale.

A ``python`` block is executed by this venv's Python in a fresh directory holding a small
``cirros.qcow2`` and ``base.qcow2`` (qcow2 templates), ``config.raw`` and a ``mybackend`` module
(``MyBackend`` is the qcow2 backend, for the examples that plug in the reader's own), with
``DISKLEDGER_ROOT`` under it and ``DISKLEDGER_BACKEND=qcow2``. Every ``diskledger ...`` command
line of a shell block is parsed by the real parser. docs/cli.md is generated from real runs: its
command lines are parsed, its Python is not executed. The convention: tests/docs/blocks.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diskledger.cli import build_parser
from tests.docs.blocks import (
    REPO,
    SHELLS,
    Block,
    MarkerError,
    blocks,
    diskledger_commands,
    documents,
    shell_lines,
)

NOT_EXECUTED = {REPO / "docs" / "cli.md": "generated from real runs by its own tooling"}

KNOWN_STALE: dict[tuple[str, str], str] = {
    # (file, a line the block still has): why it cannot run yet. Once the block changes, the
    # entry no longer matches and the block runs like any other. None today.
}

# A block may not name a path of the machine: it would read or write outside its directory.
_HOST_PATH = re.compile(r"""["'](/(?:var|srv|etc|home|opt|root|usr|mnt|dev)(?:/[^"']*)?)["']""")


def _all_blocks() -> list[Block]:
    return [block for path in documents() for block in blocks(path)]


def _python_blocks() -> list[Block]:
    return [block for block in _all_blocks() if block.language in {"python", "py", "python3"}]


def _shell_blocks() -> list[Block]:
    return [block for block in _all_blocks() if block.language in SHELLS]


def test_every_marker_says_skip_and_why() -> None:
    errors: list[str] = []
    for path in documents():
        try:
            blocks(path)
        except MarkerError as exc:
            errors.append(str(exc))
    assert errors == []


def test_the_blocks_are_found() -> None:
    """The extraction itself: the blocks these tests run must be there to run."""
    python = {block.where.split(":")[0] for block in _python_blocks()}
    shells = {block.where.split(":")[0] for block in _shell_blocks()}
    assert {"README.md", "docs/index.md", "docs/architecture.md"} <= python
    assert {"README.md", "docs/recovery.md", "docs/cli.md", "docs/backends/rbd.md"} <= shells
    lines = [line for block in _shell_blocks() for line in shell_lines(block)]
    assert sum(len(diskledger_commands(line)) for line in lines) >= 40


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name, fmt in (("cirros.qcow2", "qcow2"), ("base.qcow2", "qcow2"), ("config.raw", "raw")):
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", fmt, str(tmp_path / name), "16M"], check=True
        )
    (tmp_path / "mybackend.py").write_text(
        '"""The reader\'s own backend, in the examples: here, the qcow2 backend."""\n\n'
        "from diskledger.backends import Qcow2Backend as MyBackend\n\n"
        '__all__ = ["MyBackend"]\n'
    )
    return tmp_path


@pytest.mark.parametrize("block", _python_blocks(), ids=lambda block: block.where)
def test_python_block_runs(block: Block, workdir: Path) -> None:
    if block.skip is not None:
        pytest.skip(f"marked: {block.skip}")
    if block.path in NOT_EXECUTED:
        pytest.skip(f"{block.path.name} is not executed: {NOT_EXECUTED[block.path]}")
    for (name, line), why in KNOWN_STALE.items():
        if block.path == REPO / name and line in block.text:
            pytest.xfail(f"known stale, to be fixed in {name}: {why}")
    host_paths = _HOST_PATH.findall(block.text)
    assert host_paths == [], f"{block.where} names paths of this machine: {host_paths}"
    script = workdir / "block.py"
    script.write_text(block.text, encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if not name.startswith("DISKLEDGER_")}
    env |= {
        "DISKLEDGER_ROOT": str(workdir / "root"),
        "DISKLEDGER_BACKEND": "qcow2",
        "PYTHONPATH": os.pathsep.join([str(workdir), str(REPO)]),
    }
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"{block.where} failed:\n{block.text}\n{run.stdout}{run.stderr}"


def _command_lines() -> list[object]:
    return [
        pytest.param(words, id=f"{block.where} diskledger {' '.join(words)}")
        for block in _shell_blocks()
        if block.skip is None
        for line in shell_lines(block)
        for words in diskledger_commands(line)
    ]


@pytest.mark.parametrize("words", _command_lines())
def test_command_line_parses(words: list[str], request: pytest.FixtureRequest) -> None:
    where = request.node.callspec.id
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            build_parser(words).parse_args(words)
    except SystemExit as exc:
        assert exc.code == 0, f"{where}: the parser refuses it:\n{errors.getvalue()}"
