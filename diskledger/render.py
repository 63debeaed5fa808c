"""How views and events look to a person (tables) and to a program (JSON documents)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from diskledger.engine.inputs import human_size
from diskledger.events import RecordedEvent
from diskledger.states import DiskView, TemplateView

if TYPE_CHECKING:  # for annotations only: rendering a disk needs neither
    from diskledger.engine.recovery import RecoveryReport
    from diskledger.engine.verify import VerifyReport

__all__ = [
    "disk_json",
    "event_json",
    "human_size",
    "print_disk",
    "print_disks",
    "print_history",
    "print_recovery",
    "print_template",
    "print_templates",
    "print_verify",
    "template_json",
]


def disk_json(view: DiskView) -> dict[str, Any]:
    return {
        "disk": view.disk,
        "state": view.state.value,
        "size": view.size,
        "format": view.format,
        "template": view.template,
        "backing": view.backing,
        "snapshots": list(view.snapshot_names),
        "version": view.version,
        "pending": view.pending.to_json() if view.pending else None,
        "location": view.location,
        "attachment": view.attachment.to_json() if view.attachment else None,
    }


def template_json(view: TemplateView, users: Sequence[str]) -> dict[str, Any]:
    return {
        "template": view.template,
        "state": view.state.value,
        "format": view.format,
        "virtual_size": view.virtual_size,
        "location": view.location,
        "source": view.source,
        "cloned_from": view.cloned_from,
        "not_cloned": view.not_cloned,
        "version": view.version,
        "pending": view.pending.to_json() if view.pending else None,
        "users": list(users),
    }


def event_json(event: RecordedEvent) -> dict[str, Any]:
    return event.to_json()


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line.rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _pending(view: DiskView | TemplateView) -> str:
    return f"{view.pending.op} ({view.pending.op_id[:8]})" if view.pending else "-"


def print_disks(views: Sequence[DiskView]) -> None:
    if not views:
        print("no disks")
        return
    _table(
        ("DISK", "STATE", "SIZE", "FORMAT", "TEMPLATE", "SNAPSHOTS", "PENDING"),
        [
            (
                v.disk,
                v.state.value,
                human_size(v.size),
                v.format or "-",
                v.template or "-",
                ",".join(v.snapshot_names) or "-",
                _pending(v),
            )
            for v in views
        ],
    )


def print_disk(view: DiskView) -> None:
    fields = [
        ("disk", view.disk),
        ("state", view.state.value),
        ("size", f"{human_size(view.size)} ({view.size} bytes)" if view.size else "-"),
        ("format", view.format or "-"),
        ("template", view.template or "-"),
        ("backing", view.backing or "-"),
        ("snapshots", ", ".join(view.snapshot_names) or "-"),
        ("location", view.location or "-"),
        ("attached", _attached(view)),
        ("version", str(view.version)),
        ("pending", _pending(view)),
    ]
    for key, value in fields:
        print(f"{key + ':':<11}{value}")


def _attached(view: DiskView) -> str:
    a = view.attachment
    return f"{a.domain} as {a.target_dev} ({a.bus}, domain {a.domain_uuid})" if a else "-"


def print_templates(views: Sequence[TemplateView], users: dict[str, list[str]]) -> None:
    if not views:
        print("no templates")
        return
    _table(
        ("TEMPLATE", "STATE", "FORMAT", "VIRTUAL SIZE", "DISKS", "LOCATION"),
        [
            (
                v.template,
                v.state.value,
                v.format or "-",
                human_size(v.virtual_size),
                str(len(users.get(v.template, ()))),
                v.location or "-",
            )
            for v in views
        ],
    )


def print_template(view: TemplateView, users: Sequence[str]) -> None:
    fields = [
        ("template", view.template),
        ("state", view.state.value),
        ("format", view.format or "-"),
        ("virtual size", human_size(view.virtual_size)),
        ("location", view.location or "-"),
        ("source", view.source or "-"),
        ("disks", ", ".join(users) or "-"),
    ]
    if view.cloned_from:
        fields.insert(-1, ("cloned from", view.cloned_from))
    if view.not_cloned:
        fields.insert(-1, ("not cloned", view.not_cloned))
    for key, value in fields:
        print(f"{key + ':':<14}{value}")


def _summary(event: RecordedEvent) -> str:
    data = event.data
    if "params" in data:
        params = data["params"]
        keys: tuple[str, ...] = ("template", "size", "snapshot", "target", "format", "clone_from")
        return " ".join(f"{k}={params[k]}" for k in keys if params.get(k) is not None)
    if "error" in data:
        return f"error: {data['error']}"
    keys = ("template", "size", "format", "virtual_size", "backing")
    return " ".join(f"{k}={data[k]}" for k in keys if data.get(k) is not None)


def print_history(events: Sequence[RecordedEvent]) -> None:
    if not events:
        print("no events")
        return
    _table(
        ("POS", "TIME (UTC)", "STREAM", "VER", "EVENT", "OP", "DETAILS"),
        [
            (
                str(e.position),
                e.time.strftime("%Y-%m-%d %H:%M:%S"),
                e.stream,
                str(e.version),
                e.type,
                (e.metadata.op_id or "-")[:8],
                _summary(e),
            )
            for e in events
        ],
    )


def print_recovery(report: RecoveryReport) -> None:
    prefix = "dry run: would have " if report.dry_run else ""
    if report.ledger_tail is not None:
        print(report.ledger_tail.describe())
    if not report.pending:
        print("nothing pending: the ledger has an outcome for every intent")
        return
    rows = [
        (o.stream, o.op, o.op_id[:8], label, o.reason)
        for label, outcomes in (
            (f"{prefix}rolled forward", report.rolled_forward),
            (f"{prefix}rolled back", report.rolled_back),
            ("needs operator", report.needs_operator),
            ("in flight", report.in_flight),
            ("deferred", report.deferred),
        )
        for o in outcomes
    ]
    _table(("STREAM", "OP", "OP ID", "OUTCOME", "REASON"), rows)


def print_verify(report: VerifyReport) -> None:
    if report.chain_error is None:
        chain = "ok"
    else:
        chain = f"BROKEN at position {report.first_bad_position}: {report.chain_error}"
    models = "; ".join(report.model_mismatches) or "ok"
    print(f"events:       {report.events}")
    print(f"hash chain:   {chain}")
    print(f"read models:  {models}")
    print(f"orphans:      {len(report.orphans)}")
    for path in report.orphans:
        print(f"  {path}")
    print(f"drift:        {len(report.drift)}")
    for item in report.drift:
        print(f"  {item['owner']}: {item['artifact']['location']}: {item['problem']}")
    if report.attachments_unchecked is not None:
        print(f"attachments:  not checked: {report.attachments_unchecked}")
    else:
        print(f"attachments:  {len(report.stale_attachments)} stale")
    for item in report.stale_attachments:
        print(f"  {item['disk']} on {item['domain']} as {item['target_dev']}: {item['problem']}")
    print(f"keys:         {len(report.keys)} problems")
    for item in report.keys:
        print(f"  {item.get('disk') or item.get('key') or 'keys'}: {item['problem']}")
    print("verify: ok" if report.ok else "verify: NOT OK")
