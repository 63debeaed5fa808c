"""``verify``: does the ledger hold together, and does storage hold exactly what it says?

Four checks, each reported on its own:

- the hash chain: positions 1..head with no gap, each event's ``prev_hash`` the hash before it, each
  hash recomputed from the event; the first bad position is named;
- the read models: every stream folded from the log equals the stored view, and the pending index
  holds exactly the operations the fold leaves pending;
- orphans: files under the root that no live artifact of the ledger names (the ledger's own
  database files aside; artifacts named by an operation still pending are not orphans, nor
  what a backend set aside for a disk with an operation pending: ``SetAsideVolumes``);
- drift: live artifacts that are missing, or whose size, format or backing file differ from what the
  ledger recorded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diskledger.backends import Artifact, ArtifactKind, Capability, Observation, SetAsideVolumes
from diskledger.engine import encryption
from diskledger.engine.attachments import uses
from diskledger.engine.runtime import Runtime
from diskledger.errors import HypervisorError, IllegalTransition, UnsafeKeyStore
from diskledger.events import metadata_op_id
from diskledger.states import (
    DiskState,
    DiskView,
    MemberState,
    MemberView,
    TemplateState,
    TemplateView,
)
from diskledger.states.replay import Replay
from diskledger.store import GENESIS
from diskledger.store.contract import VerifyRow
from diskledger.store.hashing import event_hash

__all__ = ["VerifyReport", "verify"]

AnyView = DiskView | TemplateView | MemberView

_LEDGER_FILES = (
    "ledger.db",
    "ledger.db-wal",
    "ledger.db-shm",
    "ledger.db-journal",
    "ledger.db-writer",  # store/writer.py
)


@dataclass(slots=True)
class VerifyReport:
    """What ``Engine.verify`` found; ``ok`` when nothing is wrong."""

    events: int = 0
    head_hash: str | None = None
    """The last event's hash: kept elsewhere, it proves later that the whole chain was not
    rewritten from the first event."""
    chain_error: str | None = None
    first_bad_position: int | None = None
    model_mismatches: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    stale_attachments: list[dict[str, Any]] = field(default_factory=list)
    """Disks the ledger says a domain uses, where libvirt shows no such use (the host crashed
    and took its transient domains, the domain was undefined, the disk unplugged by hand)."""
    attachments_unchecked: str | None = None
    """Why attachments could not be checked (libvirt unreachable); not a failure by itself."""
    keys: list[dict[str, str]] = field(default_factory=list)
    """Encrypted disks whose key is gone, keys nothing names, a key directory not to be trusted
    (each ``{disk and/or key, problem}``; never a key's material)."""

    @property
    def ok(self) -> bool:
        """No broken chain, model mismatch, orphan, drift, stale attachment or key problem."""
        return (
            self.chain_error is None
            and not self.model_mismatches
            and not self.orphans
            and not self.drift
            and not self.stale_attachments
            and not self.keys
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "chain": {
                "ok": self.chain_error is None,
                "first_bad_position": self.first_bad_position,
                "head_hash": self.head_hash,
                "error": self.chain_error,
            },
            "read_models": {"ok": not self.model_mismatches, "mismatches": self.model_mismatches},
            "orphans": self.orphans,
            "drift": self.drift,
            "attachments": {
                "stale": self.stale_attachments,
                "unchecked": self.attachments_unchecked,
            },
            "keys": self.keys,
        }


def verify(rt: Runtime) -> VerifyReport:
    report = VerifyReport()
    views = _check_chain_and_fold(rt, report)
    _check_read_models(rt, views, report)
    _check_storage(rt, report)
    _check_attachments(rt, report)
    _check_keys(rt, report)
    return report


def _check_keys(rt: Runtime, report: VerifyReport) -> None:
    try:
        report.keys = encryption.key_problems(rt)
    except UnsafeKeyStore as exc:
        report.keys = [{"problem": f"the key directory cannot be trusted: {exc}"}]


def _check_chain_and_fold(rt: Runtime, report: VerifyReport) -> dict[str, AnyView]:
    replay = Replay()
    prev_hash, expected = GENESIS, 1
    for row in rt.store.read_for_verify(batch=10_000):
        position, stream, event_type, data, op_id = row[:5]
        report.events += 1
        if report.chain_error is None:
            problem = _chain_problem(row, expected, prev_hash)
            if problem:
                report.chain_error, report.first_bad_position = problem, position
        prev_hash, expected = row[10], position + 1
        try:
            replay.apply(stream, event_type, data, op_id)
        except IllegalTransition as exc:
            report.model_mismatches.append(f"position {position}: {exc}")
    report.head_hash = prev_hash if report.events else None
    head = rt.store.head()
    if report.chain_error is None and head != expected - 1:
        report.chain_error = f"the ledger head is at {head} but the last event is {expected - 1}"
        report.first_bad_position = expected
    return replay.views()


def _chain_problem(row: VerifyRow, expected: int, prev_hash: str) -> str | None:
    """``chain_problem`` over the stored text itself, which is what the hash was computed over;
    and the ``op_id`` column the fold reads must be the one the (hashed) metadata names."""
    position, stream, event_type, data, op_id, version, schema, metadata, recorded_at = row[:9]
    event_prev_hash, digest = row[9], row[10]
    if position != expected:
        return f"expected position {expected}, found {position} (an event is missing)"
    if event_prev_hash != prev_hash:
        return "prev_hash does not match the event before it (removed, reordered or forged)"
    computed = event_hash(
        event_prev_hash,
        position,
        stream,
        version,
        event_type,
        schema,
        data,
        metadata,
        recorded_at,
    )
    if computed != digest:
        return "the event's content does not match its hash (edited)"
    if op_id != metadata_op_id(metadata):
        return "its op_id column does not match its metadata (edited)"
    return None


def _check_read_models(rt: Runtime, views: dict[str, AnyView], report: VerifyReport) -> None:
    stored_disks = {f"disk:{d.disk}": d for d in rt.store.disks()}
    stored_members = {f"member:{m.member}": m.view for m in rt.store.members()}
    for stream, view in views.items():
        stored: AnyView | None
        if isinstance(view, DiskView):
            stored = stored_disks.pop(stream, None)
        elif isinstance(view, MemberView):
            stored = stored_members.pop(stream, None)
        else:
            stored = rt.store.template(stream)
        if stored != view:
            report.model_mismatches.append(f"{stream}: the stored view differs from the log")
    report.model_mismatches.extend(
        f"{s}: a stored view without events" for s in (*stored_disks, *stored_members)
    )
    pending = {v.pending.op_id for v in views.values() if v.pending is not None}
    indexed = {entry.operation.op_id for entry in rt.store.pending()}
    if pending != indexed:
        report.model_mismatches.append(
            f"the pending index {sorted(indexed)} differs from the log's {sorted(pending)}"
        )


def _check_storage(rt: Runtime, report: VerifyReport) -> None:
    root = Path(rt.templates.root)
    owned: set[str] = set()
    for entry in rt.store.pending():
        owned.update(a["location"] for a in entry.operation.artifacts)
    busy = set(owned)  # what operations still pending may work on: their artifacts, disks
    for disk in rt.store.disks():
        if disk.pending and disk.location:
            busy.add(disk.location)
        if disk.state in (DiskState.ABSENT, DiskState.TEMPLATE_CACHED) or disk.pending:
            if disk.location:
                owned.add(disk.location)
                owned.update(_files(rt, disk))
            continue
        owned.add(disk.location or "")
        owned.update(_files(rt, disk))
        _check_disk(rt, disk, report)
    for template in rt.store.templates():
        if template.state is TemplateState.CACHED and template.location:
            owned.add(template.location)
            if template.pending is None:  # a removal in flight may have set it aside already
                _check_template(rt, template, report)
    fence_marks = _fence_marks(rt)
    for path in _walk(root):
        if path in owned or os.path.basename(path) in _LEDGER_FILES:
            continue
        if path.rpartition(".fenced-")[2] in fence_marks:
            continue  # a taker set a fenced member's temporary aside; it stays as the fence
        if any(os.path.lexists(f"{path}.fenced-{epoch}") for epoch in fence_marks):
            continue  # written by a fenced member after the fence; its publish is refused
        report.orphans.append(path)
    _check_inventory(rt, owned, busy, report)


def _fence_marks(rt: Runtime) -> set[str]:
    """The suffixes of temporaries set aside when a member was fenced (its epoch): on storage
    without a fence of its own they keep its publishing renames failing (``SetsAside``)."""
    return {
        str(m.epoch)
        for m in rt.store.members()
        if m.view.state is MemberState.FENCED and m.epoch is not None
    }


def _check_inventory(rt: Runtime, owned: set[str], busy: set[str], report: VerifyReport) -> None:
    """Storage outside the root (an RBD pool, a volume group): every image must be one the
    ledger names; an image's snapshots are checked with its disk (drift) or belong to its
    template. A volume set aside for a disk (``SetAsideVolumes``) is its pending operation's
    while the disk has one (a delete killed while clearing: the disk is gone or going, recovery
    finishes it), and an orphan once nothing pending will remove it."""
    backend = rt.backend
    sets_aside = backend if isinstance(backend, SetAsideVolumes) else None
    for artifact in backend.inventory():
        if artifact.location in owned:
            continue
        if sets_aside is not None and sets_aside.set_aside_from(artifact) in busy:
            continue
        where = artifact.location + (f"@{artifact.name}" if artifact.name else "")
        report.orphans.append(where)


def _check_attachments(rt: Runtime, report: VerifyReport) -> None:
    """Every recorded attachment against libvirt: the same domain (by UUID) must show the disk
    at the recorded target (in its running guest, or its stored definition when shut off)."""
    for disk in rt.store.disks():
        attachment = disk.attachment
        if attachment is None or disk.pending is not None or not disk.location:
            continue
        try:
            info = rt.hypervisor.find(attachment.domain)
        except HypervisorError as exc:
            report.attachments_unchecked = str(exc)
            return
        source = encryption.guest_source(
            rt.backend_of(disk), disk.location, disk.encryption, addresses=False
        )
        if uses(info, attachment.domain_uuid, attachment.target_dev, source):
            continue
        if info is None:
            problem = "the domain no longer exists"
        elif info.uuid != attachment.domain_uuid:
            problem = f"the domain of that name is another one (uuid {info.uuid})"
        else:
            problem = f"the domain has no {attachment.target_dev} on this disk"
        report.stale_attachments.append(
            {
                "disk": disk.disk,
                "domain": attachment.domain,
                "target_dev": attachment.target_dev,
                "problem": f"{problem}; `diskledger disk detach {disk.disk}` records that",
            }
        )


def _files(rt: Runtime, disk: DiskView) -> Iterable[str]:
    if not disk.location or not disk.format:
        return ()
    parts = rt.backend_of(disk).disk_artifacts(disk.location, disk.snapshot_names)
    return (a.location for a in parts if a.kind is ArtifactKind.FILE)


def _check_disk(rt: Runtime, disk: DiskView, report: VerifyReport) -> None:
    assert disk.location and disk.format
    backend = rt.backend_of(disk)
    parts = backend.disk_artifacts(disk.location, disk.snapshot_names)
    seen = backend.probe(parts)
    whole = seen[0]
    if not whole.exists:
        _drift(report, disk.disk, whole.artifact, "missing")
        return
    for problem, differs in (
        (f"format {whole.format} recorded {disk.format}", whole.format != disk.format),
        (f"size {whole.size} recorded {disk.size}", whole.size != disk.size),
        (f"backing {whole.backing} recorded {disk.backing}", whole.backing != disk.backing),
    ):
        if differs:
            _drift(report, disk.disk, whole.artifact, problem)
    for snapshot in seen[1:]:
        if not snapshot.exists:
            _drift(report, disk.disk, snapshot.artifact, "snapshot missing")
    if len(whole.snapshots) > len(disk.snapshots) and (
        Capability.INTERNAL_SNAPSHOTS in backend.capabilities
    ):
        extra = sorted(set(whole.snapshots) - set(disk.snapshot_names))
        _drift(report, disk.disk, whole.artifact, f"snapshots the ledger does not know: {extra}")


def _check_template(rt: Runtime, template: TemplateView, report: VerifyReport) -> None:
    assert template.format and template.location
    seen: Observation = rt.templates.observe(template.template, template.format)
    if not seen.exists:
        _drift(report, f"template {template.template}", seen.artifact, "missing")
    elif seen.size != template.virtual_size:
        problem = f"virtual size {seen.size} recorded {template.virtual_size}"
        _drift(report, f"template {template.template}", seen.artifact, problem)


def _drift(report: VerifyReport, owner: str, artifact: Artifact, problem: str) -> None:
    report.drift.append({"owner": owner, "artifact": artifact.to_json(), "problem": problem})


def _walk(root: Path) -> Iterable[str]:
    for directory, _, files in os.walk(root):
        for name in files:
            yield os.path.join(directory, name)
