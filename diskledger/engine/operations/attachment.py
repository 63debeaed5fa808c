"""A domain uses a disk (``attach``) or no longer does (``detach``), and how a disk is described
to libvirt (``describe_disk``).

Attachment is a recorded fact beside the lifecycle state; libvirt is asked about the domain when
it matters (see ``diskledger.engine.attachments``). Recovery settles an attach or detach cut short
by what the domain (the same one, by UUID) shows at the target device.

An encrypted disk's description names a libvirt secret (``<encryption format='luks'>``): attach
defines it, holding the key, before it plugs the disk in; detach, and an attach rolled back,
undefine it once the domain no longer uses the disk. Its UUID follows from the key's reference
(``secret_uuid``), so the ledger records the UUID and never the key. A backend whose encrypted
disks the host decrypts (``encryption.OpensMappings``: dm-crypt on lvm) is described by its
mapping instead: attach opens it with the key, detach and an attach rolled back close it (the
intent records ``mapping``: the backend's name).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any

from diskledger.backends import Backend, DiskSource, SourceKind
from diskledger.engine import encryption
from diskledger.engine.attachments import source_from_json, source_json, uses
from diskledger.engine.decisions import Decision, DomainEvidence, Evidence, Rule
from diskledger.engine.inputs import check_disk, check_name
from diskledger.engine.operations.base import Operation
from diskledger.engine.protocol import Plan, on_live_disk
from diskledger.engine.runtime import Runtime
from diskledger.errors import InvalidInput
from diskledger.hypervisor import DiskDevice, describe, same_source
from diskledger.states import Attachment, DiskView, Encryption, TemplateView
from diskledger.states.streams import disk_stream

__all__ = ["ATTACH", "DETACH", "describe_disk", "secret_uuid"]

_SECRETS = uuid.UUID("6f1c7a52-8d0e-4a8e-9a43-2b7f0c1d5e90")
"""The namespace of the UUIDs of diskledger's libvirt volume secrets."""


class _ProbesTheDomain(Operation):
    host_bound = True

    def domain(self, rt: Runtime, params: Mapping[str, Any]) -> DomainEvidence | None:
        info = rt.hypervisor.find(params["domain"])
        return DomainEvidence(
            domain=params["domain"],
            exists=info is not None,
            active=info is not None and info.active,
            uses_disk=uses(
                info,
                params["domain_uuid"],
                params["target_dev"],
                source_from_json(params["source"]),
            ),
        )


