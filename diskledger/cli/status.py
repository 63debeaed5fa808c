"""``status``: one screen for an operator after a crash, changing nothing.

What is pending (with its age and owner), what ``recover`` would do with it (a dry run),
``verify``'s verdict, the ledger (where, how many events, the head's hash, its size on disk),
the templates and the disks that use them, and the disks by state. The ledger is opened without
recovering, so the screen shows the crash as it was left.
"""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diskledger.cli.base import Failed, Leaf, paint
from diskledger.engine import Engine
from diskledger.render import human_size

__all__ = ["status_command"]


def status_command(groups: Any, leaf: Leaf) -> None:
    status = leaf(
        groups,
        "status",
        _status,
        "one screen after a crash: pending operations, what recover would do, verify's "
        "verdict, the ledger, templates, disks by state (changes nothing)",
    )
    status.set_defaults(recover_on_open=False)


def _status(engine: Engine, args: argparse.Namespace) -> Any:
    document = _gather(engine)
    if not args.json:
        _print(document)
    return document if document["verify"]["ok"] and not document["pending"] else Failed(document)


def _gather(engine: Engine) -> dict[str, Any]:
    store = engine.store
    now = datetime.now(UTC)
    dry_run = engine.recover(dry_run=True)
    decided = {
        outcome.op_id: (would, outcome.reason)
        for would, outcomes in (
            ("roll forward", dry_run.rolled_forward),
            ("roll back", dry_run.rolled_back),
            ("leave it to an operator", dry_run.needs_operator),
            ("leave it: its writer is alive", dry_run.in_flight),
            ("try again later: its evidence is out of reach", dry_run.deferred),
        )
        for outcome in outcomes
    }
    unseen = ("leave it: not found by the dry run", "")
    pending = [
        {
            "stream": entry.stream,
            "op": entry.operation.op,
            "op_id": entry.operation.op_id,
            "owner": entry.owner,
            "started_at": entry.started_at,
            "age_seconds": _age(entry.started_at, now),
            "recover_would": decided.get(entry.operation.op_id, unseen)[0],
            "reason": decided.get(entry.operation.op_id, unseen)[1],
        }
        for entry in store.pending()
    ]
    verify = engine.verify()
    head = store.head()
    last = next(iter(store.read_all(head - 1, batch=1)), None) if head else None
    disks = engine.list()
    templates = engine.list_templates()
    return {
        "pending": pending,
        "verify": {
            "ok": verify.ok,
            "chain": verify.chain_error or "ok",
            "read_models": "; ".join(verify.model_mismatches) or "ok",
            "orphans": len(verify.orphans),
            "drift": len(verify.drift),
            "keys": len(verify.keys),
        },
        "ledger": {
            "url": store.url,
            "events": head,
            "head_hash": last.hash if last is not None else None,
            "bytes": _ledger_bytes(store.url),
        },
        "templates": [
            {
                "template": t.template,
                "state": t.state.value,
                "users": engine.template_users(t.template),
            }
            for t in templates
        ],
        "disks": dict(sorted(Counter(d.state.value for d in disks).items())),
    }


def _age(started_at: str, now: datetime) -> float | None:
    try:
        started = datetime.fromisoformat(started_at)
    except ValueError:
        return None
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    return round((now - started).total_seconds(), 1)


def _ledger_bytes(url: str) -> int | None:
    """A SQLite ledger's size on disk with its write-ahead log; None for a server's."""
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url.removeprefix("sqlite:///"))
    files = (path, path.with_name(path.name + "-wal"))
    return sum(f.stat().st_size for f in files if f.exists())


def _print(document: dict[str, Any]) -> None:
    pending = document["pending"]
    if pending:
        print(paint(f"pending: {len(pending)} operation(s) without an outcome", "warn"))
        for p in pending:
            age = "?" if p["age_seconds"] is None else _duration(p["age_seconds"])
            owner = f", owner {p['owner']}" if p["owner"] else ""
            print(f"  {p['stream']}  {p['op']} {p['op_id'][:8]}  {age} old{owner}")
            print(f"    recover would: {p['recover_would']} ({p['reason']})")
    else:
        print(f"pending:   {paint('nothing', 'ok')}: every intent has its outcome")
    verify = document["verify"]
    verdict = paint("ok", "ok") if verify["ok"] else paint("NOT OK", "error")
    print(
        f"verify:    {verdict} (chain {verify['chain']}; read models {verify['read_models']}; "
        f"{verify['orphans']} orphans, {verify['drift']} drift, {verify['keys']} key problems)"
    )
    ledger = document["ledger"]
    size = f", {human_size(ledger['bytes'])}" if ledger["bytes"] is not None else ""
    head = (ledger["head_hash"] or "-")[:16]
    print(f"ledger:    {ledger['url']}: {ledger['events']} events{size}, head {head}")
    templates = document["templates"]
    listed = "; ".join(
        f"{t['template']} ({t['state']}, {_disks(len(t['users']))})" for t in templates
    )
    print(f"templates: {listed or 'none'}")
    disks = ", ".join(f"{count} {state}" for state, count in document["disks"].items())
    print(f"disks:     {disks or 'none'}")
    if pending or not verify["ok"]:
        print("next:      diskledger recover (then diskledger verify)")


def _disks(count: int) -> str:
    return f"{count} disk{'s' if count != 1 else ''}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
