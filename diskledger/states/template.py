"""The template lifecycle: a template is fetched into the local cache once, then disks pin it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from diskledger.states.disk import PendingOperation
from diskledger.states.table import Row, Table

__all__ = ["TEMPLATE_TABLE", "TemplateState", "TemplateView"]


class TemplateState(StrEnum):
    """Where a template is in its lifecycle: being fetched into the cache, or cached."""

    ABSENT = "absent"
    FETCHING = "fetching"
    CACHED = "cached"


@dataclass(frozen=True, slots=True)
class TemplateView:
    """What the ledger knows of one cached template.

    ``format`` is the format accepted at import and recorded once; ``virtual_size`` is the size a
    disk made from it has at least.
    """

    template: str
    state: TemplateState = TemplateState.ABSENT
    version: int = 0
    format: str | None = None
    virtual_size: int | None = None
    location: str | None = None
    source: str | None = None
    cloned_from: str | None = None
    """The image service's snapshot the template is a copy-on-write clone of
    (``rbd://<fsid>/<pool>/<image>/<snap>``); None when its data was copied in."""
    not_cloned: str | None = None
    """Why its data was copied in although the service offered a location to clone from."""
    pending: PendingOperation | None = None
    lease_expires: str | None = None
    """While fetching: until when (UTC, ISO 8601) the fetcher's lease runs."""

    def to_json(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "state": self.state.value,
            "version": self.version,
            "format": self.format,
            "virtual_size": self.virtual_size,
            "location": self.location,
            "source": self.source,
            "cloned_from": self.cloned_from,
            "not_cloned": self.not_cloned,
            "pending": self.pending.to_json() if self.pending else None,
            "lease_expires": self.lease_expires,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TemplateView:
        pending = raw.get("pending")
        return cls(
            template=raw["template"],
            state=TemplateState(raw["state"]),
            version=raw["version"],
            format=raw.get("format"),
            virtual_size=raw.get("virtual_size"),
            location=raw.get("location"),
            source=raw.get("source"),
            cloned_from=raw.get("cloned_from"),
            not_cloned=raw.get("not_cloned"),
            pending=PendingOperation.from_json(pending) if pending else None,
            lease_expires=raw.get("lease_expires"),
        )


S = TemplateState
TEMPLATE_ROWS: tuple[Row[TemplateState], ...] = (
    # Import a template into the cache; while the copy runs the template shows as fetching, and
    # a failed fetch returns it to absent. The fetcher holds a lease so that other processes wait
    # for it instead of fetching again, and take over when it dies.
    Row("fetch", S.ABSENT, S.CACHED, busy=S.FETCHING, leased=True),
    # Garbage collection removes a cached template no disk has used for a while (``template
    # gc``). While the removal is in flight the template stays cached but pending, so no create
    # may bind it; a removal refused (a disk bound it first) or rolled back leaves it cached, a
    # completed one leaves it absent, from where it may be fetched again.
    Row("remove", S.CACHED, S.ABSENT),
)
del S

TEMPLATE_TABLE: Table[TemplateState] = Table(
    "template", TemplateState, TemplateState.ABSENT, TEMPLATE_ROWS, guards={}
)


def template_changes(
    view: TemplateView,
    op: str,
    phase: str | None,
    data: Mapping[str, Any],
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """The fields an event's payload changes, beyond state, version and pending operation."""
    if op == "remove":
        if phase == "completed":
            return dict.fromkeys(
                ("format", "virtual_size", "location", "source", "cloned_from", "not_cloned")
            )
        return {}
    if op != "fetch":
        return {}
    if phase == "started":
        return {"lease_expires": params.get("lease_expires")}
    if phase == "lease-renewed":
        return {"lease_expires": data.get("expires")}
    if phase == "completed":
        return {
            "format": data["format"],
            "virtual_size": data["virtual_size"],
            "location": data["location"],
            "source": params.get("source"),
            "cloned_from": data.get("cloned_from"),
            "not_cloned": params.get("not_cloned"),
            "lease_expires": None,
        }
    if phase == "failed":
        return {"lease_expires": None}
    return {}
