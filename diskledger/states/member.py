"""The member lifecycle: one running engine on a shared ledger, from its join to its fence.

A member is one engine incarnation (``member:<host>/<id>``). Its **epoch** is the ledger position
of its ``member.joined`` event: monotonic, durable, the fencing token its intents carry. Its
lease is not an event: renewals update the ``members`` read model only, judged by the database
clock (see ``EventStore.renew``), so the log records joins and fences, not heartbeats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from diskledger.states.disk import PendingOperation
from diskledger.states.table import Row, Table

__all__ = ["MEMBER_TABLE", "MemberState", "MemberView"]


class MemberState(StrEnum):
    """Where a member of a shared ledger is in its lifecycle: live, being fenced, fenced, left."""

    ABSENT = "absent"
    LIVE = "live"
    FENCING = "fencing"
    FENCED = "fenced"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MemberView:
    """What the ledger knows of one member.

    ``ceph_clients``: every Ceph client address it registered before using it (the fence
    blocklists exactly these); ``fencing_by``: the member fencing it (``{member, epoch}``);
    ``fence``: what the fence did; ``confirmed_down``: who confirmed its host is down (an operator),
    which lets a takeover past the circuit breaker and past in-place operations on files.
    """

    member: str
    state: MemberState = MemberState.ABSENT
    version: int = 0
    host: str | None = None
    boot_id: str | None = None
    pid: int | None = None
    process: str | None = None
    lease_ttl: float | None = None
    ceph_clients: tuple[str, ...] = ()
    fencing_by: Mapping[str, Any] | None = None
    fence: Mapping[str, Any] | None = None
    confirmed_down: str | None = None
    suspended: Mapping[str, Any] | None = None
    """The last ``member.takeover-suspended`` this member recorded (it saw too many stale)."""
    pending: PendingOperation | None = None
    """Always None: members have no storage operations (the fold's shape needs the field)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "state": self.state.value,
            "version": self.version,
            "host": self.host,
            "boot_id": self.boot_id,
            "pid": self.pid,
            "process": self.process,
            "lease_ttl": self.lease_ttl,
            "ceph_clients": list(self.ceph_clients),
            "fencing_by": dict(self.fencing_by) if self.fencing_by else None,
            "fence": dict(self.fence) if self.fence else None,
            "confirmed_down": self.confirmed_down,
            "suspended": dict(self.suspended) if self.suspended else None,
            "pending": None,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> MemberView:
        return cls(
            member=raw["member"],
            state=MemberState(raw["state"]),
            version=raw["version"],
            host=raw.get("host"),
            boot_id=raw.get("boot_id"),
            pid=raw.get("pid"),
            process=raw.get("process"),
            lease_ttl=raw.get("lease_ttl"),
            ceph_clients=tuple(raw.get("ceph_clients", ())),
            fencing_by=raw.get("fencing_by"),
            fence=raw.get("fence"),
            confirmed_down=raw.get("confirmed_down"),
            suspended=raw.get("suspended"),
        )


S = MemberState
MEMBER_ROWS: tuple[Row[MemberState], ...] = (
    # An engine joins before its first intent; the position of this event is its epoch.
    Row("joined", S.ABSENT, S.LIVE, fact=True),
    # A new Ceph connection is registered before it issues any OSD operation, so that a fence
    # knows every address to blocklist.
    Row("client-added", S.LIVE, S.LIVE, fact=True),
    # A clean shutdown: nothing of it is pending, nobody needs to take over.
    Row("left", S.LIVE, S.LEFT, fact=True),
    # A taker found the lease expired (in the same transaction): renewals fail from here on.
    Row("fencing", S.LIVE, S.FENCING, fact=True),
    # The taker that was fencing it died itself: a second taker fences it again.
    Row("fencing", S.FENCING, S.FENCING, fact=True),
    # The storage fence is in place: the member's clients can no longer change anything.
    Row("fenced", S.FENCING, S.FENCED, fact=True),
    # An operator confirmed the member's host is down (power off, no way back).
    Row("confirmed-down", S.LIVE, S.LIVE, fact=True),
    Row("confirmed-down", S.FENCING, S.FENCING, fact=True),
    Row("confirmed-down", S.FENCED, S.FENCED, fact=True),
    # This member saw more than half of the others go stale at once and paused takeovers.
    Row("takeover-suspended", S.LIVE, S.LIVE, fact=True),
)
del S

MEMBER_TABLE: Table[MemberState] = Table(
    "member", MemberState, MemberState.ABSENT, MEMBER_ROWS, guards={}
)


def member_changes(view: MemberView, op: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields an event's payload changes, beyond state and version."""
    if op == "joined":
        return {
            "host": data["host"],
            "boot_id": data.get("boot_id"),
            "pid": data.get("pid"),
            "process": data.get("process"),
            "lease_ttl": data["lease_ttl"],
            "ceph_clients": tuple(data.get("ceph_clients", ())),
        }
    if op == "client-added":
        added = [a for a in data.get("addresses", ()) if a not in view.ceph_clients]
        return {"ceph_clients": (*view.ceph_clients, *added)}
    if op == "fencing":
        return {"fencing_by": {"member": data["by"], "epoch": data["by_epoch"]}}
    if op == "fenced":
        return {"fence": dict(data)}
    if op == "confirmed-down":
        return {"confirmed_down": data.get("by", "operator")}
    if op == "takeover-suspended":
        return {"suspended": dict(data)}
    return {}
