"""The ``diskledger`` command line: a thin layer over ``Engine``.

Every command takes ``--json`` and then prints exactly one JSON document on stdout (``watch``, which
follows the ledger, prints one JSON line per event instead). Errors are one line on stderr and exit
status 1; usage errors exit 2 (``watch`` exits 3 on a gap or a broken hash chain).

One module per group of commands (``templates``, ``disks``, ``watch``, ``members``); each adds
its commands to the parser through ``leaf`` and holds their handlers. Each handler returns the
JSON document and, when not in ``--json`` mode, prints for a person.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Self, cast

from diskledger.cli.base import (
    Failed,
    Handler,
    Parser,
    Streamed,
    UsageError,
    common_options,
    mutating_options,
    paint,
)
from diskledger.cli.disks import disk_commands, libvirt_commands
from diskledger.cli.members import member_commands
from diskledger.cli.messages import DONE, NEEDS_OPERATOR, explain
from diskledger.cli.progress import check_mode, shown
from diskledger.cli.standalone import standalone_commands
from diskledger.cli.status import status_command
from diskledger.cli.templates import template_commands
from diskledger.cli.watch import watch_command
from diskledger.engine import Config, Engine
from diskledger.errors import DiskLedgerError
from diskledger.events import RecordedEvent
from diskledger.render import event_json, print_history, print_recovery, print_verify

__all__ = ["build_parser", "main"]


def build_parser(only: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, the words of one (``["disk", "show", ...]``), just
    the command its first word names and, in a group of commands (``disk``), the action its
    second word names, when there are such (else the whole of the part that has no such name).

    Building all 30-odd subparsers costs a command line more than parsing it does (argparse
    translates every label through ``gettext``, which looks for catalogues on disk), and a parse
    only ever descends into the command its words name: ``main`` builds that one.
    """
    levels: list[_Only] = []

    def narrowed(subparsers: Any, depth: int) -> Any:
        if depth >= min(len(only), 2):
            return subparsers
        level = _Only(subparsers, only[depth], lambda s: narrowed(s, depth + 1))
        levels.append(level)
        return level

    common = common_options()
    mutating = mutating_options()
    parser = Parser(
        prog="diskledger",
        description="Virtual-machine disks whose every transition is recorded in a ledger.",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print diskledger's version and exit"
    )
    groups = narrowed(parser.add_subparsers(dest="group", required=True, metavar="COMMAND"), 0)

    def leaf(
        subparsers: Any, name: str, handler: Handler, help_text: str, *, mutates: bool = False
    ) -> argparse.ArgumentParser:
        if isinstance(subparsers, _Only):
            if not subparsers.wants(name):
                return cast(argparse.ArgumentParser, _SKIPPED)
            subparsers = subparsers.subparsers
        parents = [common, mutating] if mutates else [common]
        sub: argparse.ArgumentParser = subparsers.add_parser(
            name, parents=parents, help=help_text, description=help_text
        )
        sub.set_defaults(handler=handler)
        return sub

    template_commands(groups, leaf)
    disk_commands(groups, leaf)
    libvirt_commands(groups, leaf)
    watch_command(groups, leaf)
    member_commands(groups, leaf)

    status_command(groups, leaf)
    history = leaf(groups, "history", _history, "the audit trail of one disk, or of everything")
    history.add_argument("disk", nargs="?", metavar="INSTANCE/NAME")
    recover = leaf(groups, "recover", _recover, "finish or undo operations a crash left pending")
    recover.add_argument("--dry-run", action="store_true", help="decide and report, change nothing")
    recover.set_defaults(recover_on_open=False)
    verify = leaf(groups, "verify", _verify, "check the hash chain, the read models and storage")
    verify.set_defaults(recover_on_open=False)
    leaf(
        groups, "demo", _demo, "cache a template, create, resize and snapshot disks, show the trail"
    )
    standalone_commands(groups)
    unmatched = [depth for depth, level in enumerate(levels) if not level.matched]
    if unmatched:  # no command (or action) by that name: the whole of that part says so
        return build_parser(only[: unmatched[0]])
    return parser


