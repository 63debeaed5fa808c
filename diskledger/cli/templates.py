"""``template add|list|show|remove|gc``."""

from __future__ import annotations

import argparse
from typing import Any

from diskledger.cli.base import Leaf, new_op_id, paint, say
from diskledger.engine import FORMATS, Engine
from diskledger.engine.operations.template_gc import parse_duration
from diskledger.render import human_size, print_template, print_templates, template_json

__all__ = ["template_commands"]


def template_commands(groups: Any, leaf: Leaf) -> None:
    template = groups.add_parser("template", help="cached templates").add_subparsers(
        dest="command", required=True, metavar="ACTION"
    )
    add = leaf(
        template,
        "add",
        _template_add,
        "import a local image file, an http(s) URL or an image service's image "
        "(glance://IMAGE_ID) into the template cache",
        mutates=True,
    )
    add.add_argument("template", metavar="TEMPLATE_ID")
    add.add_argument(
        "source", metavar="SOURCE", help="a local image file, an http(s) URL, or glance://IMAGE_ID"
    )
    add.add_argument("--format", required=True, choices=FORMATS)
    add.add_argument(
        "--sha256",
        metavar="HEX",
        help="the SHA-256 the source's bytes must have (verified while they are copied)",
    )
    leaf(template, "list", _template_list, "list cached templates")
    show = leaf(template, "show", _template_show, "show one template")
    show.add_argument("template", metavar="TEMPLATE_ID")
    remove = leaf(
        template,
        "remove",
        _template_remove,
        "remove a cached template now, whatever its age (refused while a disk uses it)",
        mutates=True,
    )
    remove.add_argument("template", metavar="TEMPLATE_ID")
    gc = leaf(
        template,
        "gc",
        _template_gc,
        "remove cached templates no disk has used for a while (each removal recorded)",
        mutates=True,
    )
    gc.add_argument(
        "--older-than",
        metavar="DURATION",
        default="24h",
        help="how long a template must have been unused: 90s, 30m, 24h, 7d or seconds "
        "(default 24h, as Nova's remove_unused_original_minimum_age_seconds)",
    )
    gc.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )


def _template_add(engine: Engine, args: argparse.Namespace) -> Any:
    op_id = new_op_id(args)
    view = engine.add_template(
        args.template,
        args.source,
        args.format,
        op_id=op_id,
        sha256=args.sha256,
        progress=args.on_progress,
    )
    how = f"from {args.source}"
    if view.cloned_from:
        how = f"cloned from {view.cloned_from} (nothing downloaded)"
    say(
        args,
        f"{paint('cached', 'ok')} template {view.template}: {human_size(view.virtual_size)} "
        f"{view.format} {how}, op {op_id[:8]}",
    )
    if view.not_cloned:
        say(args, f"  downloaded, not cloned: {view.not_cloned}")
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


def _template_remove(engine: Engine, args: argparse.Namespace) -> Any:
    op_id = new_op_id(args)
    view = engine.remove_template(args.template, op_id=op_id)
    say(args, f"{paint('removed', 'ok')} template {args.template}, op {op_id[:8]}")
    return template_json(view, [])


def _template_gc(engine: Engine, args: argparse.Namespace) -> Any:
    age = parse_duration(args.older_than)  # refused before anything is considered
    report = engine.collect_templates(age, dry_run=args.dry_run)
    for c in report.templates:
        if c.action == "removed":
            say(args, f"{paint('removed', 'ok')} template {c.template}: {c.reason}, op {c.op_id}")
        elif c.action == "would-remove":
            say(args, f"would remove template {c.template}: {c.reason}")
        elif c.action == "failed":
            say(args, f"{paint('failed', 'error')} template {c.template}: {c.reason}")
        elif c.users:
            users = ", ".join(c.users)
            say(args, f"kept template {c.template}: in use by {users}")
        else:
            say(args, f"kept template {c.template}: {c.reason}")
    if not report.templates:
        say(args, "no cached templates")
    for c in report.failed:  # the others are done and recorded; the first failure is the error
        if c.error is not None:
            raise c.error
    return report.to_json()
