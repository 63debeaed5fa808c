"""Where the engine keeps things, from options or the environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from diskledger.engine.inputs import parse_size

__all__ = ["DEFAULT_ROOT", "Config"]

DEFAULT_ROOT = "/var/lib/diskledger"


@dataclass(frozen=True, slots=True)
class Config:
    """``DISKLEDGER_ROOT`` (local artifacts), ``DISKLEDGER_LEDGER`` (a SQLAlchemy URL, default a
    SQLite file under the root), ``DISKLEDGER_BACKEND`` (``raw`` or ``qcow2``),
    ``DISKLEDGER_HOST`` (the template cache's scope and the events' host; default the hostname),
    ``DISKLEDGER_RECOVER`` (``0`` to not recover pending operations when an engine opens),
    ``DISKLEDGER_MAX_TEMPLATE_SIZE`` (the virtual size ceiling for templates, default ``16T``).
    """

    root: Path
    ledger: str
    backend: str = "qcow2"
    host: str = ""
    actor: str = "diskledger"
    recover: bool = True
    """Recover operations left pending by dead processes when an engine opens."""
    max_template_size: int = 16 << 40
    """The largest virtual size a template may claim (a tiny file claiming exabytes is refused)."""

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
            max_template_size=parse_size(
                environ.get("DISKLEDGER_MAX_TEMPLATE_SIZE", "16T"),
                what="DISKLEDGER_MAX_TEMPLATE_SIZE",
            ),
            recover=(
                recover
                if recover is not None
                else environ.get("DISKLEDGER_RECOVER", "1").lower()
                not in ("0", "no", "off", "false")
            ),
        )
