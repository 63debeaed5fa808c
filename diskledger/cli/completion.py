"""Shell completion (placeholder until implemented)."""

from __future__ import annotations

__all__ = ["candidates", "script"]


def script(shell: str) -> str:
    raise NotImplementedError(shell)


def candidates(kind: str, *, disk: str | None, root: str | None, ledger: str | None) -> list[str]:
    raise NotImplementedError(kind)
