"""What a ``completed`` event records, built in one place for the engine and for recovery."""

from __future__ import annotations

from typing import Any

from diskledger.backends import Observation

__all__ = ["created", "fetched"]


def created(seen: Observation) -> dict[str, Any]:
    """A disk's create: what the published disk looks like."""
    return {
        "format": seen.format,
        "size": seen.size,
        "backing": seen.backing,
        "location": seen.artifact.location,
        "allocated": seen.allocated,
    }


def fetched(fmt: str, seen: Observation) -> dict[str, Any]:
    """A template's fetch: the format it was accepted as and its virtual size."""
    return {
        "format": fmt,
        "virtual_size": seen.size,
        "location": seen.artifact.location,
        "allocated": seen.allocated,
    }
