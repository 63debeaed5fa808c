"""The hash chain: each event's hash covers its content and the hash of the event before it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from diskledger.events import RecordedEvent

__all__ = ["GENESIS", "canonical_json", "chain_problem", "event_hash"]

GENESIS: Final = "0" * 64
"""The ``prev_hash`` of the first event in a ledger."""


def canonical_json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(
    prev_hash: str,
    position: int,
    stream: str,
    version: int,
    event_type: str,
    schema: int,
    data_json: str,
    metadata_json: str,
    recorded_at: str,
) -> str:
    """SHA-256 over the event's fields in a fixed order. The JSON arguments are canonical."""
    material = "\x1f".join(
        (
            prev_hash,
            str(position),
            stream,
            str(version),
            event_type,
            str(schema),
            data_json,
            metadata_json,
            recorded_at,
        )
    )
    return hashlib.sha256(material.encode()).hexdigest()


def chain_problem(event: RecordedEvent, expected: int, prev_hash: str) -> str | None:
    """Why ``event`` is not the next link after position ``expected - 1`` whose hash is
    ``prev_hash`` (None when it is): what ``verify`` reports and the change feed refuses."""
    if event.position != expected:
        return f"expected position {expected}, found {event.position} (an event is missing)"
    if event.prev_hash != prev_hash:
        return "prev_hash does not match the event before it (removed, reordered or forged)"
    digest = event_hash(
        event.prev_hash,
        event.position,
        event.stream,
        event.version,
        event.type,
        event.schema,
        canonical_json(event.data),
        canonical_json(event.metadata.to_json()),
        event.time.isoformat(timespec="microseconds"),
    )
    if digest != event.hash:
        return "the event's content does not match its hash (edited)"
    return None
