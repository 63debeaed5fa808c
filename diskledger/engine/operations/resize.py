"""Growing a disk (``resize``): offline on storage, or through the running guest's qemu.

Disks never shrink; asking for the size a disk has changes nothing and records nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diskledger.backends import Capability, ChecksCapacity
from diskledger.engine import encryption
from diskledger.engine.attachments import uses
from diskledger.engine.decisions import Decision, Rule
from diskledger.engine.inputs import check_disk, human_size, parse_size
from diskledger.engine.operations.base import Operation, disk_parts, observed_size
from diskledger.engine.protocol import Plan, on_live_disk
from diskledger.engine.runtime import Runtime
from diskledger.errors import DiskAttached, InvalidSize, Unsupported
from diskledger.states import DiskView
from diskledger.states.streams import disk_stream

if TYPE_CHECKING:
    from diskledger.hypervisor import DomainInfo

__all__ = ["RESIZE", "running_with"]


class Resize(Operation):
    name = "resize"
    opens_disk = True
    rules = (
        # qemu-img resize changes the size in one metadata update.
        Rule("resize", "disk at the new size", Decision.FORWARD, "the disk has the size asked for"),
        Rule("resize", "disk at the old size", Decision.BACK, "the disk was not resized"),
        Rule(
            "resize",
            "otherwise",
            Decision.OPERATOR,
            "the disk is missing or at a size nobody asked for",
        ),
    )

    def __call__(
        self, rt: Runtime, disk: str, size: int | str, *, op_id: str | None = None
    ) -> DiskView:
        check_disk(disk)
        wanted = parse_size(size)
        request = {"op": "resize", "disk": disk, "size": wanted}

        def plan(view: DiskView, op_id: str) -> Plan[DiskView] | DiskView:
            assert view.size is not None and view.location and view.format
            if wanted < view.size:
                raise InvalidSize(
                    f"disk {disk} is {human_size(view.size)}; disks never shrink (asked for "
                    f"{human_size(wanted)}): give {human_size(view.size)} or more"
                )
            if wanted == view.size:
                return view
            location, fmt = view.location, view.format
            backend = rt.backend_of(view)
            if Capability.FIXED_SIZE in backend.capabilities:  # refused before the intent
                raise Unsupported(
                    disk, backend.name, "resize", "its disks keep the size they were made with"
                )
            params: dict[str, Any] = {
                "size": wanted,
                "previous_size": view.size,
                "location": location,
                "format": fmt,
            }
            live = running_with(rt, view)
            if isinstance(backend, ChecksCapacity):
                backend.check_capacity(wanted, grow=location)  # refused before the intent
            if live is None:
                made = encryption.usable(rt, view)

                def resize() -> dict[str, Any]:
                    with encryption.keyed(rt, made, backend) as keyed:
                        return {"size": keyed.resize(location, fmt, wanted).size}

            else:
                # qemu holds the image: only it may change the size, and then the guest sees it.
                domain, target_dev = live
                params["live"] = {"domain": domain.name, "target_dev": target_dev}

                def resize() -> dict[str, Any]:
                    # Through the domain checked above: the same one or an error, one lookup.
                    return {"size": rt.hypervisor.block_resize(domain, target_dev, wanted)}

            # Through a guest, qemu flushes as the disk's cache mode says: the outcome is synced.
            return Plan(
                disk_stream(disk), view, backend, op_id, params, resize, durable_effect=live is None
            )

        return on_live_disk(rt, self, request, op_id, plan)

    parts = disk_parts

    recovered = observed_size


def running_with(rt: Runtime, view: DiskView) -> tuple[DomainInfo, str] | None:
    """(domain, target device) when a running domain uses the disk now; None when no domain
    does (the disk may then be changed offline). Raises when libvirt cannot be asked."""
    attachment = view.attachment
    if attachment is None:
        return None
    assert view.location
    info = rt.hypervisor.find(attachment.domain)
    if info is None or not info.active:
        return None
    source = encryption.guest_source(
        rt.backend_of(view), view.location, view.encryption, addresses=False
    )
    if not uses(info, attachment.domain_uuid, attachment.target_dev, source):
        raise DiskAttached(
            view.disk,
            attachment.domain,
            attachment.target_dev,
            "the domain runs but no longer shows the disk there; detach it to record that",
        )
    return info, attachment.target_dev


RESIZE = Resize()
