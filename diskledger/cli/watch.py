"""``watch``: the change feed on stdout, one flushed line per event."""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import select
import sys
import time
from typing import Any

from diskledger.cli.base import Leaf, Streamed
from diskledger.engine import Engine
from diskledger.errors import FeedGap
from diskledger.events import RecordedEvent

__all__ = ["watch_command"]

_WATCH_TICK = 0.5
"""How often an idle ``watch`` wakes to see whether its reader went away or ``--until-idle`` ran
out (seconds)."""


def watch_command(groups: Any, leaf: Leaf) -> None:
    watch = leaf(
        groups,
        "watch",
        _watch,
        "follow the ledger: print every event as it is recorded (the change feed)",
    )
    start = watch.add_mutually_exclusive_group()
    start.add_argument(
        "--from",
        dest="from_position",
        type=_watch_position,
        default=0,
        metavar="N",
        help="start after position N (default 0: the whole ledger, then live)",
    )
    start.add_argument("--from-now", action="store_true", help="only events recorded from now on")
    watch.add_argument(
        "--stream", metavar="PATTERN", help="print only events of matching streams ('disk:vm-1/*')"
    )
    watch.add_argument(
        "--type",
        dest="type_glob",
        metavar="GLOB",
        help="print only events of matching types ('disk.*.completed')",
    )
    watch.add_argument(
        "--heartbeat",
        type=_watch_seconds,
        metavar="SECONDS",
        help="after SECONDS without a line, print the position reached",
    )
    watch.add_argument(
        "--until-idle",
        type=_watch_seconds,
        metavar="SECONDS",
        help="exit (status 0) once no event was recorded for SECONDS",
    )
    watch.set_defaults(recover_on_open=False)


def _watch_position(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a position (0, 1, 2, ...)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a position is 0 or more, not {value}")
    return value


def _watch_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"a number of seconds above 0, not {text!r}")
    return value


def _watch(engine: Engine, args: argparse.Namespace) -> Streamed:
    """Print the feed, one flushed line per event (and heartbeat), until interrupted.

    Exit 0 on SIGINT, on a reader that went away (``| head``), or after ``--until-idle``; 3 on a
    gap or a broken hash chain (one line on stderr); other errors go to ``main`` (exit 1).
    """
    after = engine.store.head() if args.from_now else args.from_position
    tick = min(s for s in (args.heartbeat, args.until_idle, _WATCH_TICK) if s is not None)
    last_event = last_line = time.monotonic()
    try:
        with engine.subscribe(after, heartbeat=tick) as feed:
            for item in feed:
                now = time.monotonic()
                if isinstance(item, RecordedEvent):
                    last_event, reached = now, item.position
                    if _watch_matches(item, args):
                        _watch_print(_watch_json(item), _watch_line(item), args.json)
                        last_line = now
                        continue
                else:  # a heartbeat: the feed is idle
                    if _stdout_gone():
                        raise BrokenPipeError
                    if args.until_idle is not None and now - last_event >= args.until_idle:
                        break
                    reached = item.head
                # Nothing printed for a while (idle, or every event filtered out): say how far
                # the feed got, so a consumer can checkpoint without a line per event.
                if args.heartbeat is not None and now - last_line >= args.heartbeat:
                    _watch_print({"heartbeat": reached}, f"at position {reached}", args.json)
                    last_line = now
    except FeedGap as exc:
        print(f"diskledger: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return Streamed(3)
    except KeyboardInterrupt:
        return Streamed(0)
    except BrokenPipeError:
        # The reader went away: nothing more to say. Point stdout at /dev/null so that the
        # interpreter's final flush does not fail again (the Python docs' recipe for SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Streamed(0)
    return Streamed(0)


def _watch_matches(event: RecordedEvent, args: argparse.Namespace) -> bool:
    if args.stream is not None and not fnmatch.fnmatchcase(event.stream, args.stream):
        return False
    return args.type_glob is None or fnmatch.fnmatchcase(event.type, args.type_glob)


def _watch_json(event: RecordedEvent) -> dict[str, Any]:
    """Every field the hash covers, as recorded: a consumer can check the chain itself."""
    return {
        "position": event.position,
        "stream": event.stream,
        "version": event.version,
        "type": event.type,
        "schema": event.schema,
        "op_id": event.metadata.op_id,
        "recorded_at": event.time.isoformat(timespec="microseconds"),
        "data": event.data,
        "metadata": event.metadata.to_json(),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def _watch_line(event: RecordedEvent) -> str:
    op = f"  op {event.metadata.op_id}" if event.metadata.op_id else ""
    when = event.time.isoformat(timespec="seconds")
    return f"{event.position:>8}  {when}  {event.stream} v{event.version}  {event.type}{op}"


def _watch_print(document: Any, line: str, json_mode: bool) -> None:
    print(json.dumps(document) if json_mode else line, flush=True)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it: a ``watch | head -1`` whose feed
    is idle would otherwise only find out at the next event."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (captured, replaced)
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
