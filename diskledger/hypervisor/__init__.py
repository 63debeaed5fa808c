"""How hypervisors see disks: the libvirt ``<disk>`` description and a thin libvirt connection.

``device`` turns what the ledger recorded (format, where the disk lives) and what the caller asks
(target, bus, cache, QoS) into a ``DiskDevice`` and its XML; ``libvirt_host`` is the only module
that talks to libvirtd. Neither knows the ledger: the engine joins them.
"""

from __future__ import annotations

from diskledger.hypervisor.device import (
    BUSES,
    CACHE_MODES,
    DISCARD_MODES,
    IOTUNE_SPECS,
    DiskDevice,
    describe,
    disks_in,
    same_source,
)
from diskledger.hypervisor.libvirt_host import DomainInfo, Hypervisor

__all__ = [
    "BUSES",
    "CACHE_MODES",
    "DISCARD_MODES",
    "IOTUNE_SPECS",
    "DiskDevice",
    "DomainInfo",
    "Hypervisor",
    "describe",
    "disks_in",
    "same_source",
]
