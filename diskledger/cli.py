"""The ``diskledger`` command line: a thin layer over ``Engine``.

Every command takes ``--json`` and then prints exactly one JSON document on stdout (``watch``, which
follows the ledger, prints one JSON line per event instead). Errors are one line on stderr and exit
status 1; usage errors exit 2 (``watch`` exits 3 on a gap or a broken hash chain).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from diskledger.backends import BACKENDS
from diskledger.engine import FORMATS, Config, Engine, MemberRecord
from diskledger.engine.agent import serve
from diskledger.engine.recovery import RecoveryReport
from diskledger.errors import DiskLedgerError, FeedGap, InvalidInput
from diskledger.events import RecordedEvent
from diskledger.hypervisor import BUSES, CACHE_MODES, DISCARD_MODES
from diskledger.render import (
    disk_json,
    event_json,
    print_disk,
    print_disks,
    print_history,
    print_recovery,
    print_template,
    print_templates,
    print_verify,
    template_json,
)

__all__ = ["main"]

Handler = Callable[[Engine, argparse.Namespace], Any]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: usage error: {message}\n")


def _common() -> argparse.ArgumentParser:
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


def _mutating() -> argparse.ArgumentParser:
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


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    mutating = _mutating()
    parser = _Parser(
        prog="diskledger",
        description="Virtual-machine disks whose every transition is recorded in a ledger.",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def leaf(
        subparsers: Any, name: str, handler: Handler, help_text: str, *, mutates: bool = False
    ) -> argparse.ArgumentParser:
        parents = [common, mutating] if mutates else [common]
        sub: argparse.ArgumentParser = subparsers.add_parser(
            name, parents=parents, help=help_text, description=help_text
        )
        sub.set_defaults(handler=handler)
        return sub

    _template_commands(groups, leaf)
    _disk_commands(groups, leaf)
    _libvirt_commands(groups, leaf)
    _watch_command(groups, leaf)
    _member_commands(groups, leaf)

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
    return parser


def _template_commands(groups: Any, leaf: Leaf) -> None:
    template = groups.add_parser("template", help="cached templates").add_subparsers(
        dest="command", required=True, metavar="ACTION"
    )
    add = leaf(
        template,
        "add",
        _template_add,
        "import a local image file into the template cache",
        mutates=True,
    )
    add.add_argument("template", metavar="TEMPLATE_ID")
    add.add_argument("source", metavar="SOURCE_FILE")
    add.add_argument("--format", required=True, choices=FORMATS)
    leaf(template, "list", _template_list, "list cached templates")
    show = leaf(template, "show", _template_show, "show one template")
    show.add_argument("template", metavar="TEMPLATE_ID")


_ENCRYPT_HELP = "LUKS-encrypt the disk (qcow2) under a new key (DISKLEDGER_KEY_DIR)"


def _disk_commands(groups: Any, leaf: Leaf) -> None:
    disk = groups.add_parser("disk", help="disks").add_subparsers(
        dest="command", required=True, metavar="ACTION"
    )
    create = leaf(
        disk, "create", _disk_create, "create a disk from a template, or blank", mutates=True
    )
    create.add_argument("disk", metavar="INSTANCE/NAME")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--template", metavar="TEMPLATE_ID")
    source.add_argument("--blank", action="store_true", help="a blank disk (needs --size)")
    create.add_argument("--size", metavar="SIZE", help="bytes or K/M/G/T (binary)")
    create.add_argument(
        "--template-source",
        metavar="FILE",
        help="fetch the template from FILE first unless it is cached (once, however many ask)",
    )
    create.add_argument("--template-format", choices=FORMATS, help="the format of FILE")
    create.add_argument("--encrypt", action="store_true", help=_ENCRYPT_HELP)
    resize = leaf(disk, "resize", _disk_resize, "grow a disk", mutates=True)
    resize.add_argument("disk", metavar="INSTANCE/NAME")
    resize.add_argument("size", metavar="SIZE")
    for name, handler, text in (
        ("snapshot", _disk_snapshot, "take a snapshot"),
        ("rollback", _disk_rollback, "revert a disk to a snapshot"),
        ("remove-snapshot", _disk_remove_snapshot, "remove a snapshot"),
    ):
        sub = leaf(disk, name, handler, text, mutates=True)
        sub.add_argument("disk", metavar="INSTANCE/NAME")
        sub.add_argument("snapshot", metavar="SNAP")
    export = leaf(
        disk,
        "export",
        _disk_export,
        "write a standalone copy of a disk to a new file",
        mutates=True,
    )
    export.add_argument("disk", metavar="INSTANCE/NAME")
    export.add_argument("target", metavar="TARGET_FILE")
    export.add_argument("--format", choices=FORMATS, default=None)
    imported = leaf(
        disk, "import", _disk_import, "make a new disk from a local image file", mutates=True
    )
    imported.add_argument("disk", metavar="INSTANCE/NAME")
    imported.add_argument("source", metavar="SOURCE_FILE")
    imported.add_argument("--format", required=True, choices=FORMATS)
    imported.add_argument("--encrypt", action="store_true", help=_ENCRYPT_HELP)
    flatten = leaf(
        disk, "flatten", _disk_flatten, "detach a clone from its template (rbd)", mutates=True
    )
    flatten.add_argument("disk", metavar="INSTANCE/NAME")
    direct = leaf(
        disk,
        "direct-snapshot",
        _disk_direct_snapshot,
        "copy a disk into the snapshot pool as IMAGE_ID@snap and print its rbd:// URL (rbd)",
        mutates=True,
    )
    direct.add_argument("disk", metavar="INSTANCE/NAME")
    direct.add_argument("snapshot", metavar="SNAP", help="the short-lived snapshot to copy from")
    direct.add_argument("image_id", metavar="IMAGE_ID")
    xml = leaf(
        disk, "xml", _disk_xml, "print the libvirt <disk> element that gives a guest the disk"
    )
    xml.add_argument("disk", metavar="INSTANCE/NAME")
    _device_options(xml)
    xml.add_argument("--boot-order", type=int, metavar="N", help="boot order (from 1)")
    attach = leaf(
        disk,
        "attach",
        _disk_attach,
        "record that a domain uses the disk (hot-plugging it when the domain lacks it)",
        mutates=True,
    )
    attach.add_argument("disk", metavar="INSTANCE/NAME")
    attach.add_argument("domain", metavar="DOMAIN", help="the libvirt domain's name")
    _device_options(attach)
    detach = leaf(
        disk,
        "detach",
        _disk_detach,
        "record that no domain uses the disk (unplugging it from a running domain)",
        mutates=True,
    )
    detach.add_argument("disk", metavar="INSTANCE/NAME")
    delete = leaf(disk, "delete", _disk_delete, "delete a disk and its snapshots", mutates=True)
    delete.add_argument("disk", metavar="INSTANCE/NAME")
    show_disk = leaf(disk, "show", _disk_show, "show one disk")
    show_disk.add_argument("disk", metavar="INSTANCE/NAME")
    listing = leaf(disk, "list", _disk_list, "list disks")
    listing.add_argument("--all", action="store_true", help="include deleted disks")


def _device_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--dev", required=True, metavar="DEV", help="target device: vda, sdb, ...")
    sub.add_argument("--bus", default="virtio", help=f"{', '.join(BUSES)} (default virtio)")
    sub.add_argument("--cache", default="none", help=f"{', '.join(CACHE_MODES)} (default none)")
    sub.add_argument("--discard", default=None, help=f"{', '.join(DISCARD_MODES)}")
    sub.add_argument("--unit", type=int, metavar="N", help="SCSI drive unit (bus scsi only)")
    sub.add_argument(
        "--extra-spec",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a flavor extra spec; quota:disk_* keys become <iotune> limits (repeatable)",
    )


def _libvirt_commands(groups: Any, leaf: Leaf) -> None:
    libvirt = groups.add_parser("libvirt", help="libvirt wiring").add_subparsers(
        dest="command", required=True, metavar="ACTION"
    )
    leaf(
        libvirt,
        "define-secret",
        _libvirt_define_secret,
        "define (or update) the libvirt ceph secret holding the RBD user's key; print its UUID",
    )
    leaf(
        libvirt,
        "undefine-secret",
        _libvirt_undefine_secret,
        "remove the libvirt ceph secret define-secret made",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.group == "disk" and args.command == "create":
        if args.blank and args.size is None:
            parser.error("disk create --blank needs --size")
        if (args.template_source is None) != (args.template_format is None):
            parser.error("--template-source and --template-format go together")
        if args.template_source is not None and args.template is None:
            parser.error("--template-source needs --template")
    try:
        config = Config.load(
            root=args.root,
            ledger=args.ledger,
            backend=args.backend,
            recover=getattr(args, "recover_on_open", None),
        )
        with Engine.open(config) as engine:
            result = args.handler(engine, args)
    except DiskLedgerError as exc:
        message = " ".join(str(exc).split())
        print(f"diskledger: error: {message}", file=sys.stderr)
        return 1
    if isinstance(result, _Streamed):
        return result.status
    status = 0
    if isinstance(result, _Failed):
        status, result = 1, result.document
    if args.json:
        try:
            json.dump(result, sys.stdout, indent=2, sort_keys=True, default=str)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader (`| head`) went away; the operation itself is done and recorded.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status


class _Failed:
    """A handler's document for a command that ran but found a problem (exit status 1)."""

    def __init__(self, document: Any) -> None:
        self.document = document


