"""``--progress``: how a command shows the progress of its long copies (fetch, import, export,
flatten), on stderr so that stdout stays the command's output.

``auto`` (the default) draws a bar when stderr is a terminal and neither ``--json`` nor
``--quiet`` is given, and nothing otherwise (a pipe, a log file, a program reading JSON);
``bar`` draws one wherever stderr goes; ``json`` writes one JSON object per line, e.g.
``{"progress": "fetch", "step": "download", "done": 1048576, "total": 67108864,
"final": false}``; ``none`` shows nothing.

The bar is tqdm's (bytes, rate, ETA), imported when the first one is drawn: a command that
copies nothing, and ``__complete``, never import it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from diskledger.errors import InvalidInput
from diskledger.progress import ProgressEvent

__all__ = ["MODES", "Shown", "add_option", "check_mode", "shown"]

MODES = ("auto", "bar", "json", "none")


class _Modes(tuple[str, ...]):
    """The modes as argparse's ``choices``, for the help text and the shells' completion, but
    taking any value in: a bad one is refused by ``check_mode`` as one line, exit status 1, like
    every bad value of an option (argparse would print its usage and exit 2)."""

    def __contains__(self, value: object) -> bool:
        return True


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        default="auto",
        choices=_Modes(MODES),
        help="progress of long copies on stderr: auto (a bar on a terminal, unless --json or "
        "--quiet), bar, json (one JSON object per line), none (default auto)",
    )


def check_mode(args: argparse.Namespace) -> None:
    """Refuse an unknown ``--progress`` before anything is done."""
    mode = getattr(args, "progress", "auto")
    if mode not in MODES:
        raise InvalidInput(f"--progress {mode!r}: choose auto, bar, json or none")


class Shown:
    """The callback a command's copies report to, drawing on ``stream``; ``close`` ends the bar
    being drawn (after the command, whether it succeeded or failed)."""

    def __init__(self, mode: str, stream: TextIO) -> None:
        self.mode = mode
        self.stream = stream
        self._bar: Any = None
        self._step: tuple[str, str] | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if self.mode == "json":
            line = json.dumps(
                {
                    "progress": event.what,
                    "step": event.step,
                    "done": event.done,
                    "total": event.total,
                    "final": event.final,
                }
            )
            self.stream.write(line + "\n")
            self.stream.flush()
            return
        self._draw(event)

    def _draw(self, event: ProgressEvent) -> None:
        if self._bar is None or self._step != (event.what, event.step):
            self.close()
            from tqdm import tqdm

            sized = _sized(self.stream)
            self._step = (event.what, event.step)
            self._bar = tqdm(
                desc=f"{event.what} ({event.step})",
                total=event.total,
                file=self.stream,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                # A terminal's width, followed as it changes; 80 columns where none is told (a
                # pipe, or a pty whose size nobody set: tqdm would hide a bar below row 0).
                dynamic_ncols=sized,
                ncols=None if sized else 80,
                nrows=None if sized else 24,
                mininterval=0,
                leave=True,
            )
        bar = self._bar
        if event.total != bar.total:
            bar.total = event.total
        bar.update(event.done - bar.n)
        if event.final:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._step = None


def shown(args: argparse.Namespace, stream: TextIO | None = None) -> Shown | None:
    """What ``--progress`` asks of this command (None: nothing to show)."""
    stream = sys.stderr if stream is None else stream
    mode = getattr(args, "progress", "none")
    if mode == "auto":
        if args.json or getattr(args, "quiet", False) or not _terminal(stream):
            return None
        mode = "bar"
    if mode == "none":
        return None
    return Shown(mode, stream)


def _sized(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that tells its size."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return size.columns > 0 and size.lines > 0


def _terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False
