"""Bringing a template into the store (``fetch``), once, however many callers ask at a time.

Others wait for the fetcher's outcome, and recover its fetch when it dies: on one host when its
process is gone, on a shared ledger when its member's lease has run out (judged by the
database's clock alone, never by comparing two hosts' clocks) and it has been fenced.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from diskledger.backends import Backend, Observation
from diskledger.backends.contract import ClonesTemplates, TemplateStore
from diskledger.backends.glance import GlanceSource
from diskledger.backends.sources import ImageSource, source_params
from diskledger.engine.decisions import Decision, Evidence, Rule
from diskledger.engine.inputs import check_name, template_source
from diskledger.engine.liveness import abandoned, is_alive
from diskledger.engine.operations.base import Operation
from diskledger.engine.protocol import (
    Plan,
    new_op_id,
    perform,
    refuse_pending,
    repeated,
    template_after,
)
from diskledger.engine.runtime import Runtime
from diskledger.errors import (
    ConcurrencyError,
    Conflict,
    IllegalTransition,
    InvalidInput,
    OperationPending,
    TemplateNotFound,
)
from diskledger.states import DiskView, MemberState, TemplateState, TemplateView
from diskledger.states.streams import TEMPLATE, member_stream

__all__ = [
    "FETCH",
    "FORMATS",
    "cached_template",
    "ensure_template",
    "fetched",
    "find_template",
    "protected_paths",
]

FORMATS = ("raw", "qcow2")
"""Formats a template may be declared as and an export may be written in."""


def fetched(fmt: str, seen: Observation, params: Mapping[str, Any]) -> dict[str, Any]:
    """What a fetch's ``completed`` records: the format it was accepted as, its virtual size,
    and the image service's location when the template is a clone of it."""
    outcome = {
        "format": fmt,
        "virtual_size": seen.size,
        "location": seen.artifact.location,
        "allocated": seen.allocated,
    }
    if "clone_from" in params:
        outcome["cloned_from"] = params["clone_from"]
    return outcome


class Fetch(Operation):
    name = "fetch"
    publishes = True
    kind = TEMPLATE
    rules = (
        Rule("fetch", "final names exist", Decision.FORWARD, "the template was published whole"),
        Rule("fetch", "final names missing", Decision.BACK, "the template was never published"),
    )

    def __call__(
        self,
        rt: Runtime,
        template: str,
        source: str | os.PathLike[str],
        fmt: str,
        *,
        op_id: str | None = None,
        sha256: str | None = None,
    ) -> TemplateView:
        check_name(template, "template")
        if fmt not in FORMATS:
            raise InvalidInput(f"template format {fmt!r} is not one of {', '.join(FORMATS)}")
        stream = rt.template_stream(template)
        request = {"op": "template add", "template": template, "source": str(source), "format": fmt}
        if sha256 is not None:
            request["sha256"] = sha256
        if (done := repeated(rt, op_id, request)) is not None:
            return template_after(rt, done)
        chosen = template_source(source, sha256=sha256, protected=protected_paths(rt), fmt=fmt)
        view = rt.store.template(stream) or TemplateView(template=template)
        refuse_pending(stream, view)
        if view.state is not TemplateState.ABSENT:
            raise IllegalTransition(stream, view.state, "template.fetch.started", "already cached")
        op_id = op_id or new_op_id()
        store = rt.templates
        params = {"template": template, "source": chosen.describe(), "format": fmt}
        params.update(source_params(chosen))  # the checksum; an image service's URL
        clone_from, not_cloned = _clone_choice(store, chosen, fmt)
        if clone_from is not None:
            params["clone_from"] = clone_from
        elif not_cloned is not None:
            params["not_cloned"] = not_cloned

        def fetch() -> dict[str, Any]:
            if clone_from is not None:
                assert isinstance(store, ClonesTemplates)
                seen = store.clone_from(clone_from, template, op_id)
            else:
                seen = store.import_file(chosen, fmt, template, op_id)
            return fetched(store.cached_format(fmt), seen, params)

        artifacts = store.import_artifacts(template, op_id)
        plan = Plan(stream, view, rt.backend, op_id, params, fetch, artifacts, durable_effect=True)
        return perform(rt, self, plan, request)[0]

    def recovered(
        self,
        rt: Runtime,
        backend: Backend,
        params: Mapping[str, Any],
        view: DiskView | TemplateView,
        evidence: Evidence,
    ) -> dict[str, Any]:
        fmt = rt.templates.cached_format(params["format"])
        return fetched(fmt, rt.templates.observe(params["template"], fmt), params)


