"""The fenced code blocks of README.md and docs/, and the ``diskledger`` command lines in them.

The convention the tests keep (docs/index.md, "About this site"):

- a ``python`` block is executed, each in a fresh directory (see ``test_code_blocks``);
- in a ``sh``, ``bash``, ``shell`` or ``console`` block every ``diskledger ...`` command line is
  parsed by the real parser; in ``console`` blocks only the lines after a ``$ `` prompt are
  commands (the others are output);
- ``<!-- docs-test: skip (why) -->`` on the last non-blank line before a block exempts it, with
  the reason in the parentheses; a ``docs-test`` comment that says anything else is an error.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

SHELLS = frozenset({"sh", "bash", "shell", "console"})

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_MARKER = re.compile(r"<!--\s*docs-test:(?P<body>.*?)-->")
_SKIP = re.compile(r"^\s*skip\s*\((?P<reason>[^)]*\S[^)]*)\)\s*$")
_SUBSTITUTION = re.compile(r"\$\(([^()]*)\)|`([^`]*)`")
_CONTROL = frozenset({"|", "||", "&", "&&", ";", ";;", "(", ")", "<", ">", ">>", "<<", ">&", "<&"})


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text (indentation removed)."""

    path: Path
    line: int
    """The line of its opening fence, counted from 1."""
    language: str
    text: str
    skip: str | None
    """The reason given by a ``docs-test: skip (...)`` marker, or None."""

    @property
    def where(self) -> str:
        return f"{_name(self.path)}:{self.line}"


def _name(path: Path) -> str:
    """A path as the tests name it: relative to the repository when it is in it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


class MarkerError(ValueError):
    """A ``docs-test`` comment that is not ``docs-test: skip (reason)``."""


def documents() -> list[Path]:
    """README.md and every page under docs/."""
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lstrip(".{").rstrip("}").lower()
        end = index + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence[0] * len(fence))
            and lines[end].strip().strip(fence[0]) == ""
        ):
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line
            for line in lines[index + 1 : end]
        ]
        found.append(
            Block(
                path, index + 1, language, "\n".join(body) + "\n", _skip_reason(path, lines, index)
            )
        )
        index = end + 1
    return found


def _skip_reason(path: Path, lines: list[str], fence: int) -> str | None:
    before = fence - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    if before < 0:
        return None
    marker = _MARKER.search(lines[before])
    if marker is None:
        return None
    skip = _SKIP.match(marker["body"])
    if skip is None:
        raise MarkerError(
            f"{_name(path)}:{before + 1}: {marker[0]!r} is not "
            "'<!-- docs-test: skip (the reason) -->'"
        )
    return skip["reason"].strip()


def shell_lines(block: Block) -> list[str]:
    """The logical lines of a shell block: continuations joined; in a console block, only the
    commands after a ``$ `` prompt."""
    logical: list[str] = []
    pending = ""
    for raw in block.text.splitlines():
        line = raw
        if block.language == "console" and not pending:
            if not line.lstrip().startswith("$ "):
                continue
            line = line.lstrip()[2:]
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        if not _quotes_closed(pending + line):  # a quoted argument goes on (jq programs)
            pending += line + "\n"
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    return logical


def _quotes_closed(line: str) -> bool:
    try:
        shlex.split(line, comments=True)
    except ValueError:
        return False
    return True


def diskledger_commands(line: str) -> list[list[str]]:
    """The arguments of every ``diskledger`` command in one shell line (after ``diskledger``, up
    to the end of its simple command), including those inside ``$(...)`` and backquotes."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = []
    words: list[str] | None = None
    for token in lexer:
        for substitution in _SUBSTITUTION.finditer(token):
            commands.extend(diskledger_commands(substitution[1] or substitution[2] or ""))
        if token in _CONTROL:
            if words is not None:
                commands.append(words)
            words = None
        elif words is not None:
            words.append(token)
        elif token == "diskledger" or token.endswith("/bin/diskledger"):
            words = []
    if words is not None:
        commands.append(words)
    return commands
