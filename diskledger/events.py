"""Events: the facts the ledger records.

An event has a stable type name (``disk.create.started``), a schema version for its payload, a JSON
payload (``data``) and metadata saying who recorded it and for which operation. ``NewEvent`` is what
a writer hands to the store; ``RecordedEvent`` is what the store hands back, with the stream
version, the global position, the commit time and the hash that chains it to the event before.

Storage operations follow one protocol (see DESIGN.md): ``<kind>.<op>.started`` names the
parameters and every artifact the operation may create, ``<kind>.<op>.completed`` records what was
observed, ``<kind>.<op>.failed`` records the error and what the compensation removed. Facts that
touch no storage (``disk.template-bound``) are single events. The helpers below build them so that
type names are spelled in one place.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "COMPENSATING",
    "COMPLETED",
    "FAILED",
    "LEASE_RENEWED",
    "NEEDS_OPERATOR",
    "STARTED",
    "TAKEN_OVER",
    "Metadata",
    "NewEvent",
    "Phase",
    "RecordedEvent",
    "intent_params",
    "loads",
    "metadata_op_id",
    "operation_event",
    "split_type",
]

Phase = Literal[
    "started",
    "completed",
    "failed",
    "needs-operator",
    "lease-renewed",
    "taken-over",
    "compensating",
]
STARTED: Final = "started"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
NEEDS_OPERATOR: Final = "needs-operator"
"""Recovery found contradictory evidence: the operation stays pending until a person decides."""
LEASE_RENEWED: Final = "lease-renewed"
"""Ledgers from before members: the writer of a template fetch renewed a per-operation lease."""
TAKEN_OVER: Final = "taken-over"
"""Another member claimed the operation of a fenced one (``{from, from_epoch, by, by_epoch}``):
from here on only it may record the outcome or remove anything."""
COMPENSATING: Final = "compensating"
"""The owner claims its own failed operation before it removes anything: should another member
have taken the operation over meanwhile, the claim fails and nothing is removed."""
_PHASES: Final = frozenset(
    {STARTED, COMPLETED, FAILED, NEEDS_OPERATOR, LEASE_RENEWED, TAKEN_OVER, COMPENSATING}
)

JSON = Mapping[str, Any]

_decode = msgspec.json.Decoder().decode


class _Intent(msgspec.Struct):
    params: dict[str, Any]


_decode_intent = msgspec.json.Decoder(_Intent).decode


class _Operation(msgspec.Struct):
    op_id: str | None = None


_decode_operation = msgspec.json.Decoder(_Operation).decode


def loads(text: str | bytes) -> Any:
    """Decode the JSON text of a payload or metadata, as ``json.loads`` would, several times faster.

    ``msgspec`` builds the same dicts, lists, strings and numbers (integers of any size included);
    what it refuses and ``json.loads`` accepts (``NaN``, ``Infinity``, which ``json.dumps`` writes
    for such floats) goes to ``json.loads``.
    """
    try:
        return _decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def metadata_op_id(text: str | bytes) -> str | None:
    """``Metadata.from_json(loads(text)).op_id``, without decoding the rest of the metadata."""
    try:
        return _decode_operation(text).op_id
    except msgspec.DecodeError:
        return Metadata.from_json(loads(text)).op_id


def intent_params(text: str | bytes) -> Any:
    """``data.get("params", data)`` of a payload's JSON text, without decoding the rest of it
    (an intent's artifacts): half the cost of ``loads`` on a typical intent."""
    try:
        return _decode_intent(text).params
    except msgspec.DecodeError:  # no "params" object (ValidationError is a DecodeError)
        data = loads(text)
        return data.get("params", data)


@dataclass(frozen=True, slots=True)
class Metadata:
    """Who recorded an event, and for which operation.

    ``op_id`` ties the started, completed and failed events of one operation together;
    ``causation`` names the operation that caused this one (recovery acting on a leftover intent).
    """

    op_id: str | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    actor: str = "diskledger"
    causation: str | None = None
    process: str | None = None
    """``<boot id>:<pid>:<start time>``: tells a live writer from a dead one with a reused pid."""

    def to_json(self) -> dict[str, Any]:
        return {
            "op_id": self.op_id,
            "host": self.host,
            "pid": self.pid,
            "actor": self.actor,
            "causation": self.causation,
            "process": self.process,
        }

    @classmethod
    def from_json(cls, raw: JSON) -> Metadata:
        return cls(
            op_id=raw.get("op_id"),
            host=raw.get("host", ""),
            pid=int(raw.get("pid", 0)),
            actor=raw.get("actor", ""),
            causation=raw.get("causation"),
            process=raw.get("process"),
        )


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event not yet recorded: the type, the payload and who is recording it."""

    type: str
    data: JSON
    metadata: Metadata
    schema: int = 1


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the ledger holds it.

    ``version`` counts events within the stream (1, 2, 3, no gaps); ``position`` orders all events
    of the ledger; ``hash`` is SHA-256 over this event's content and ``prev_hash`` (the hash of the
    event at ``position - 1``), so editing, removing or reordering any event breaks the chain.
    """

    position: int
    stream: str
    version: int
    type: str
    schema: int
    data: JSON
    metadata: Metadata
    time: datetime
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "stream": self.stream,
            "version": self.version,
            "type": self.type,
            "schema": self.schema,
            "time": self.time.isoformat(),
            "op_id": self.metadata.op_id,
            "data": dict(self.data),
            "metadata": self.metadata.to_json(),
            "hash": self.hash,
        }


def operation_event(
    kind: str, op: str, phase: Phase, data: JSON, metadata: Metadata, schema: int = 1
) -> NewEvent:
    """Build ``<kind>.<op>.<phase>``; ``metadata.op_id`` must name the operation."""
    if metadata.op_id is None:
        raise ValueError("an operation event needs metadata.op_id")
    return NewEvent(f"{kind}.{op}.{phase}", data, metadata, schema)


def split_type(event_type: str) -> tuple[str, str, Phase | None]:
    """``disk.create.started`` -> ``("disk", "create", "started")``; facts have no phase."""
    kind, _, rest = event_type.partition(".")
    op, _, phase = rest.rpartition(".")
    if op and phase in _PHASES:
        return kind, op, phase  # type: ignore[return-value]
    return kind, rest, None
