"""Commands that run without opening a ledger: ``completion`` (a shell's completion script) and
the hidden ``__complete`` the scripts call back for disk and template names."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["complete", "standalone_commands"]


def standalone_commands(groups: Any) -> None:
    completion = groups.add_parser(
        "completion",
        help="print the bash or zsh completion script",
        description="print the bash or zsh completion script "
        '(bash: eval "$(diskledger completion bash)"; zsh: see diskledger(1))',
    )
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(standalone=_completion)
    _complete_arguments(groups.add_parser("__complete"))


def _complete_arguments(names: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # Called by the completion scripts: one name per line, quickly, never an error on stderr.
    names.add_argument("kind", choices=("disks", "templates", "snapshots"))
    names.add_argument("disk", nargs="?", default=None)
    names.add_argument("--root", default=None)
    names.add_argument("--ledger", default=None)
    names.set_defaults(standalone=_complete)
    return names


def complete(words: list[str]) -> int:
    """``diskledger __complete ...`` without the rest of the command line: every TAB runs it,
    and the whole parser's imports (the engine, SQLAlchemy) cost ~180 ms that it never uses."""
    parser = _complete_arguments(_Silent(prog="diskledger __complete", add_help=False))
    known, _ = parser.parse_known_args(words)
    return _complete(known)


class _Silent(argparse.ArgumentParser):
    """A TAB never prints an error: words it cannot take complete to nothing."""

    def error(self, message: str) -> NoReturn:
        raise SystemExit(0)


def _completion(args: argparse.Namespace, whole: Callable[[], argparse.ArgumentParser]) -> int:
    from diskledger.cli.completion import script

    sys.stdout.write(script(args.shell, whole()))
    return 0


def _complete(args: argparse.Namespace, _whole: object = None) -> int:
    from diskledger.cli.completion import candidates

    for name in candidates(args.kind, disk=args.disk, root=args.root, ledger=args.ledger):
        print(name)
    return 0
