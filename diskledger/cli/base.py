"""What every command shares: the parser that exits 2 on a usage error, the common and
mutating options, and what a handler may return besides its JSON document."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TextIO

from diskledger.backends import BACKENDS
from diskledger.cli.progress import add_option as add_progress_option
from diskledger.engine import Engine

__all__ = [
    "Failed",
    "Handler",
    "Leaf",
    "Parser",
    "Streamed",
    "UsageError",
    "common_options",
    "mutating_options",
    "new_op_id",
    "paint",
    "say",
]

Handler = Callable[[Engine, argparse.Namespace], Any]
"""A command: runs on the open engine, prints for a person unless ``--json``, and returns the
JSON document (or ``Failed``/``Streamed``)."""


class Parser(argparse.ArgumentParser):
    """argparse's parser, its usage errors one line after the usage, exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes "-5G" for an option because it is not a plain negative number; no
        # option of ours starts with a digit, so anything like it is a value (``--size -5G``,
        # ``disk resize X -5G``) and gets the engine's one-line size error like any bad size.
        self._negative_number_matcher = re.compile(r"^-\d")

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: usage error: {message}\n")


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    group.add_argument(
        "--debug",
        action="store_true",
        help="on an error, also print the engine's own message and the traceback",
    )
    group.add_argument("--root", default=None, help="where local artifacts live ($DISKLEDGER_ROOT)")
    group.add_argument(
        "--ledger", default=None, help="SQLAlchemy URL of the ledger ($DISKLEDGER_LEDGER)"
    )
    group.add_argument(
        "--backend",
        default=None,
        metavar="NAME",
        help=f"disk backend: {', '.join(BACKENDS)}, or one installed as a package "
        "($DISKLEDGER_BACKEND)",
    )
    return common


def mutating_options() -> argparse.ArgumentParser:
    mutating = argparse.ArgumentParser(add_help=False)
    mutating.add_argument(
        "--op-id",
        default=None,
        metavar="OP_ID",
        help="idempotency key: repeating a completed operation with it returns its result",
    )
    mutating.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing on success (errors still do)"
    )
    add_progress_option(mutating)
    return mutating


Leaf = Callable[..., argparse.ArgumentParser]
"""``leaf(subparsers, name, handler, help_text, *, mutates=False)``: one command."""


class Failed:
    """A handler's document for a command that ran and found what needs an operator (exit status
    3): ``verify`` not ok, ``recover`` leaving operations to a person."""

    def __init__(self, document: Any) -> None:
        self.document = document


class Streamed:
    """A handler that wrote its own output as it went: only the exit status is left."""

    def __init__(self, status: int) -> None:
        self.status = status


class UsageError(Exception):
    """A combination of arguments the parser cannot express: exit 2, like argparse's own."""


def new_op_id(args: argparse.Namespace) -> str:
    """The operation id a mutating command runs under: ``--op-id``, or a new one, made here so
    that the command's summary can name it."""
    from diskledger.engine.protocol import new_op_id as fresh

    return str(args.op_id) if args.op_id else fresh()


def say(args: argparse.Namespace, line: str) -> None:
    """Print a command's line for a person: never with ``--json`` or ``--quiet``."""
    if not args.json and not getattr(args, "quiet", False):
        print(line)


_STYLES = {"ok": "1;32", "error": "1;31", "warn": "1;33", "bold": "1"}


def paint(text: str, style: str, stream: TextIO | None = None) -> str:
    """``text`` in colour when ``stream`` (stdout) is a terminal, ``NO_COLOR`` is unset or empty
    (https://no-color.org) and ``TERM`` is not ``dumb``; else as it is."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return text
    try:
        if not stream.isatty():
            return text
    except (AttributeError, ValueError):
        return text
    return f"\x1b[{_STYLES[style]}m{text}\x1b[0m"
