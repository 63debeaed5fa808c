"""``template add|list|show``."""

from __future__ import annotations

import argparse
from typing import Any

from diskledger.cli.base import Leaf, new_op_id, paint, say
from diskledger.engine import FORMATS, Engine
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
        "import a local image file or an http(s) URL into the template cache",
        mutates=True,
    )
    add.add_argument("template", metavar="TEMPLATE_ID")
    add.add_argument("source", metavar="SOURCE", help="a local image file, or an http(s) URL")
    add.add_argument("--format", required=True, choices=FORMATS)
    add.add_argument(
        "--sha256",
        metavar="HEX",
        help="the SHA-256 the source's bytes must have (verified while they are copied)",
    )
    leaf(template, "list", _template_list, "list cached templates")
    show = leaf(template, "show", _template_show, "show one template")
    show.add_argument("template", metavar="TEMPLATE_ID")


def _template_add(engine: Engine, args: argparse.Namespace) -> Any:
    op_id = new_op_id(args)
    view = engine.add_template(
        args.template, args.source, args.format, op_id=op_id, sha256=args.sha256
    )
    say(
        args,
        f"{paint('cached', 'ok')} template {view.template}: {human_size(view.virtual_size)} "
        f"{view.format} from {args.source}, op {op_id[:8]}",
    )
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