# Each handler returns the JSON document and, when not in --json mode, prints for a person.


def _template_add(engine: Engine, args: argparse.Namespace) -> Any:
    view = engine.add_template(args.template, args.source, args.format, op_id=args.op_id)
    if not args.json:
        print_template(view, engine.template_users(view.template))
    return template_json(view, [])


def _template_list(engine: Engine, args: argparse.Namespace) -> Any:
    views = engine.list_templates()
    users = {v.template: engine.template_users(v.template) for v in views}
    if not args.json:
        print_templates(views, users)
    return [template_json(v, users[v.template]) for v in views]


def _template_show(engine: Engine, args: argparse.Namespace) -> Any:
    view = engine.template(args.template)
    users = engine.template_users(view.template)
    if not args.json:
        print_template(view, users)
    return template_json(view, users)


def _show_disk(engine: Engine, args: argparse.Namespace, view: Any) -> Any:
    if not args.json:
        print_disk(view)
    shown = disk_json(view)
    if view.encryption is not None:  # the key's reference, never the key
        shown["encryption"] = view.encryption.to_json()
    return shown


def _disk_create(engine: Engine, args: argparse.Namespace) -> Any:
    if args.template_source is not None:
        engine.ensure_template(args.template, args.template_source, args.template_format)
    view = engine.create(
        args.disk, template=args.template, size=args.size, encrypt=args.encrypt, op_id=args.op_id
    )
    return _show_disk(engine, args, view)


