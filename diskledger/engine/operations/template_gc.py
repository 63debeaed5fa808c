"""Removing cached templates no disk has used for a while (``remove``, ``template gc``).

Nova's image cache manager is the reference: with ``remove_unused_base_images`` it removes base
images no instance has used for ``remove_unused_original_minimum_age_seconds`` (86400 s by
default); ``DEFAULT_AGE`` is the same 24 hours. Where Nova looks at file times, the ledger knows
when the last user went away: the time of the event that left the template unused (the last
``disk.template-released`` naming it, the completed delete of the last disk made from it, or the
template's own ``fetch.completed`` when no disk used it since).

A removal is an operation like any other: ``template.remove.started`` (the template stays cached
but pending, so that ``cached_template`` refuses every create that reads it from then on), the
effect, ``template.remove.completed`` (absent: it may be fetched again) or ``failed``.

The race with a create that read the template as cached *before* the intent and binds it
(``disk.template-bound``, appended on the disk's stream) after it is closed by the effect's order:

1. refuse when a live disk names the template (the ledger, read again after the intent);
2. move the template aside (one atomic rename: a create cloning from it from now on fails and
   is rolled back, releasing its pin);
3. read the users again: a disk that bound it meanwhile may have cloned before the rename, so
   the template is renamed back and the removal refused (``failed``, the template kept);
4. remove what was moved aside.

Recovery decides by where the rename left the template: still at its name, the removal never
touched it (rolled back: it stays cached); moved aside or gone, nothing can bind it any more, so
the removal is finished, unless a disk bound it in the window the crash left open (renamed back,
a person decides).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from diskledger import faults
from diskledger.backends import Artifact, Backend
from diskledger.engine.decisions import Decision, Evidence, Rule
from diskledger.engine.inputs import check_name
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
    Conflict,
    DiskLedgerError,
    IllegalTransition,
    InvalidInput,
    TemplateNotFound,
)
from diskledger.events import COMPLETED, STARTED, split_type
from diskledger.states import DiskState, DiskView, TemplateState, TemplateView
from diskledger.states.streams import TEMPLATE, disk_stream

__all__ = [
    "DEFAULT_AGE",
    "REMOVE",
    "Collected",
    "GcReport",
    "collect_templates",
    "parse_duration",
]

DEFAULT_AGE = timedelta(hours=24)
"""Nova's ``remove_unused_original_minimum_age_seconds`` default (86400 s)."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d`` or plain seconds; anything else is ``InvalidInput``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(
            f"invalid duration {text!r}: give seconds or a number with s, m, h or d (e.g. 24h)"
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def live_users(rt: Runtime, template: str) -> list[str]:
    """The live disks whose view names ``template``, read from the ledger now."""
    return [
        d
        for d in rt.store.template_users(template)
        if (view := rt.store.disk(disk_stream(d))) and view.state is not DiskState.ABSENT
    ]


class Remove(Operation):
    name = "remove"
    kind = TEMPLATE
    rules = (
        # The effect moves the template aside in one rename before removing anything: at its
        # name, it was never touched and stays cached.
        Rule(
            "remove",
            "template still at its name",
            Decision.BACK,
            "the template was never moved aside: it stays cached",
        ),
        # Moved aside, no create can clone from it any more (and none could bind it since the
        # intent): finish the removal, after checking the ledger that no disk bound it anyway.
        Rule(
            "remove",
            "template moved aside or gone",
            Decision.FINISH,
            "the template was moved aside, nothing can bind it: finish the removal",
        ),
    )

    def __call__(self, rt: Runtime, template: str, *, op_id: str | None = None) -> TemplateView:
        check_name(template, "template")
        stream = rt.template_stream(template)
        request = {"op": "template remove", "template": template}
        if (done := repeated(rt, op_id, request)) is not None:
            return template_after(rt, done)
        view = rt.store.template(stream)
        if view is None or (view.state is TemplateState.ABSENT and view.pending is None):
            raise TemplateNotFound(template)
        refuse_pending(stream, view)
        if view.state is not TemplateState.CACHED:
            raise IllegalTransition(stream, view.state, "template.remove.started", "not cached")
        _refuse_in_use(rt, template)
        op_id = op_id or new_op_id()
        store = rt.templates
        aside, final = store.removal_artifacts(template, op_id)
        params = {
            "template": template,
            "location": final.location,
            "format": view.format,
            "template_artifact": final.to_json(),
        }

        def remove() -> dict[str, Any]:
            _refuse_in_use(rt, template)
            store.set_aside(template, op_id)
            faults.reach("mid-effect", self.name)
            if live_users(rt, template):
                store.restore(template, op_id)
                _refuse_in_use(rt, template)
            rt.backend.remove([aside])
            return {"location": final.location}

        plan = Plan(stream, view, rt.backend, op_id, params, remove, (aside,))
        return perform(rt, self, plan, request)[0]

    def parts(self, backend: Backend, params: Mapping[str, Any]) -> tuple[Artifact, ...]:
        final = params.get("template_artifact")
        return (Artifact.from_json(final),) if final is not None else ()

    def finish(self, rt: Runtime, backend: Backend, params: Mapping[str, Any], op_id: str) -> None:
        template = params["template"]
        if users := live_users(rt, template):
            rt.templates.restore(template, op_id)
            raise Conflict(
                f"disk {users[0]} bound template {template} while its removal was in flight: "
                "the template was put back"
            )

    def recovered(
        self,
        rt: Runtime,
        backend: Backend,
        params: Mapping[str, Any],
        view: DiskView | TemplateView,
        evidence: Evidence,
    ) -> dict[str, Any]:
        return {"location": params.get("location")}


