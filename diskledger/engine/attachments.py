"""What may be done to a disk a domain uses, and how an attachment is told apart on a domain.

Attachment is a fact in the ledger (``disk.attach`` / ``disk.detach``, naming the domain by name
and UUID and the target device), so the audit trail says which guest used which disk when, and
a disk stays protected even while libvirt cannot be asked. Whether that domain is running *now*
is asked of libvirt when it matters: a resize goes through qemu (``blockResize``) only while the
guest runs, and recovery probes the domain to settle an attach or detach cut short.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diskledger.backends import Backend, Capability, DiskSource, SourceKind
from diskledger.engine.operations.base import Operation
from diskledger.errors import DiskAttached
from diskledger.hypervisor import DomainInfo, same_source
from diskledger.states import DiskView

__all__ = [
    "refuse_while_attached",
    "source_from_json",
    "source_json",
    "uses",
]


def refuse_while_attached(view: DiskView, operation: Operation, backend: Backend) -> None:
    """Raise ``DiskAttached`` when ``operation`` must not run on ``view`` while a domain uses it
    (``Operation.while_attached`` says why)."""
    attachment = view.attachment
    if attachment is None or operation.while_attached is None:
        return
    if operation.in_use_snapshot and Capability.SNAPSHOT_IN_USE in backend.capabilities:
        return
    raise DiskAttached(
        view.disk,
        attachment.domain,
        attachment.target_dev,
        f"{operation.name} refused: {operation.while_attached}",
    )


def uses(info: DomainInfo | None, domain_uuid: str, target_dev: str, source: DiskSource) -> bool:
    """Whether the domain (the same one, by UUID) has the disk at ``target_dev``."""
    if info is None or info.uuid != domain_uuid:
        return False
    seen = info.disks.get(target_dev)
    return seen is not None and same_source(seen, source)


def source_json(source: DiskSource) -> dict[str, Any]:
    """What identifies a disk's storage, as an intent records it."""
    return {
        "kind": source.kind.value,
        "path": source.path,
        "protocol": source.protocol,
        "name": source.name,
    }


def source_from_json(raw: Mapping[str, Any]) -> DiskSource:
    return DiskSource(
        SourceKind(raw["kind"]),
        path=raw.get("path"),
        protocol=raw.get("protocol"),
        name=raw.get("name"),
    )
