"""How an operation without an outcome is decided: the evidence a probe gathers, the named
conditions on it, and the rows (``Rule``) each operation declares.

Each operation (``diskledger.engine.operations``) lists its rules, first match wins; recovery and
the in-process failure path both decide by them (``settle``). The conditions are named so that the
rules read as a table and docs/recovery.md can print them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from diskledger.backends import Observation

__all__ = ["CONDITIONS", "Decision", "DomainEvidence", "Evidence", "Rule"]


class Decision(StrEnum):
    FORWARD = "roll-forward"
    """The effect is provably complete: remove leftover temporaries, record ``completed``."""
    FINISH = "finish"
    """An in-place effect that can be neither proven complete nor undone, but is idempotent: run
    it again to the end, record ``completed``."""
    BACK = "roll-back"
    """The effect is not complete: remove exactly the named artifacts, record ``failed``."""
    OPERATOR = "needs-operator"
    """The evidence contradicts itself: record ``needs-operator``; the operation stays pending."""


@dataclass(frozen=True, slots=True)
class DomainEvidence:
    """What libvirt showed of the domain an attach or detach names."""

    domain: str
    exists: bool
    active: bool
    uses_disk: bool
    """The same domain (by UUID) has the disk at the intent's target device."""

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "exists": self.exists,
            "active": self.active,
            "uses_disk": self.uses_disk,
        }


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the probe saw: the intent's named artifacts, the parts of the disk it changes, and
    for an attach or detach, the domain."""

    named: tuple[Observation, ...]
    parts: tuple[Observation, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    domain: DomainEvidence | None = None

    @property
    def finals(self) -> tuple[Observation, ...]:
        return tuple(o for o in self.named if not o.artifact.temporary)

    @property
    def disk(self) -> Observation | None:
        return self.parts[0] if self.parts else None

    def to_json(self) -> list[dict[str, Any]]:
        seen = [o.to_json() for o in (*self.named, *self.parts)]
        return [*seen, self.domain.to_json()] if self.domain is not None else seen


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of an operation's decision table: ``when`` names a condition of ``CONDITIONS``."""

    op: str
    when: str
    decision: Decision
    reason: str


Condition = Callable[[Evidence], bool]


def _finals_exist(e: Evidence) -> bool:
    return bool(e.finals) and all(o.exists for o in e.finals)


def _finals_missing(e: Evidence) -> bool:
    return not any(o.exists for o in e.finals)


def _created_as_asked(e: Evidence) -> bool:
    return _finals_exist(e) and all(
        o.size == e.params.get("size") and o.format == e.params.get("format") for o in e.finals
    )


def _temporary_survives(e: Evidence) -> bool:
    return any(o.exists for o in e.named if o.artifact.temporary)


def _disk_at_new_size(e: Evidence) -> bool:
    return e.disk is not None and e.disk.exists and e.disk.size == e.params.get("size")


def _disk_at_old_size(e: Evidence) -> bool:
    return e.disk is not None and e.disk.exists and e.disk.size == e.params.get("previous_size")


def _disk_exists(e: Evidence) -> bool:
    return e.disk is not None and e.disk.exists


def _parts_gone(e: Evidence) -> bool:
    return not any(o.exists for o in e.parts)


def _parts_whole(e: Evidence) -> bool:
    return all(o.exists for o in e.parts)


def _snapshot_gone(e: Evidence) -> bool:
    return _disk_exists(e) and not any(o.exists for o in e.parts[1:])


def _snapshot_present(e: Evidence) -> bool:
    return _disk_exists(e) and all(o.exists for o in e.parts[1:])


def _template_at_its_name(e: Evidence) -> bool:
    return bool(e.parts) and e.parts[0].exists


def _template_moved_or_gone(e: Evidence) -> bool:
    return bool(e.parts) and not e.parts[0].exists


def _domain_uses_disk(e: Evidence) -> bool:
    return e.domain is not None and e.domain.uses_disk


def _always(e: Evidence) -> bool:
    return True


CONDITIONS: Mapping[str, Condition] = {
    "created as asked": _created_as_asked,
    "final names missing": _finals_missing,
    "final names exist": _finals_exist,
    "a temporary name survives": _temporary_survives,
    "disk at the new size": _disk_at_new_size,
    "disk at the old size": _disk_at_old_size,
    "disk exists": _disk_exists,
    "disk and snapshots gone": _parts_gone,
    "disk and snapshots all present": _parts_whole,
    "snapshot gone, disk present": _snapshot_gone,
    "snapshot and disk present": _snapshot_present,
    "the domain uses the disk": _domain_uses_disk,
    "template still at its name": _template_at_its_name,
    "template moved aside or gone": _template_moved_or_gone,
    "otherwise": _always,
}


def decide(rules: tuple[Rule, ...], op: str, evidence: Evidence) -> Rule:
    """The first of ``rules`` whose condition holds; a person decides when none does."""
    for rule in rules:
        if CONDITIONS[rule.when](evidence):
            return rule
    return Rule(op, "otherwise", Decision.OPERATOR, f"no recovery rule for {op}")
