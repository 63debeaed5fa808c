"""How to reach a Ceph cluster and which pools to use, from the environment; the cephx key a
hypervisor is given."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from diskledger.backends.rbd.policies import BUSY, TRANSIENT, Policy
from diskledger.backends.settings import seconds
from diskledger.errors import InvalidInput

__all__ = ["CephConfig", "client_key"]


@dataclass(frozen=True, slots=True)
class CephConfig:
    """How to reach the cluster and which pools to use (``from_environ`` reads the environment)."""

    conf: str
    pool: str
    user: str | None = None
    keyring: str | None = None
    snapshot_pool: str | None = None
    """The pool ``direct-snapshot`` clones into (Glance's images pool in OpenStack)."""
    op_timeout: float = 10.0
    connect_timeout: float = 10.0
    retry_budget: float = 30.0
    busy_budget: float = 30.0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> CephConfig:
        """The configuration ``DISKLEDGER_*`` variables describe: ``DISKLEDGER_CEPH_CONF``
        (default ``/etc/ceph/ceph.conf``), ``DISKLEDGER_RBD_POOL`` (default ``rbd``),
        ``DISKLEDGER_RBD_USER`` (the cephx client id, without ``client.``),
        ``DISKLEDGER_CEPH_KEYRING``, ``DISKLEDGER_RBD_SNAPSHOT_POOL`` (where direct snapshots
        go), ``DISKLEDGER_CEPH_OP_TIMEOUT`` (seconds before an unanswered request fails, default
        10), ``DISKLEDGER_CEPH_RETRY_BUDGET`` (seconds of retries for transient and busy errors,
        default 30). A number of seconds that is not one, or not in (0, 3600], is
        ``InvalidInput``."""
        budget = seconds(environ, "DISKLEDGER_CEPH_RETRY_BUDGET", 30.0)
        return cls(
            conf=environ.get("DISKLEDGER_CEPH_CONF") or "/etc/ceph/ceph.conf",
            pool=environ.get("DISKLEDGER_RBD_POOL") or "rbd",
            user=environ.get("DISKLEDGER_RBD_USER") or None,
            keyring=environ.get("DISKLEDGER_CEPH_KEYRING") or None,
            snapshot_pool=environ.get("DISKLEDGER_RBD_SNAPSHOT_POOL") or None,
            op_timeout=seconds(environ, "DISKLEDGER_CEPH_OP_TIMEOUT", 10.0),
            retry_budget=budget,
            busy_budget=budget,
        )

    @property
    def transient(self) -> Policy:
        return Policy("transient", TRANSIENT, self.retry_budget, 0.2, 2.0)

    @property
    def busy(self) -> Policy:
        return Policy("busy", BUSY, self.busy_budget, 0.5, 4.0)


def client_key(config: CephConfig) -> str:
    """The cephx key of ``config.user`` from ``config.keyring`` (base64, as the keyring holds it):
    what a hypervisor is given, in a secret, to reach the cluster as that user."""
    import configparser

    if not config.user or not config.keyring:
        raise InvalidInput(
            "a libvirt secret needs the RBD user and its keyring "
            "(DISKLEDGER_RBD_USER, DISKLEDGER_CEPH_KEYRING)"
        )
    keyring = configparser.ConfigParser(interpolation=None)
    try:
        with open(config.keyring, encoding="utf-8") as handle:
            keyring.read_file(handle)
    except (OSError, configparser.Error) as exc:
        raise InvalidInput(f"cannot read keyring {config.keyring}: {exc}") from exc
    key = keyring.get(f"client.{config.user}", "key", fallback=None)
    if not key:
        raise InvalidInput(f"keyring {config.keyring} holds no key for client.{config.user}")
    return key
