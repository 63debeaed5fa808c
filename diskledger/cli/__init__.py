"""The ``diskledger`` command line (``diskledger.cli.app``), run by ``python -m diskledger.cli``."""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: ``argv``, or without it this process's arguments (the console script,
    ``python -m diskledger.cli``: then this process is the command line)."""
    if argv is not None:
        from diskledger.cli import app

        return app.main(argv)
    if sys.argv[1:2] == ["__complete"]:  # a shell's TAB: nothing of the engine is needed
        from diskledger.cli.standalone import complete

        return complete(sys.argv[2:])
    # The process is the command: what importing it makes (some 50,000 objects, no garbage)
    # lives until the process exits. The collector is paused while it is made and then moved
    # to the permanent generation, so that no collection walks it: not during the import
    # (about 10 ms), not during the command, not in the interpreter's teardown (about 30 ms).
    gc.disable()
    try:
        from diskledger.cli import app
    finally:
        gc.freeze()
        gc.enable()
    return app.main()


def build_parser(only: Sequence[str] = ()) -> argparse.ArgumentParser:
    """``diskledger.cli.app.build_parser``: the whole parser, or the part for one command."""
    from diskledger.cli import app

    return app.build_parser(only)
