"""The disk lifecycle: states, the transition table, and the pure fold of events into a view."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from diskledger.states.table import Row, Table

__all__ = [
    "COMPLETED_CHANGES",
    "DISK_TABLE",
    "Attachment",
    "DiskState",
    "DiskView",
    "Encryption",
    "PendingOperation",
    "Snapshot",
]


class DiskState(StrEnum):
    """Where a disk is in its lifecycle (the transitions: ``docs/states.md``)."""

    ABSENT = "absent"
    TEMPLATE_CACHED = "template-cached"
    CREATED = "created"
    RESIZED = "resized"
    SNAPSHOTTED = "snapshotted"


@dataclass(frozen=True, slots=True)
class Snapshot:
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class Attachment:
    """The domain that uses a disk, as ``disk.attach.completed`` recorded it."""

    domain: str
    domain_uuid: str
    target_dev: str
    bus: str

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "domain_uuid": self.domain_uuid,
            "target_dev": self.target_dev,
            "bus": self.bus,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Attachment:
        return cls(raw["domain"], raw["domain_uuid"], raw["target_dev"], raw["bus"])


@dataclass(frozen=True, slots=True)
class Encryption:
    """How a disk is encrypted, as its create or import intent recorded it: the format
    (``luks``), the key provider's name and the key's reference with it. Never the key."""

    format: str
    provider: str
    key: str

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "provider": self.provider, "key": self.key}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Encryption:
        return cls(str(raw["format"]), str(raw["provider"]), str(raw["key"]))


@dataclass(frozen=True, slots=True)
class PendingOperation:
    """An operation whose intent is recorded and whose outcome is not (yet)."""

    op: str
    op_id: str
    params: Mapping[str, Any]
    artifacts: tuple[Mapping[str, Any], ...]
    started_version: int
    owner: Mapping[str, Any] | None = None
    """``{member, epoch}``: who may record its outcome — the member that recorded the intent, or
    the last one that took it over. None on a ledger without members."""

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "op_id": self.op_id,
            "params": dict(self.params),
            "artifacts": [dict(a) for a in self.artifacts],
            "started_version": self.started_version,
            "owner": dict(self.owner) if self.owner is not None else None,
        }

    @property
    def owner_member(self) -> str | None:
        return None if self.owner is None else str(self.owner["member"])

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PendingOperation:
        return cls(
            op=raw["op"],
            op_id=raw["op_id"],
            params=raw["params"],
            artifacts=tuple(raw["artifacts"]),
            started_version=raw["started_version"],
            owner=raw.get("owner"),
        )


@dataclass(frozen=True, slots=True)
class DiskView:
    """What the ledger knows of one disk after folding its stream.

    ``size`` is the virtual size in bytes; ``format`` and ``backing`` are recorded facts, never
    re-probed; ``backend`` names the driver that keeps it (``raw``, ``qcow2``, ``rbd``);
    ``resized`` remembers whether the disk ever grew, so removing its last snapshot returns it to
    ``resized`` rather than ``created``; ``preallocated``: its space was allocated when it was
    made (and when it grew); ``attachment`` is the domain that uses the disk, if any;
    ``encryption``: the disk is encrypted, with the key its provider keeps under that reference.
    """

    disk: str
    state: DiskState = DiskState.ABSENT
    version: int = 0
    format: str | None = None
    size: int | None = None
    template: str | None = None
    backing: str | None = None
    location: str | None = None
    backend: str | None = None
    snapshots: tuple[Snapshot, ...] = ()
    resized: bool = False
    preallocated: bool = False
    attachment: Attachment | None = None
    pending: PendingOperation | None = None
    encryption: Encryption | None = None

    @property
    def snapshot_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.snapshots)

    def snapshot(self, name: str) -> Snapshot | None:
        for snapshot in self.snapshots:  # a loop: replay asks for every snapshot intent
            if snapshot.name == name:
                return snapshot
        return None

    def to_json(self) -> dict[str, Any]:
        # ``encryption`` only when there is some: the views of plain disks stay as they were.
        extra = {"encryption": self.encryption.to_json()} if self.encryption else {}
        return {
            "disk": self.disk,
            "state": self.state.value,
            "version": self.version,
            "format": self.format,
            "size": self.size,
            "template": self.template,
            "backing": self.backing,
            "location": self.location,
            "backend": self.backend,
            "snapshots": [{"name": s.name, "size": s.size} for s in self.snapshots],
            "resized": self.resized,
            "preallocated": self.preallocated,
            "attachment": self.attachment.to_json() if self.attachment else None,
            "pending": self.pending.to_json() if self.pending else None,
            **extra,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DiskView:
        pending = raw.get("pending")
        attachment = raw.get("attachment")
        encryption = raw.get("encryption")
        return cls(
            disk=raw["disk"],
            state=DiskState(raw["state"]),
            version=raw["version"],
            format=raw.get("format"),
            size=raw.get("size"),
            template=raw.get("template"),
            backing=raw.get("backing"),
            location=raw.get("location"),
            backend=raw.get("backend"),
            snapshots=tuple(Snapshot(s["name"], s["size"]) for s in raw.get("snapshots", ())),
            resized=raw.get("resized", False),
            preallocated=raw.get("preallocated", False),
            attachment=Attachment.from_json(attachment) if attachment else None,
            pending=PendingOperation.from_json(pending) if pending else None,
            encryption=Encryption.from_json(encryption) if encryption else None,
        )


def _snapshot_exists(view: DiskView, params: Mapping[str, Any]) -> bool:
    return view.snapshot(params.get("snapshot", "")) is not None


def _snapshot_name_free(view: DiskView, params: Mapping[str, Any]) -> bool:
    return view.snapshot(params.get("snapshot", "")) is None


def _others_remain(view: DiskView, params: Mapping[str, Any]) -> bool:
    return len(view.snapshots) > 1


def _last_and_resized(view: DiskView, params: Mapping[str, Any]) -> bool:
    return len(view.snapshots) == 1 and view.resized


def _last_never_resized(view: DiskView, params: Mapping[str, Any]) -> bool:
    return len(view.snapshots) == 1 and not view.resized


def _attached(view: DiskView, params: Mapping[str, Any]) -> bool:
    return view.attachment is not None


def _detached(view: DiskView, params: Mapping[str, Any]) -> bool:
    return view.attachment is None


def _grows(view: DiskView, params: Mapping[str, Any]) -> bool:
    return view.size is None or int(params.get("size", 0)) > view.size


S = DiskState
DISK_ROWS: tuple[Row[DiskState], ...] = (
    # A disk made from a template first pins the cached template (format and virtual size are
    # copied from the template's stream); nothing is written to storage yet.
    Row("template-bound", S.ABSENT, S.TEMPLATE_CACHED, fact=True),
    # A create from the pinned template failed or was undone: the pin is released.
    Row("template-released", S.TEMPLATE_CACHED, S.ABSENT, fact=True),
    # A blank disk (ephemeral, swap) has no template: it goes straight from absent to created.
    Row("create", S.ABSENT, S.CREATED),
    # The disk is written from its pinned template: a raw copy, a qcow2 overlay or an RBD clone.
    Row("create", S.TEMPLATE_CACHED, S.CREATED),
    # A local image file becomes a new disk (copied, inspected, converted); it has no template.
    Row("import", S.ABSENT, S.CREATED),
    # The first growth of a disk.
    Row("resize", S.CREATED, S.RESIZED, when=("grows",)),
    # Further growth.
    Row("resize", S.RESIZED, S.RESIZED, when=("grows",)),
    # A disk with snapshots may grow too; its snapshots keep the sizes they were taken at.
    Row("resize", S.SNAPSHOTTED, S.SNAPSHOTTED, when=("grows",)),
    # The first snapshot, from a disk that never grew or one that did; names are unique per disk.
    Row("snapshot", S.CREATED, S.SNAPSHOTTED, when=("snapshot_name_free",)),
    Row("snapshot", S.RESIZED, S.SNAPSHOTTED, when=("snapshot_name_free",)),
    # More snapshots.
    Row("snapshot", S.SNAPSHOTTED, S.SNAPSHOTTED, when=("snapshot_name_free",)),
    # Revert the data to a snapshot that exists; the disk keeps its current size (never shrinks).
    # Never under a running guest: its view of the disk would no longer match the disk.
    Row("rollback", S.SNAPSHOTTED, S.SNAPSHOTTED, when=("snapshot_exists", "detached")),
    # Remove one snapshot while others remain.
    Row("remove-snapshot", S.SNAPSHOTTED, S.SNAPSHOTTED, when=("snapshot_exists", "others_remain")),
    # Remove the last snapshot of a disk that grew: back to resized.
    Row("remove-snapshot", S.SNAPSHOTTED, S.RESIZED, when=("snapshot_exists", "last_and_resized")),
    # Remove the last snapshot of a disk that never grew: back to created.
    Row(
        "remove-snapshot", S.SNAPSHOTTED, S.CREATED, when=("snapshot_exists", "last_never_resized")
    ),
    # Export writes a copy outside the disk; the disk itself is unchanged.
    Row("export", S.CREATED, S.CREATED),
    Row("export", S.RESIZED, S.RESIZED),
    Row("export", S.SNAPSHOTTED, S.SNAPSHOTTED),
    # Flatten copies the data a clone shares with its template into it (RBD); the disk no longer
    # depends on the template, its state is unchanged.
    Row("flatten", S.CREATED, S.CREATED),
    Row("flatten", S.RESIZED, S.RESIZED),
    Row("flatten", S.SNAPSHOTTED, S.SNAPSHOTTED),
    # A direct snapshot hands a standalone copy of the disk to an image pool (RBD); the disk keeps
    # no new snapshot, its state is unchanged.
    Row("direct-snapshot", S.CREATED, S.CREATED),
    Row("direct-snapshot", S.RESIZED, S.RESIZED),
    Row("direct-snapshot", S.SNAPSHOTTED, S.SNAPSHOTTED),
    # A domain uses the disk from now on (hot-plugged, or booted with its description); one
    # domain at a time. The lifecycle state does not change: attachment is a fact beside it.
    Row("attach", S.CREATED, S.CREATED, when=("detached",)),
    Row("attach", S.RESIZED, S.RESIZED, when=("detached",)),
    Row("attach", S.SNAPSHOTTED, S.SNAPSHOTTED, when=("detached",)),
    # The domain no longer uses the disk (unplugged, or the domain is gone).
    Row("detach", S.CREATED, S.CREATED, when=("attached",)),
    Row("detach", S.RESIZED, S.RESIZED, when=("attached",)),
    Row("detach", S.SNAPSHOTTED, S.SNAPSHOTTED, when=("attached",)),
    # Delete removes the disk and every snapshot of it, from any live state, once no domain
    # uses it.
    Row("delete", S.CREATED, S.ABSENT, when=("detached",)),
    Row("delete", S.RESIZED, S.ABSENT, when=("detached",)),
    Row("delete", S.SNAPSHOTTED, S.ABSENT, when=("detached",)),
)
del S

DISK_TABLE: Table[DiskState] = Table(
    "disk",
    DiskState,
    DiskState.ABSENT,
    DISK_ROWS,
    guards={
        "attached": _attached,
        "detached": _detached,
        "grows": _grows,
        "snapshot_exists": _snapshot_exists,
        "snapshot_name_free": _snapshot_name_free,
        "others_remain": _others_remain,
        "last_and_resized": _last_and_resized,
        "last_never_resized": _last_never_resized,
    },
)


def disk_changes(
    view: DiskView,
    op: str,
    phase: str | None,
    data: Mapping[str, Any],
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """The fields an event's payload changes, beyond the state, version and pending operation
    that the table and the protocol decide.

    ``params`` are the parameters of the operation's intent (for ``completed`` and ``failed``
    events, those of the pending ``started`` event). Only facts and the ``completed`` events of
    the operations in ``COMPLETED_CHANGES`` change anything: replay decodes no other payload for
    it (``diskledger.states.replay``).
    """
    if phase is None:
        if op == "template-bound":
            return {"template": data.get("template")}
        if op == "template-released":
            return {"template": None}
        return {}
    if phase != "completed":
        return {}
    changes = COMPLETED_CHANGES.get(op)
    return {} if changes is None else changes(view, data, params)


Changes = Callable[[DiskView, Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
"""What an operation's ``completed`` event changes: (view, its payload, the intent's params)."""


def _created(view: DiskView, data: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "format": data["format"],
        "size": data["size"],
        "backing": data.get("backing"),
        "location": data["location"],
        "backend": params.get("backend"),
        "template": params.get("template", view.template),
        "snapshots": (),
        "resized": False,
        "preallocated": bool(params.get("preallocated", False)),
        "encryption": (
            Encryption.from_json(params["encryption"]) if params.get("encryption") else None
        ),
    }


def _snapshotted(
    view: DiskView, data: Mapping[str, Any], params: Mapping[str, Any]
) -> dict[str, Any]:
    snap = Snapshot(params["snapshot"], int(data.get("size", view.size or 0)))
    return {"snapshots": (*view.snapshots, snap)}


def _snapshot_removed(
    view: DiskView, data: Mapping[str, Any], params: Mapping[str, Any]
) -> dict[str, Any]:
    return {"snapshots": tuple(s for s in view.snapshots if s.name != params["snapshot"])}


COMPLETED_CHANGES: dict[str, Changes] = {
    "create": _created,
    "import": _created,
    "flatten": lambda view, data, params: {"backing": None},
    "resize": lambda view, data, params: {"size": data["size"], "resized": True},
    "snapshot": _snapshotted,
    "rollback": lambda view, data, params: {"size": data["size"]},
    "remove-snapshot": _snapshot_removed,
    "attach": lambda view, data, params: {"attachment": Attachment.from_json(data)},
    "detach": lambda view, data, params: {"attachment": None},
    "delete": lambda view, data, params: _DELETED,
}
"""Operations whose ``completed`` event changes fields of the view; the others (export,
direct-snapshot) change only its state and version."""


_DELETED: dict[str, Any] = {
    "format": None,
    "size": None,
    "template": None,
    "backing": None,
    "location": None,
    "backend": None,
    "snapshots": (),
    "resized": False,
    "preallocated": False,
    "attachment": None,
    "encryption": None,
}
