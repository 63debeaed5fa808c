"""Reading settings from ``DISKLEDGER_*`` variables, for backends and the engine alike."""

from __future__ import annotations

from collections.abc import Mapping

from diskledger.errors import InvalidInput

__all__ = ["seconds"]


def seconds(
    environ: Mapping[str, str],
    name: str,
    default: float,
    *,
    at_most: float = 3600,
    zero: bool = False,
) -> float:
    """``environ[name]`` as a number of seconds in (0, ``at_most``] (from 0 with ``zero``);
    ``default`` when unset or empty."""
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name}={raw!r} is not a number of seconds") from None
    low_ok = value >= 0 if zero else value > 0
    if not low_ok or value > at_most:
        raise InvalidInput(f"{name}={raw!r} is not between 0 and {at_most:g} seconds")
    return value
