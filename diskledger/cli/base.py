"""What every command shares: the parser that exits 2 on a usage error, the common and
mutating options, and what a handler may return besides its JSON document."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from diskledger.backends import BACKENDS
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
]

Handler = Callable[[Engine, argparse.Namespace], Any]
"""A command: runs on the open engine, prints for a person unless ``--json``, and returns the
JSON document (or ``Failed``/``Streamed``)."""


class Parser(argparse.ArgumentParser):
    """argparse's parser, its usage errors one line after the usage, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: usage error: {message}\n")


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--json", action="store_true", help="print one JSON document on stdout")
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
    return mutating


Leaf = Callable[..., argparse.ArgumentParser]
"""``leaf(subparsers, name, handler, help_text, *, mutates=False)``: one command."""


class Failed:
    """A handler's document for a command that ran but found a problem (exit status 1)."""

    def __init__(self, document: Any) -> None:
        self.document = document


class Streamed:
    """A handler that wrote its own output as it went: only the exit status is left."""

    def __init__(self, status: int) -> None:
        self.status = status


class UsageError(Exception):
    """A combination of arguments the parser cannot express: exit 2, like argparse's own."""