class Attach(_ProbesTheDomain):
    name = "attach"
    while_attached = "a disk is attached to one domain at a time; detach it first"
    rules = (
        # libvirt plugs a disk in, or unplugs it, as one device change: the domain (the same one,
        # by UUID) shows the disk at the target device or it does not. A domain that is gone
        # uses nothing.
        Rule("attach", "the domain uses the disk", Decision.FORWARD, "the disk is plugged in"),
        Rule("attach", "otherwise", Decision.BACK, "the disk was never plugged in"),
    )

    def __call__(
        self,
        rt: Runtime,
        disk: str,
        domain: str,
        *,
        target_dev: str,
        bus: str = "virtio",
        cache: str | None = "none",
        discard: str | None = None,
        disk_unit: int | None = None,
        extra_specs: Mapping[str, object] | None = None,
        op_id: str | None = None,
    ) -> DiskView:
        check_disk(disk)
        check_name(domain, "domain")
        request = {
            "op": "attach",
            "disk": disk,
            "domain": domain,
            "target_dev": target_dev,
            "bus": bus,
            "cache": cache,
            "discard": discard,
            "disk_unit": disk_unit,
            "extra_specs": dict(extra_specs or {}),
        }

        def plan(view: DiskView, op_id: str) -> Plan[DiskView]:
            made = encryption.usable(rt, view)  # a disk whose key is gone is refused here
            device = describe_disk(
                rt,
                view,
                target_dev=target_dev,
                bus=bus,
                cache=cache,
                discard=discard,
                disk_unit=disk_unit,
                extra_specs=extra_specs,
            )
            info = rt.hypervisor.domain(domain)
            plugged = {
                dev for dev, source in info.disks.items() if same_source(source, device.source)
            }
            if plugged - {target_dev}:
                where = ", ".join(sorted(plugged))
                raise InvalidInput(f"domain {domain} has disk {disk} as {where}, not {target_dev}")
            if target_dev in info.disks and target_dev not in plugged:
                raise InvalidInput(f"domain {domain} already has another disk as {target_dev}")
            present = target_dev in plugged
            xml = device.to_xml()
            attachment = Attachment(info.name, info.uuid, target_dev, bus)
            location = view.location
            assert location is not None
            backend = rt.backend_of(view)
            mapped = encryption.mapping_backend(backend, made)

            def attach() -> dict[str, Any]:
                if made is not None and mapped is not None:
                    with encryption.luks(rt, made) as luks:
                        mapped.open_mapping(location, luks)
                elif made is not None:
                    _define_secret(rt, location, made)
                try:
                    if not present:
                        rt.hypervisor.attach(info.name, xml)
                except BaseException:
                    if made is not None and not present:
                        _forget_key(rt, location, mapped)
                    raise
                return {**attachment.to_json(), "added": not present}

            params = _attachment_params(view, attachment, device)
            if mapped is not None:
                params["mapping"] = backend.name
            return Plan(disk_stream(disk), view, backend, op_id, params, attach)

        return on_live_disk(rt, self, request, op_id, plan)

    def undone(self, rt: Runtime, params: Mapping[str, Any]) -> dict[str, Any]:
        # The disk was never plugged in: the secret holding its key, or its mapping, goes again.
        if (mapped := _mapped(rt, params)) is not None:
            return {"mapping_closed": mapped.close_mapping(params["location"])}
        if params.get("secret_uuid") is None:
            return {}
        rt.hypervisor.undefine_volume_secret(params["location"])
        return {"secret_undefined": params["secret_uuid"]}

    def recovered(
        self,
        rt: Runtime,
        backend: Backend,
        params: Mapping[str, Any],
        view: DiskView | TemplateView,
        evidence: Evidence,
    ) -> dict[str, Any]:
        return {**Attachment.from_json(params).to_json(), "added": None}


class Detach(_ProbesTheDomain):
    name = "detach"
    rules = (
        Rule("detach", "the domain uses the disk", Decision.BACK, "the guest still holds the disk"),
        Rule(
            "detach",
            "otherwise",
            Decision.FORWARD,
            "the disk is unplugged, or its domain is gone",
        ),
    )

    def __call__(self, rt: Runtime, disk: str, *, op_id: str | None = None) -> DiskView:
        check_disk(disk)
        request = {"op": "detach", "disk": disk}

        def plan(view: DiskView, op_id: str) -> Plan[DiskView]:
            attachment = view.attachment
            if attachment is None:
                raise InvalidInput(f"disk {disk} is not attached to a domain")
            device = describe_disk(
                rt, view, addresses=False, target_dev=attachment.target_dev, bus=attachment.bus
            )
            info = rt.hypervisor.find(attachment.domain)
            present = uses(info, attachment.domain_uuid, attachment.target_dev, device.source)
            xml = device.to_xml()

            encrypted = view.encryption is not None
            location = view.location
            assert location is not None
            backend = rt.backend_of(view)
            mapped = encryption.mapping_backend(backend, view.encryption)

            def detach() -> dict[str, Any]:
                if present:
                    rt.hypervisor.detach(attachment.domain, xml, attachment.target_dev)
                if encrypted:  # no domain uses the disk now: nothing needs its key
                    _forget_key(rt, location, mapped)
                return {"domain": attachment.domain, "removed": present}

            params = _attachment_params(view, attachment, device)
            if mapped is not None:
                params["mapping"] = backend.name
            return Plan(disk_stream(disk), view, backend, op_id, params, detach)

        return on_live_disk(rt, self, request, op_id, plan, refuse_attached=False)

    def recovered(
        self,
        rt: Runtime,
        backend: Backend,
        params: Mapping[str, Any],
        view: DiskView | TemplateView,
        evidence: Evidence,
    ) -> dict[str, Any]:
        if (mapped := _mapped(rt, params)) is not None:
            mapped.close_mapping(params["location"])
        elif params.get("secret_uuid") is not None:
            rt.hypervisor.undefine_volume_secret(params["location"])
        return {"domain": params["domain"], "removed": None}


