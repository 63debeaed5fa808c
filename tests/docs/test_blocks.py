"""The extraction the code-block tests rely on (tests/docs/blocks.py), and that a stale command
line is caught: were these wrong, the code-block tests would pass without checking anything."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from diskledger.cli import build_parser
from tests.docs.blocks import REPO, Block, MarkerError, blocks, diskledger_commands, shell_lines


def _page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return path


def _block(language: str, text: str) -> Block:
    return Block(REPO / "page.md", 1, language, text, None)


def test_blocks_finds_fences_their_language_indentation_and_skip_reason(tmp_path: Path) -> None:
    page = _page(
        tmp_path,
        "# t\n\n```python\nprint(1)\n```\n\n1. item\n\n"
        "    <!-- docs-test: skip (a fragment) -->\n    ```sh\n    diskledger verify\n    ```\n"
        "\n~~~console\n$ diskledger history\n~~~\n",
    )
    found = blocks(page)
    assert [(b.language, b.text, b.skip) for b in found] == [
        ("python", "print(1)\n", None),
        ("sh", "diskledger verify\n", "a fragment"),
        ("console", "$ diskledger history\n", None),
    ]


@pytest.mark.parametrize(
    "marker", ["<!-- docs-test: skip -->", "<!-- docs-test: skip () -->", "<!-- docs-test: run -->"]
)
def test_a_marker_without_a_reason_is_refused(tmp_path: Path, marker: str) -> None:
    page = _page(tmp_path, f"{marker}\n```python\nprint(1)\n```\n")
    with pytest.raises(MarkerError, match="docs-test: skip"):
        blocks(page)


def test_shell_lines_join_continuations_and_open_quotes() -> None:
    block = _block("sh", "A=1 \\\n  diskledger disk show vm-1/root\njq 'a\n  | b'\nmake demo\n")
    assert shell_lines(block) == [
        "A=1    diskledger disk show vm-1/root",
        "jq 'a\n  | b'",
        "make demo",
    ]


def test_console_blocks_are_commands_after_a_prompt_only() -> None:
    block = _block("console", "$ diskledger disk resize vm-1/root 20G\ndiskledger: error: no\n")
    assert shell_lines(block) == ["diskledger disk resize vm-1/root 20G"]


@pytest.mark.parametrize(
    ("line", "commands"),
    [
        ("diskledger disk show vm-1/root   # a comment", [["disk", "show", "vm-1/root"]]),
        ("diskledger history | tail -5", [["history"]]),
        (
            "diskledger disk xml vm-1/root --dev vda > root.xml",
            [["disk", "xml", "vm-1/root", "--dev", "vda"]],
        ),
        ('eval "$(diskledger libvirt define-secret)"', [["libvirt", "define-secret"]]),
        ("X=1 .venv/bin/diskledger verify && diskledger recover", [["verify"], ["recover"]]),
        ("run var/cluster h1 diskledger members &", [["members"]]),
        ("mkdir -p /var/lib/diskledger; ceph auth get client.diskledger", []),
    ],
)
def test_diskledger_commands(line: str, commands: list[list[str]]) -> None:
    assert diskledger_commands(line) == commands


@pytest.mark.parametrize(
    "words",
    [
        ["disk", "create", "vm-1/root", "--sise", "10G"],
        ["disk", "grow", "vm-1/root", "20G"],
        ["verify", "extra"],
    ],
)
def test_the_parser_refuses_a_stale_command_line(words: list[str]) -> None:
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as exited:
        build_parser(words).parse_args(words)
    assert exited.value.code == 2
