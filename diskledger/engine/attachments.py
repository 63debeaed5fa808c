"""What may be done to a disk a domain uses, and how an attachment is told apart on a domain.

Attachment is a fact in the ledger (``disk.attach`` / ``disk.detach``, naming the domain by name
and UUID and the target device), so the audit trail says which guest used which disk when, and
a disk stays protected even while libvirt cannot be asked. Whether that domain is running *now*
is asked of libvirt when it matters: a resize goes through qemu (``blockResize``) only while the
guest runs, and recovery probes the domain to settle an attach or detach cut short.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from diskledger.backends import Backend, Capability, DiskSource, SourceKind
from diskledger.errors import DiskAttached
from diskledger.hypervisor import DomainInfo, same_source
from diskledger.states import DiskView

__all__ = [
    "REFUSED_WHILE_ATTACHED",
    "refuse_while_attached",
    "source_from_json",
    "source_json",
    "uses",
]

SNAPSHOTS_IN_USE: Final = frozenset({"snapshot", "remove-snapshot", "direct-snapshot"})
"""What a backend with ``Capability.SNAPSHOT_IN_USE`` may do while a guest writes the disk."""

REFUSED_WHILE_ATTACHED: Final[Mapping[str, str]] = {
    "attach": "a disk is attached to one domain at a time; detach it first",
    "delete": "detach it first",
    "rollback": "reverting it would change the data under the running guest; detach it first",
    "export": (
        "a copy of a disk the guest is writing is not consistent; detach it first "
        "(on rbd, direct-snapshot copies it crash-consistently)"
    ),
    "flatten": "detach it first",
    "snapshot": (
        "this backend cannot snapshot a disk a guest is writing (a qcow2 internal snapshot "
        "needs the whole domain's state, a raw copy would be torn); detach it first, or "
        "snapshot the domain through libvirt"
    ),
    "remove-snapshot": "qemu holds the image open; detach it first",
    "direct-snapshot": "this backend cannot copy a disk a guest is writing; detach it first",
}
"""Why each operation waits for a detach. ``resize`` is absent: it goes through the guest."""


def refuse_while_attached(view: DiskView, op: str, backend: Backend) -> None:
    """Raise ``DiskAttached`` when ``op`` must not run on ``view`` while a domain uses it."""
    attachment = view.attachment
    if attachment is None or op not in REFUSED_WHILE_ATTACHED:
        return
    if op in SNAPSHOTS_IN_USE and Capability.SNAPSHOT_IN_USE in backend.capabilities:
        return
    raise DiskAttached(
        view.disk,
        attachment.domain,
        attachment.target_dev,
        f"{op} refused: {REFUSED_WHILE_ATTACHED[op]}",
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