def _disk_resize(engine: Engine, args: argparse.Namespace) -> Any:
    return _show_disk(engine, args, engine.resize(args.disk, args.size, op_id=args.op_id))


def _disk_snapshot(engine: Engine, args: argparse.Namespace) -> Any:
    return _show_disk(engine, args, engine.snapshot(args.disk, args.snapshot, op_id=args.op_id))


def _disk_rollback(engine: Engine, args: argparse.Namespace) -> Any:
    return _show_disk(engine, args, engine.rollback(args.disk, args.snapshot, op_id=args.op_id))


def _disk_remove_snapshot(engine: Engine, args: argparse.Namespace) -> Any:
    return _show_disk(
        engine, args, engine.remove_snapshot(args.disk, args.snapshot, op_id=args.op_id)
    )


def _disk_delete(engine: Engine, args: argparse.Namespace) -> Any:
    return _show_disk(engine, args, engine.delete(args.disk, op_id=args.op_id))


def _disk_import(engine: Engine, args: argparse.Namespace) -> Any:
    view = engine.import_disk(
        args.disk, args.source, args.format, encrypt=args.encrypt, op_id=args.op_id
    )
    return _show_disk(engine, args, view)


def _disk_flatten(engine: Engine, args: argparse.Namespace) -> Any:
    return _show_disk(engine, args, engine.flatten(args.disk, op_id=args.op_id))


def _disk_direct_snapshot(engine: Engine, args: argparse.Namespace) -> Any:
    result = engine.direct_snapshot(args.disk, args.snapshot, args.image_id, op_id=args.op_id)
    if not args.json:
        print(result.url)
    return result.to_json()