def describe_disk(
    rt: Runtime, view: DiskView, *, addresses: bool = True, **choices: Any
) -> DiskDevice:
    """The ``<disk>`` for ``view``; ``addresses=False``: only enough to name it to libvirt
    (an unplug), looked up nowhere."""
    assert view.location and view.format
    backend = rt.backend_of(view)
    mapped = encryption.mapping_backend(backend, view.encryption)
    source = encryption.guest_source(backend, view.location, view.encryption, addresses=addresses)
    if view.preallocated:
        source = dataclasses.replace(source, preallocated=True)
    device = describe(
        source,
        view.format,
        secret_uuid=rt.rbd_secret_uuid,
        backing=_backing_of(rt, view, source),
        encryption_uuid=(
            secret_uuid(view.encryption) if view.encryption and mapped is None else None
        ),
        **choices,
    )
    if addresses and source.user is not None and rt.rbd_secret_uuid is None:
        raise InvalidInput(
            f"qemu reaches the cluster as client.{source.user} with a libvirt secret: run "
            "`diskledger libvirt define-secret` and set DISKLEDGER_RBD_SECRET_UUID"
        )
    return device


def secret_uuid(made: Encryption) -> str:
    """The UUID of the libvirt secret holding the key ``made`` names (a function of the
    reference alone, so that the same key always has the same secret)."""
    return str(uuid.uuid5(_SECRETS, f"{made.provider}:{made.key}"))


def _forget_key(rt: Runtime, location: str, mapped: encryption.OpensMappings | None) -> None:
    """What held an encrypted disk's key for a guest goes: its mapping, or its libvirt secret."""
    if mapped is not None:
        mapped.close_mapping(location)
    else:
        rt.hypervisor.undefine_volume_secret(location)


def _mapped(rt: Runtime, params: Mapping[str, Any]) -> encryption.OpensMappings | None:
    """The backend whose mapping an attach or detach intent says the domain uses, if any."""
    name = params.get("mapping")
    if name is None:
        return None
    backend = rt.backend_named(str(name))
    return backend if isinstance(backend, encryption.OpensMappings) else None


def _define_secret(rt: Runtime, location: str, made: Encryption) -> None:
    keys = encryption.provider(rt, made.provider)
    rt.hypervisor.define_volume_secret(
        location, keys.material(made.key), secret_uuid=secret_uuid(made)
    )


def _backing_of(rt: Runtime, view: DiskView, source: DiskSource) -> tuple[DiskSource, str] | None:
    """The template under a file overlay, with the format its stream recorded: libvirt is
    told the chain instead of probing it, and told not to take the shared template over."""
    if source.kind is not SourceKind.FILE or not view.backing or not view.template:
        return None
    cached = rt.store.template(rt.template_stream(view.template))
    if cached is None or cached.format is None:
        return None
    return DiskSource(SourceKind.FILE, path=view.backing), cached.format


def _attachment_params(
    view: DiskView, attachment: Attachment, device: DiskDevice
) -> dict[str, Any]:
    """An attach or detach intent: the attachment, and the storage recovery looks for in it."""
    params = {
        **attachment.to_json(),
        "source": source_json(device.source),
        "location": view.location,
        "format": view.format,
    }
    if device.encryption_uuid is not None:
        params["secret_uuid"] = device.encryption_uuid
    return params


ATTACH = Attach()
DETACH = Detach()
