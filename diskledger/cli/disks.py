"""``disk ...`` (the lifecycle, libvirt descriptions, attach and detach) and ``libvirt ...``."""

from __future__ import annotations

import argparse
from typing import Any

from diskledger.cli.base import Leaf, new_op_id, paint, say
from diskledger.engine import FORMATS, Engine
from diskledger.errors import InvalidInput
from diskledger.hypervisor import BUSES, CACHE_MODES, DISCARD_MODES
from diskledger.render import disk_json, human_size, print_disk, print_disks
from diskledger.states import DiskView

__all__ = ["disk_commands", "libvirt_commands"]


_ENCRYPT_HELP = "LUKS-encrypt the disk (qcow2, lvm) under a new key (DISKLEDGER_KEY_DIR)"


def disk_commands(groups: Any, leaf: Leaf) -> None:
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
        metavar="SOURCE",
        help="fetch the template from SOURCE (a file, an http(s) URL or glance://IMAGE_ID) "
        "first unless it is cached (once, however many ask)",
    )
    create.add_argument("--template-format", choices=FORMATS, help="the format of SOURCE")
    create.add_argument(
        "--template-sha256",
        metavar="HEX",
        help="the SHA-256 SOURCE's bytes must have (verified while they are copied)",
    )
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


def libvirt_commands(groups: Any, leaf: Leaf) -> None:
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


def _show_disk(engine: Engine, args: argparse.Namespace, view: Any) -> Any:
    if not args.json:
        print_disk(view)
    return _disk_document(view)


def _disk_document(view: DiskView) -> Any:
    shown = disk_json(view)
    if view.encryption is not None:  # the key's reference, never the key
        shown["encryption"] = view.encryption.to_json()
    return shown


def _done(args: argparse.Namespace, view: DiskView, line: str, op_id: str) -> Any:
    """A mutating command's result: one line for a person, the disk's document for a program."""
    say(args, f"{paint(line.partition(' ')[0], 'ok')} {line.partition(' ')[2]}, op {op_id[:8]}")
    return _disk_document(view)


def _made(view: DiskView) -> str:
    """``1.0 GiB qcow2``, and ``encrypted`` when it is."""
    return " ".join(
        part
        for part in (human_size(view.size), view.format, "encrypted" if view.encryption else "")
        if part
    )


def _disk_create(engine: Engine, args: argparse.Namespace) -> Any:
    if args.template_source is not None:
        engine.ensure_template(
            args.template,
            args.template_source,
            args.template_format,
            sha256=args.template_sha256,
            progress=args.on_progress,
        )
    op_id = new_op_id(args)
    view = engine.create(
        args.disk, template=args.template, size=args.size, encrypt=args.encrypt, op_id=op_id
    )
    source = f"from {view.template}" if view.template else "blank"
    return _done(args, view, f"created {view.disk}: {_made(view)} {source}", op_id)


def _disk_resize(engine: Engine, args: argparse.Namespace) -> Any:
    op_id = new_op_id(args)
    view = engine.resize(args.disk, args.size, op_id=op_id)
    live = f" (live, in domain {view.attachment.domain})" if view.attachment else ""
    return _done(args, view, f"resized {view.disk} to {human_size(view.size)}{live}", op_id)


def _snapshots(view: DiskView) -> str:
    names = view.snapshot_names
    return f"snapshots: {', '.join(names)}" if names else "no snapshots"


def _disk_snapshot(engine: Engine, args: argparse.Namespace) -> Any:
    op_id = new_op_id(args)
    view = engine.snapshot(args.disk, args.snapshot, op_id=op_id)
    line = f"snapshotted {view.disk} as {args.snapshot} ({_snapshots(view)})"
    return _done(args, view, line, op_id)


def _disk_rollback(engine: Engine, args: argparse.Namespace) -> Any:
    op_id = new_op_id(args)
    view = engine.rollback(args.disk, args.snapshot, op_id=op_id)
    line = f"rolled {view.disk} back to snapshot {args.snapshot} ({human_size(view.size)})"
    return _done(args, view, line, op_id)


def _disk_remove_snapshot(engine: Engine, args: argparse.Namespace) -> Any:
    op_id = new_op_id(args)
    view = engine.remove_snapshot(args.disk, args.snapshot, op_id=op_id)
    line = f"removed snapshot {args.snapshot} of {view.disk} ({_snapshots(view)} left)"
    return _done(args, view, line.replace("no snapshots left", "none left"), op_id)


def _disk_delete(engine: Engine, args: argparse.Namespace) -> Any:
    op_id = new_op_id(args)
    before = engine.show(args.disk)
    view = engine.delete(args.disk, op_id=op_id)
    count = len(before.snapshots)
    gone = f" and its {count} snapshot{'s' if count != 1 else ''}" if count else ""
    return _done(args, view, f"deleted {before.disk}{gone}", op_id)


def _disk_import(engine: Engine, args: argparse.Namespace) -> Any:
    op_id = new_op_id(args)
    view = engine.import_disk(
        args.disk,
        args.source,
        args.format,
        encrypt=args.encrypt,
        op_id=op_id,
        progress=args.on_progress,
    )
    return _done(args, view, f"imported {view.disk}: {_made(view)} from {args.source}", op_id)


def _disk_flatten(engine: Engine, args: argparse.Namespace) -> Any:
    op_id = new_op_id(args)
    before = engine.show(args.disk)
    view = engine.flatten(args.disk, op_id=op_id, progress=args.on_progress)
    was = (
        f" (no longer depends on template {before.template})"
        if before.backing
        else " (it was flat already)"
    )
    return _done(args, view, f"flattened {view.disk}{was}", op_id)


def _disk_direct_snapshot(engine: Engine, args: argparse.Namespace) -> Any:
    # Its output is the URL, for the caller to hand on: nothing else on stdout.
    result = engine.direct_snapshot(args.disk, args.snapshot, args.image_id, op_id=new_op_id(args))
    say(args, result.url)
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
    op_id = new_op_id(args)
    view = engine.attach(args.disk, args.domain, op_id=op_id, **_device_choices(args))
    where = f" as {view.attachment.target_dev}" if view.attachment else ""
    return _done(args, view, f"attached {view.disk} to domain {args.domain}{where}", op_id)


def _disk_detach(engine: Engine, args: argparse.Namespace) -> Any:
    op_id = new_op_id(args)
    before = engine.show(args.disk)
    view = engine.detach(args.disk, op_id=op_id)
    domain = f" from domain {before.attachment.domain}" if before.attachment else ""
    return _done(args, view, f"detached {view.disk}{domain}", op_id)


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
    op_id = new_op_id(args)
    result = engine.export(
        args.disk, args.target, args.format, op_id=op_id, progress=args.on_progress
    )
    say(
        args,
        f"{paint('exported', 'ok')} {result.disk} to {result.target}: {result.format}, "
        f"{human_size(result.size)}, op {op_id[:8]}",
    )
    return result.to_json()


def _disk_list(engine: Engine, args: argparse.Namespace) -> Any:
    views = engine.list(include_deleted=args.all)
    if not args.json:
        print_disks(views)
    return [disk_json(v) for v in views]
