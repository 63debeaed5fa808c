"""Where the engine keeps things, from options or the environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_ROOT", "Config"]

DEFAULT_ROOT = "/var/lib/diskledger"


@dataclass(frozen=True, slots=True)
class Config:
    """``DISKLEDGER_ROOT`` (local artifacts), ``DISKLEDGER_LEDGER`` (a SQLAlchemy URL, default a
    SQLite file under the root), ``DISKLEDGER_BACKEND`` (``raw`` or ``qcow2``),
    ``DISKLEDGER_HOST`` (the template cache's scope and the events' host; default the hostname),
    ``DISKLEDGER_RECOVER`` (``0`` to not recover pending operations when an engine opens).
    """

    root: Path
    ledger: str
    backend: str = "qcow2"
    host: str = ""
    actor: str = "diskledger"
    recover: bool = True
    """Recover operations left pending by dead processes when an engine opens."""

    @classmethod
    def load(
        cls,
        *,
        root: str | os.PathLike[str] | None = None,
        ledger: str | None = None,
        backend: str | None = None,
        actor: str | None = None,
        recover: bool | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> Config:
        root_path = Path(root or environ.get("DISKLEDGER_ROOT") or DEFAULT_ROOT).absolute()
        return cls(
            root=root_path,
            ledger=ledger
            or environ.get("DISKLEDGER_LEDGER")
            or f"sqlite:///{root_path / 'ledger.db'}",
            backend=backend or environ.get("DISKLEDGER_BACKEND") or "qcow2",
            host=environ.get("DISKLEDGER_HOST") or socket.gethostname(),
            actor=actor or environ.get("DISKLEDGER_ACTOR") or "diskledger",
            recover=(
                recover
                if recover is not None
                else environ.get("DISKLEDGER_RECOVER", "1").lower()
                not in ("0", "no", "off", "false")
            ),
        )
