"""What every operation declares, beside the code that plans and runs it.

An operation is one object (a subclass of ``Operation``, instantiated once in its family's
module and listed in ``diskledger.engine.operations.REGISTRY``). Calling it is the engine API
(``CREATE(rt, "vm-1/root", template="cirros")``); its class attributes and methods are what the
rest of the engine asks of it:

- ``name``: the operation in event types (``disk.<name>.started``) and in the transition table;
- ``while_attached``: why it must wait for a detach, or None when it may run on an attached disk;
  ``in_use_snapshot`` lets it run anyway on a backend with ``Capability.SNAPSHOT_IN_USE``;
- ``rules``: its recovery decision table (first match wins);
- ``parts``: what of the disk recovery probes beside the intent's named artifacts (an in-place
  change leaves no new name to look for);
- ``finish``: how recovery runs an idempotent in-place effect again to the end;
- ``undone``: what goes beside the named artifacts when the operation is rolled back (the key
  of an encrypted create or import, a libvirt secret an attach defined); idempotent;
- ``recovered``: what its ``completed`` event records when recovery rolls it forward (observed
  again, since the writer died before it could say);
- ``domain``: for attach and detach, what libvirt shows of the domain;
- ``publishes``: its effect makes its result visible by renaming op-unique temporaries into place
  (a takeover on storage without a fence sets those temporaries aside, so that a zombie's
  publishing rename fails); the others change storage in place;
- ``host_bound``: only the host that ran it can probe it (libvirt there), so another host's
  takeover leaves it to an operator;
- ``opens_disk``: qemu-img must open an encrypted disk's data for it (with the key).

How it plans (its intent's params and artifacts) and what it observes (its ``completed`` data)
are in its ``__call__``; ``diskledger.engine.protocol`` runs intent, effect and outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from diskledger.backends import Artifact, Backend
from diskledger.engine.decisions import DomainEvidence, Evidence, Rule
from diskledger.engine.runtime import Runtime
from diskledger.states import DiskView, TemplateView
from diskledger.states.streams import DISK

__all__ = ["Operation"]


class Operation:
    name: ClassVar[str]
    kind: ClassVar[str] = DISK
    """The stream kind it changes (``disk`` or ``template``)."""
    while_attached: ClassVar[str | None] = None
    in_use_snapshot: ClassVar[bool] = False
    rules: ClassVar[tuple[Rule, ...]] = ()
    publishes: ClassVar[bool] = False
    host_bound: ClassVar[bool] = False
    opens_disk: ClassVar[bool] = False
    """Its effect (and recovery's finish or removal) opens the disk's data with qemu-img, so an
    encrypted disk's backend gets its key (``encryption.keyed``)."""

    def parts(self, backend: Backend, params: Mapping[str, Any]) -> tuple[Artifact, ...]:
        return ()

    def finish(self, rt: Runtime, backend: Backend, params: Mapping[str, Any], op_id: str) -> None:
        raise AssertionError(f"no way to finish {self.name}")

    def undone(self, rt: Runtime, params: Mapping[str, Any]) -> dict[str, Any]:
        """Called when the operation is rolled back, after its named artifacts were removed;
        what its ``failed`` event records of it."""
        return {}

    def recovered(
        self,
        rt: Runtime,
        backend: Backend,
        params: Mapping[str, Any],
        view: DiskView | TemplateView,
        evidence: Evidence,
    ) -> dict[str, Any]:
        return {}

    def domain(self, rt: Runtime, params: Mapping[str, Any]) -> DomainEvidence | None:
        return None

    def __repr__(self) -> str:
        return f"<operation {self.kind}.{self.name}>"


def disk_parts(
    operation: Operation, backend: Backend, params: Mapping[str, Any]
) -> tuple[Artifact, ...]:
    """``Operation.parts`` of an in-place change: the disk itself (``parts = disk_parts``)."""
    location = params.get("location")
    return backend.disk_artifacts(location, ()) if location is not None else ()


def observed_size(
    operation: Operation,
    rt: Runtime,
    backend: Backend,
    params: Mapping[str, Any],
    view: DiskView | TemplateView,
    evidence: Evidence,
) -> dict[str, Any]:
    """``Operation.recovered`` of an in-place change of size or data: the disk's size now
    (``recovered = observed_size``)."""
    (disk,) = backend.probe(backend.disk_artifacts(params["location"], ()))
    return {"size": disk.size}