FETCH = Fetch()


def _clone_choice(
    store: TemplateStore, source: ImageSource, fmt: str
) -> tuple[str | None, str | None]:
    """Where the template can be cloned from instead of downloaded, or why not (see
    ``ClonesTemplates.clone_choice``); ``(None, None)`` when the question does not arise."""
    if not isinstance(source, GlanceSource) or not isinstance(store, ClonesTemplates):
        return None, None
    return store.clone_choice(source.locations, fmt)


def ensure_template(
    rt: Runtime,
    template: str,
    source: str | os.PathLike[str],
    fmt: str,
    *,
    timeout: float,
    recover: Callable[[], object],
    sha256: str | None = None,
) -> TemplateView:
    """The cached ``template``, fetched from ``source`` when nobody has; see
    ``Engine.ensure_template``. ``recover`` runs crash recovery (the engine's)."""
    check_name(template, "template")
    stream = rt.template_stream(template)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        view = rt.store.template(stream)
        if view is not None and view.state is TemplateState.CACHED:
            return view
        if view is None or view.pending is None:
            try:
                return FETCH(rt, template, source, fmt, sha256=sha256)
            except (ConcurrencyError, OperationPending, IllegalTransition):
                raced = rt.store.template(stream)
                if raced is None or (raced.pending is None and raced.state is TemplateState.ABSENT):
                    raise  # not a race: nobody else is fetching or has fetched it
                continue  # another process started the fetch first: wait for it
        if _abandoned(rt, view):
            recover()
            continue
        if time.monotonic() > deadline:
            raise Conflict(f"{stream}: still being fetched after {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def protected_paths(rt: Runtime) -> tuple[str, ...]:
    """What a local source may not lie inside: the root (the ledger by default, the templates,
    the disks, staging) and a SQLite ledger kept elsewhere."""
    paths = [rt.templates.root]
    url = rt.store.url
    if url.startswith("sqlite:///") and url[len("sqlite:///") :] not in ("", ":memory:"):
        ledger = url[len("sqlite:///") :].split("?", 1)[0]
        paths += [ledger, f"{ledger}-wal", f"{ledger}-shm", f"{ledger}-journal"]
    return tuple(paths)


def _abandoned(rt: Runtime, view: TemplateView) -> bool:
    """Whether the fetch in flight has lost its writer: its thread died here, its member's lease
    ran out or it is being fenced, or (without members) its process is gone."""
    assert view.pending is not None
    if abandoned(view.pending.op_id):
        return True
    owner = view.pending.owner_member
    if owner is not None:
        record = rt.store.member(member_stream(owner))
        return record is None or record.lapsed or record.view.state is not MemberState.LIVE
    intent = rt.store.read_operation(view.pending.op_id)
    meta = intent[0].metadata if intent else None
    return meta is not None and not is_alive(meta.process, meta.host, rt.host)


def find_template(rt: Runtime, template: str) -> TemplateView:
    """The template's view; a template never fetched, or evicted, is not found."""
    check_name(template, "template")
    view = rt.store.template(rt.template_stream(template))
    if view is None or view.state is TemplateState.ABSENT:
        raise TemplateNotFound(template)
    return view


def cached_template(rt: Runtime, template: str) -> TemplateView:
    """The template a disk is made from: cached, with no fetch in flight."""
    cached = find_template(rt, template)
    if cached.pending is not None:
        raise OperationPending(
            rt.template_stream(template), cached.pending.op, cached.pending.op_id
        )
    if cached.state is not TemplateState.CACHED:
        raise TemplateNotFound(template)
    return cached