def _refuse_in_use(rt: Runtime, template: str) -> None:
    users = live_users(rt, template)
    if users:
        more = f" and {len(users) - 1} more" if len(users) > 1 else ""
        raise Conflict(f"template {template} is in use by disk {users[0]}{more}")


REMOVE = Remove()


@dataclass(frozen=True, slots=True)
class Collected:
    """One template garbage collection considered, and what became of it."""

    template: str
    action: str
    """``removed``, ``would-remove`` (a dry run), ``kept`` or ``failed``."""
    reason: str
    unused_since: datetime | None = None
    """When the ledger last saw it left unused (None while a disk uses it)."""
    users: tuple[str, ...] = ()
    op_id: str | None = None
    error: DiskLedgerError | None = field(default=None, compare=False, repr=False)
    """What a failed removal raised (not in the JSON: its message is the reason)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "action": self.action,
            "reason": self.reason,
            "unused_since": self.unused_since.isoformat() if self.unused_since else None,
            "users": list(self.users),
            "op_id": self.op_id,
        }


@dataclass(frozen=True, slots=True)
class GcReport:
    """What ``collect_templates`` did (or, with ``dry_run``, would do)."""

    older_than: float
    dry_run: bool
    now: datetime
    templates: tuple[Collected, ...] = field(default=())

    @property
    def removed(self) -> tuple[str, ...]:
        wanted = "would-remove" if self.dry_run else "removed"
        return tuple(c.template for c in self.templates if c.action == wanted)

    @property
    def failed(self) -> tuple[Collected, ...]:
        return tuple(c for c in self.templates if c.action == "failed")

    def to_json(self) -> dict[str, Any]:
        return {
            "older_than": self.older_than,
            "dry_run": self.dry_run,
            "now": self.now.isoformat(),
            "templates": [c.to_json() for c in self.templates],
        }


def unused_since(rt: Runtime) -> dict[str, datetime]:
    """For each template id: when it was last left unused, by the ledger's events (one read of
    the whole ledger): its last ``fetch.completed``, a ``disk.template-released`` naming it, or
    the completed delete of a disk made from it, whichever came last."""
    since: dict[str, datetime] = {}
    deleting: dict[str, str] = {}

    def seen(template: Any, when: datetime) -> None:
        if isinstance(template, str) and (template not in since or since[template] < when):
            since[template] = when

    for event in rt.store.read_all():
        kind, op, phase = split_type(event.type)
        if kind == TEMPLATE and op == "fetch" and phase == COMPLETED:
            seen(event.stream.rpartition("/")[2], event.time)
        elif kind == "disk" and op == "template-released":
            seen(event.data.get("template"), event.time)
        elif kind == "disk" and op == "delete" and phase == STARTED:
            template = event.data.get("params", {}).get("template")
            if template and event.metadata.op_id:
                deleting[event.metadata.op_id] = template
        elif kind == "disk" and op == "delete" and phase == COMPLETED:
            seen(deleting.pop(event.metadata.op_id or "", None), event.time)
    return since


def collect_templates(
    rt: Runtime,
    older_than: float | timedelta = DEFAULT_AGE,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> GcReport:
    """Remove every cached template of this runtime's store that no live disk uses and none has
    used for ``older_than`` (seconds, or a ``timedelta``), each by its own ``remove`` operation;
    see ``Engine.collect_templates``."""
    age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
    if age < timedelta(0):
        raise InvalidInput("the age must not be negative")
    now = now or datetime.now(UTC)
    since = unused_since(rt)
    results: list[Collected] = []
    names = sorted({v.template for v in rt.store.templates()})
    for template in names:
        view = rt.store.template(rt.template_stream(template))
        if view is None or (view.state is TemplateState.ABSENT and view.pending is None):
            continue  # another host's template, or one removed already
        when = since.get(template)
        if view.pending is not None:
            reason = f"{view.pending.op} {view.pending.op_id[:8]} is pending"
            results.append(Collected(template, "kept", reason, when))
            continue
        users = tuple(live_users(rt, template))
        if users:
            results.append(Collected(template, "kept", "in use", None, users))
            continue
        if when is not None and now - when < age:
            reason = f"unused for {_human(now - when)}, less than {_human(age)}"
            results.append(Collected(template, "kept", reason, when))
            continue
        reason = f"unused for {_human(now - when)}" if when is not None else "never used"
        if dry_run:
            results.append(Collected(template, "would-remove", reason, when))
            continue
        op_id = new_op_id()
        try:
            REMOVE(rt, template, op_id=op_id)
        except Conflict as exc:  # a disk bound it first, or another gc removed it
            results.append(Collected(template, "kept", str(exc), when, op_id=op_id))
        except DiskLedgerError as exc:
            results.append(Collected(template, "failed", str(exc), when, op_id=op_id, error=exc))
        else:
            results.append(Collected(template, "removed", reason, when, op_id=op_id))
    return GcReport(age.total_seconds(), dry_run, now, tuple(results))


def _human(delta: timedelta) -> str:
    seconds = int(max(delta.total_seconds(), 0))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if (seconds >= size and seconds % size == 0) or seconds >= 10 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
