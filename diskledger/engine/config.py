"""Where the engine keeps things, from options or the environment."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from diskledger.backends import registry
from diskledger.backends.settings import seconds
from diskledger.engine.inputs import parse_size
from diskledger.engine.members import LeaseSettings
from diskledger.errors import InvalidInput
from diskledger.hypervisor.libvirt_host import DEFAULT_URI
from diskledger.keys import KeyProvider, provider_from_environ

__all__ = ["DEFAULT_ROOT", "Config"]

DEFAULT_ROOT = "/var/lib/diskledger"


@dataclass(frozen=True, slots=True)
class Config:
    """``DISKLEDGER_ROOT`` (local artifacts), ``DISKLEDGER_LEDGER`` (a SQLAlchemy URL, default a
    SQLite file under the root), ``DISKLEDGER_BACKEND`` (``raw``, ``qcow2`` or ``rbd``),
    ``DISKLEDGER_HOST`` (the template cache's scope and the events' host; default the hostname),
    ``DISKLEDGER_RECOVER`` (``0`` to not recover pending operations when an engine opens),
    ``DISKLEDGER_MAX_TEMPLATE_SIZE`` (the virtual size ceiling for templates, default ``16T``),
    ``DISKLEDGER_PREALLOCATE`` (``none``, or ``space``: file disks get their whole virtual size
    allocated when made and grown, as Nova's ``preallocate_images``; their descriptions then use
    native AIO).

    Each backend reads its own settings (``BackendSpec.load_settings``); the configured one's are
    read, and refused when bad, here; another backend a disk's stream names reads them from the
    same ``environ`` when it is first needed. A backend installed as a package may add its own.

    For ``rbd``: ``DISKLEDGER_CEPH_CONF`` (default ``/etc/ceph/ceph.conf``), ``DISKLEDGER_RBD_POOL``
    (default ``rbd``), ``DISKLEDGER_RBD_USER`` (the cephx client id, without ``client.``),
    ``DISKLEDGER_CEPH_KEYRING``, ``DISKLEDGER_RBD_SNAPSHOT_POOL`` (where direct snapshots go),
    ``DISKLEDGER_CEPH_OP_TIMEOUT`` (seconds before an unanswered request fails, default 10),
    ``DISKLEDGER_CEPH_RETRY_BUDGET`` (seconds of retries for transient and busy errors, default 30),
    ``DISKLEDGER_RBD_SECRET_UUID`` (the libvirt secret holding the RBD user's key: disk
    descriptions authenticate with it; ``diskledger libvirt define-secret`` makes it).

    For attached disks: ``DISKLEDGER_LIBVIRT_URI`` (default ``qemu:///system``),
    ``DISKLEDGER_DETACH_TIMEOUT`` (seconds a guest has to release an unplugged disk, default 30).

    For encrypted disks (``--encrypt``, see docs/encryption.md): ``DISKLEDGER_KEY_PROVIDER``
    (``local``), ``DISKLEDGER_KEY_DIR`` (the local provider's root-only directory, default
    ``<root>-keys``, beside the root), ``DISKLEDGER_LUKS_ITER_TIME`` (milliseconds of PBKDF
    work per key slot unlock, default 100; the keys are random, so more buys nothing).

    For a ledger shared by several hosts: ``DISKLEDGER_MEMBERS`` (``1`` to join as a member with
    a lease, ``0`` not to; default: on for PostgreSQL, off for SQLite), and the lease settings
    ``LeaseSettings.from_environ`` reads (``DISKLEDGER_LEASE_TTL`` and friends).
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
    settings: object = None
    """The configured backend's settings, as its spec read them (``CephConfig`` for ``rbd``)."""
    environ: Mapping[str, str] = field(default_factory=dict)
    """The ``DISKLEDGER_*`` variables, for the settings of other backends."""
    libvirt_uri: str = DEFAULT_URI
    rbd_secret_uuid: str | None = None
    detach_timeout: float = 30.0
    members: bool = False
    """Join the ledger as a member (fencing token, heartbeat lease, takeover of dead members)."""
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    keys: KeyProvider | None = None
    """Where the keys of encrypted disks live (None: the local directory ``<root>-keys``)."""
    luks_iter_time_ms: int = 100

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
        """The configuration ``environ``'s ``DISKLEDGER_*`` variables describe, the keywords
        given taking precedence (see the class docstring for each variable).

        Args:
            root: Where local artifacts live (default ``DISKLEDGER_ROOT``, else
                ``/var/lib/diskledger``).
            ledger: A SQLAlchemy URL (default ``DISKLEDGER_LEDGER``, else ``ledger.db`` under
                the root).
            backend: ``raw``, ``qcow2``, ``rbd``... (default ``DISKLEDGER_BACKEND``, else qcow2).
            actor: Who the events name as having acted (default ``DISKLEDGER_ACTOR``).
            recover: Recover pending operations when an engine opens (default
                ``DISKLEDGER_RECOVER``, else true).
            environ: Where the variables are read (``{}``: defaults and keywords only).

        Returns:
            The configuration; nothing is opened or created yet.

        Raises:
            UnknownBackend: No backend called ``backend``.
            InvalidInput: A variable is malformed (a size, a flag, a UUID, seconds, a key
                directory, the backend's own settings).
        """
        root_path = Path(root or environ.get("DISKLEDGER_ROOT") or DEFAULT_ROOT).absolute()
        backend = backend or environ.get("DISKLEDGER_BACKEND") or "qcow2"
        ours = {k: v for k, v in environ.items() if k.startswith("DISKLEDGER_")}
        ledger = (
            ledger or environ.get("DISKLEDGER_LEDGER") or f"sqlite:///{root_path / 'ledger.db'}"
        )
        return cls(
            root=root_path,
            ledger=ledger,
            backend=backend,
            settings=registry.spec(backend).load_settings(ours),
            environ=ours,
            host=environ.get("DISKLEDGER_HOST") or socket.gethostname(),
            actor=actor or environ.get("DISKLEDGER_ACTOR") or "diskledger",
            max_template_size=parse_size(
                environ.get("DISKLEDGER_MAX_TEMPLATE_SIZE", "16T"),
                what="DISKLEDGER_MAX_TEMPLATE_SIZE",
            ),
            libvirt_uri=environ.get("DISKLEDGER_LIBVIRT_URI") or DEFAULT_URI,
            rbd_secret_uuid=_uuid(environ, "DISKLEDGER_RBD_SECRET_UUID"),
            detach_timeout=seconds(environ, "DISKLEDGER_DETACH_TIMEOUT", 30.0),
            recover=(
                recover
                if recover is not None
                else _flag(environ, "DISKLEDGER_RECOVER", default=True)
            ),
            members=_flag(environ, "DISKLEDGER_MEMBERS", default=ledger.startswith("postgresql")),
            lease=LeaseSettings.from_environ(environ),
            keys=provider_from_environ(environ, root_path),
            luks_iter_time_ms=_milliseconds(environ, "DISKLEDGER_LUKS_ITER_TIME", 100),
        )


def _milliseconds(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 60_000:
        raise InvalidInput(f"{name}={raw!r}: a whole number of milliseconds from 1 to 60000")
    return int(raw)


def _flag(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "yes", "on", "true"):
        return True
    if raw.lower() in ("0", "no", "off", "false"):
        return False
    raise InvalidInput(f"{name}={raw!r}: use 1 or 0")


def _uuid(environ: Mapping[str, str], name: str) -> str | None:
    raw = environ.get(name)
    if not raw:
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidInput(f"{name}={raw!r} is not a UUID") from None