class _Version(argparse.Action):
    """``--version``: looked up only when asked (``importlib.metadata`` reads the install)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from importlib.metadata import version

        print(f"diskledger {version('diskledger')}")
        parser.exit(0)


class _Skipped:
    """What a command left out of the parser is built on: it takes every call and keeps nothing."""

    def __getattr__(self, name: str) -> Self:
        return self

    def __call__(self, *args: object, **kwargs: object) -> Self:
        return self


_SKIPPED = _Skipped()


class _Only:
    """Subparsers that take only the command called ``name``; the subparsers of a group by that
    name are narrowed by ``inner`` in turn."""

    def __init__(self, subparsers: Any, name: str, inner: Callable[[Any], Any]) -> None:
        self.subparsers = subparsers
        self.name = name
        self.inner = inner
        self.matched = False

    def wants(self, name: str) -> bool:
        if name != self.name:
            return False
        self.matched = True
        return True

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if not self.wants(name):
            return _SKIPPED
        return _Group(self.subparsers.add_parser(name, **kwargs), self.inner)


class _Group:
    """A group's parser (``disk``) whose actions' subparsers are narrowed in turn."""

    def __init__(self, parser: argparse.ArgumentParser, inner: Callable[[Any], Any]) -> None:
        self.parser = parser
        self.inner = inner

    def add_subparsers(self, **kwargs: Any) -> Any:
        return self.inner(self.parser.add_subparsers(**kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=words)
    args = parser.parse_args(words)
    if args.group == "disk" and args.command == "create":
        if args.blank and args.size is None:
            parser.error("disk create --blank needs --size")
        if (args.template_source is None) != (args.template_format is None):
            parser.error("--template-source and --template-format go together")
        if args.template_source is not None and args.template is None:
            parser.error("--template-source needs --template")
        if args.template_sha256 is not None and args.template_source is None:
            parser.error("--template-sha256 needs --template-source")
    standalone = getattr(args, "standalone", None)
    if standalone is not None:  # needs no ledger: runs before one is opened
        return int(standalone(args, build_parser))
    try:
        check_mode(args)
        config = Config.load(
            root=args.root,
            ledger=args.ledger,
            backend=args.backend,
            recover=getattr(args, "recover_on_open", None),
        )
        with Engine.open(config) as engine:
            try:
                result = _handle(engine, args)
            except DiskLedgerError as exc:  # explained while the ledger is open to ask
                return _refused(exc, engine, args)
    except UsageError as exc:
        parser.error(str(exc))
    except DiskLedgerError as exc:
        return _refused(exc, None, args)
    if isinstance(result, Streamed):
        return result.status
    status = DONE
    if isinstance(result, Failed):
        status, result = NEEDS_OPERATOR, result.document
    if args.json:
        try:
            json.dump(result, sys.stdout, indent=2, sort_keys=True, default=str)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader (`| head`) went away; the operation itself is done and recorded.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status


def _handle(engine: Engine, args: argparse.Namespace) -> Any:
    """Run the command, its long copies reporting as ``--progress`` asks (``args.on_progress``,
    which its engine calls pass on); the bar is closed before anything else is printed."""
    showing = shown(args)
    args.on_progress = showing
    try:
        return args.handler(engine, args)
    finally:
        if showing is not None:
            showing.close()


def _refused(exc: DiskLedgerError, engine: Engine | None, args: argparse.Namespace) -> int:
    """One line on stderr in the operator's words (``diskledger.cli.messages``); with
    ``--debug`` the engine's own message and the traceback after it."""
    explained = explain(exc, engine)
    label = paint("error", "error", sys.stderr)
    print(f"diskledger: {label}: {explained.line}", file=sys.stderr)
    if args.debug:
        import traceback

        print(f"diskledger: debug: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
    return explained.status


def _history(engine: Engine, args: argparse.Namespace) -> Any:
    events: list[RecordedEvent] = engine.history(args.disk)
    if not args.json:
        print_history(events)
    return [event_json(e) for e in events]


def _recover(engine: Engine, args: argparse.Namespace) -> Any:
    report = engine.recover(dry_run=args.dry_run)
    if not args.json:
        print_recovery(report)
    # Operations recovery could not decide wait for a person: exit status 3 says so.
    return Failed(report.to_json()) if report.needs_operator else report.to_json()


def _verify(engine: Engine, args: argparse.Namespace) -> Any:
    report = engine.verify()
    if not args.json:
        print_verify(report)
    return report.to_json() if report.ok else Failed(report.to_json())


def _demo(engine: Engine, args: argparse.Namespace) -> Any:
    from diskledger.demo import run_demo

    return run_demo(engine, quiet=args.json)