def _device_choices(args: argparse.Namespace) -> dict[str, Any]:
    specs: dict[str, str] = {}
    for item in args.extra_spec:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"extra spec {item!r} is not KEY=VALUE")
        specs[key] = value
    return {
        "target_dev": args.dev,
        "bus": args.bus,
        "cache": args.cache,
        "discard": args.discard,
        "disk_unit": args.unit,
        "extra_specs": specs,
    }


def _disk_xml(engine: Engine, args: argparse.Namespace) -> Any:
    xml = engine.libvirt_disk(args.disk, boot_order=args.boot_order, **_device_choices(args))
    if not args.json:
        print(xml)
    return {"disk": args.disk, "xml": xml}


def _disk_attach(engine: Engine, args: argparse.Namespace) -> Any:
    view = engine.attach(args.disk, args.domain, op_id=args.op_id, **_device_choices(args))
    return _show_disk(engine, args, view)


def _disk_detach(engine: Engine, args: argparse.Namespace) -> Any:
    return _show_disk(engine, args, engine.detach(args.disk, op_id=args.op_id))


def _libvirt_define_secret(engine: Engine, args: argparse.Namespace) -> Any:
    secret_uuid = engine.define_ceph_secret()
    if not args.json:
        print(f"export DISKLEDGER_RBD_SECRET_UUID={secret_uuid}")
    return {"uuid": secret_uuid}


def _libvirt_undefine_secret(engine: Engine, args: argparse.Namespace) -> Any:
    secret_uuid = engine.undefine_ceph_secret()
    if not args.json:
        print(f"removed secret {secret_uuid}" if secret_uuid else "no secret to remove")
    return {"uuid": secret_uuid}


def _disk_show(engine: Engine, args: argparse.Namespace) -> Any:
    return _show_disk(engine, args, engine.show(args.disk))


def _disk_export(engine: Engine, args: argparse.Namespace) -> Any:
    result = engine.export(args.disk, args.target, args.format, op_id=args.op_id)
    if not args.json:
        print(f"exported {result.disk} to {result.target} ({result.format}, {result.size} bytes)")
    return result.to_json()


def _disk_list(engine: Engine, args: argparse.Namespace) -> Any:
    views = engine.list(include_deleted=args.all)
    if not args.json:
        print_disks(views)
    return [disk_json(v) for v in views]


def _history(engine: Engine, args: argparse.Namespace) -> Any:
    events: list[RecordedEvent] = engine.history(args.disk)
    if not args.json:
        print_history(events)
    return [event_json(e) for e in events]


def _recover(engine: Engine, args: argparse.Namespace) -> Any:
    report = engine.recover(dry_run=args.dry_run)
    if not args.json:
        print_recovery(report)
    return report.to_json()


def _verify(engine: Engine, args: argparse.Namespace) -> Any:
    report = engine.verify()
    if not args.json:
        print_verify(report)
    return report.to_json() if report.ok else _Failed(report.to_json())


# -- watch: the change feed on stdout ----------------------------------------------------------

_WATCH_TICK = 0.5
"""How often an idle ``watch`` wakes to see whether its reader went away or ``--until-idle`` ran
out (seconds)."""


def _watch_command(groups: Any, leaf: Leaf) -> None:
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


class _Streamed:
    """A handler that wrote its own output as it went: only the exit status is left."""

    def __init__(self, status: int) -> None:
        self.status = status


def _watch(engine: Engine, args: argparse.Namespace) -> _Streamed:
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
        return _Streamed(3)
    except KeyboardInterrupt:
        return _Streamed(0)
    except BrokenPipeError:
        # The reader went away: nothing more to say. Point stdout at /dev/null so that the
        # interpreter's final flush does not fail again (the Python docs' recipe for SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _Streamed(0)
    return _Streamed(0)


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


def _demo(engine: Engine, args: argparse.Namespace) -> Any:
    from diskledger.demo import run_demo

    return run_demo(engine, quiet=args.json)


# -- members of a shared ledger: who holds a lease, taking over, the agent ----------------------


def _member_commands(groups: Any, leaf: Leaf) -> None:
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
        _usage("takeover --confirm-down needs --member")
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


def _agent(engine: Engine, args: argparse.Namespace) -> _Streamed:
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

    serve(engine.runtime, stop, report)
    return _Streamed(0)


def _usage(message: str) -> NoReturn:
    build_parser().error(message)


if __name__ == "__main__":
    raise SystemExit(main())
