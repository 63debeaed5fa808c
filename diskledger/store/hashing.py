"""The hash chain: each event's hash covers its content and the hash of the event before it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["GENESIS", "canonical_json", "event_hash"]

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
