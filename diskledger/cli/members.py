"""Members of a shared ledger: ``members`` (who holds a lease), ``takeover`` and ``agent``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from diskledger.cli.base import Leaf, Streamed, UsageError
from diskledger.engine import Engine, MemberRecord
from diskledger.engine.recovery import RecoveryReport
from diskledger.errors import InvalidInput
from diskledger.render import print_recovery

__all__ = ["member_commands"]


def member_commands(groups: Any, leaf: Leaf) -> None:
    members = leaf(groups, "members", _members, "the members of a shared ledger and their leases")
    members.set_defaults(recover_on_open=False)
    takeover = leaf(
        groups,
        "takeover",
        _takeover,
        "take over the operations of members whose lease ran out (one scan, now)",
    )
    takeover.add_argument("--member", default=None, metavar="MEMBER", help="only this member")
    takeover.add_argument(
        "--confirm-down",
        action="store_true",
        help="record that MEMBER's host is down (powered off): takeover may then go past the "
        "circuit breaker and past in-place operations on storage without a fence",
    )
    takeover.set_defaults(recover_on_open=False)
    agent = leaf(
        groups,
        "agent",
        _agent,
        "stay a member: keep the lease and take over members that stop (until SIGTERM/SIGINT)",
    )
    agent.set_defaults(recover_on_open=False)


def _member_json(record: MemberRecord, owns: Sequence[str]) -> dict[str, Any]:
    view = record.view
    return {
        "member": view.member,
        "host": view.host,
        "state": view.state.value,
        "epoch": record.epoch,
        "lease_seconds_left": None if record.expires_in is None else round(record.expires_in, 3),
        "renewals": record.renewals,
        "ceph_clients": list(view.ceph_clients),
        "confirmed_down": view.confirmed_down,
        "owns": list(owns),
    }


def _members(engine: Engine, args: argparse.Namespace) -> Any:
    owned: dict[str, list[str]] = {}
    for entry in engine.store.pending():
        if entry.owner is not None:
            owned.setdefault(entry.owner, []).append(entry.operation.op_id)
    documents = [_member_json(r, owned.get(r.member, [])) for r in engine.members()]
    if not args.json:
        if not documents:
            print("no members (a single-host ledger, or nobody joined yet)")
        for d in documents:
            lease = d["lease_seconds_left"]
            left = "-" if lease is None else f"{lease:+.1f}s"
            owns = f" owns {', '.join(d['owns'])}" if d["owns"] else ""
            print(f"{d['member']:<40} {d['state']:<8} epoch {d['epoch']:<6} lease {left}{owns}")
    return {"members": documents}


def _takeover(engine: Engine, args: argparse.Namespace) -> Any:
    if args.confirm_down and args.member is None:
        raise UsageError("takeover --confirm-down needs --member")
    if args.member is not None and all(r.member != args.member for r in engine.members()):
        raise InvalidInput(f"no member {args.member!r} (see `diskledger members`)")
    if args.confirm_down:
        engine.confirm_down(args.member, by=f"operator on {engine.host}")
    report = engine.take_over(member=args.member)
    # A taker acts only after watching a lapsed member's renewals stand still for a whole lease
    # itself: this command has just started, so it watches (at most the longest lease) now.
    patience = max((r.view.lease_ttl or 0.0 for r in engine.members()), default=0.0)
    deadline = time.monotonic() + patience + 1.0
    while report.observing and not report.outcomes and time.monotonic() < deadline:
        time.sleep(min(0.5, patience / 4 or 0.5))
        report = engine.take_over(member=args.member)
    if not args.json:
        for fenced in report.fenced:
            print(f"fenced {fenced['member']} ({fenced['reason']})")
        for outcome in report.outcomes:
            print(f"{outcome.stream} {outcome.op} ({outcome.op_id}): {outcome.decision}")
        for waiting in report.waiting:
            print(f"waiting for {waiting['member']}: {waiting['reason']}")
        if report.suspended is not None:
            print(f"takeover suspended: {', '.join(report.suspended['stale'])} look stale at once")
        if not (report.fenced or report.outcomes or report.waiting or report.suspended):
            print("nothing to take over")
    return report.to_json()


def _agent(engine: Engine, args: argparse.Namespace) -> Streamed:
    """Serve until SIGTERM or SIGINT; with --json, one line per pass that settled something."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def report(done: RecoveryReport) -> None:
        if args.json:
            print(json.dumps(done.to_json(), sort_keys=True), flush=True)
        else:
            print_recovery(done)
            sys.stdout.flush()

    from diskledger.engine.agent import serve  # only this command needs it

    serve(engine.runtime, stop, report)
    return Streamed(0)
