"""Reading settings from ``DISKLEDGER_*`` variables, for backends and the engine alike."""

from __future__ import annotations

from collections.abc import Mapping

from diskledger.errors import InvalidInput

__all__ = ["seconds"]


def seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """``environ[name]`` as a number of seconds in (0, 3600]; ``default`` when unset or empty."""
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise InvalidInput(f"{name}={raw!r} is not between 0 and 3600 seconds")
    return value
