"""The libvirt secret qemu authenticates to shared storage with (Ceph's cephx key).

The key comes from the backend (``Authenticates``: RBD's configured client); libvirt keeps it
private and names it ``client.<user> secret``, as Nova's deployment guides do.
"""

from __future__ import annotations

from diskledger.backends.contract import Authenticates
from diskledger.errors import InvalidInput
from diskledger.hypervisor.libvirt_host import Hypervisor

__all__ = ["define_ceph_secret", "undefine_ceph_secret"]

_NOT_CONFIGURED = (
    "the libvirt ceph secret holds the key of the rbd backend's cephx user: "
    "set DISKLEDGER_BACKEND=rbd, DISKLEDGER_RBD_USER and DISKLEDGER_CEPH_KEYRING"
)


def define_ceph_secret(
    hypervisor: Hypervisor, backend: object, *, secret_uuid: str | None = None
) -> str:
    """Define (or update) the secret holding ``backend``'s client key; its UUID."""
    user, key = _credentials(backend)
    return hypervisor.define_ceph_secret(_usage(user), key, secret_uuid=secret_uuid)


def undefine_ceph_secret(hypervisor: Hypervisor, backend: object) -> str | None:
    """Remove the secret ``define_ceph_secret`` made; its UUID, or None when there was none."""
    user = _user(backend)
    return hypervisor.undefine_secret(_usage(user))


def _user(backend: object) -> str:
    user = backend.client_user if isinstance(backend, Authenticates) else None
    if not user:
        raise InvalidInput(_NOT_CONFIGURED)
    return user


def _credentials(backend: object) -> tuple[str, bytes]:
    credentials = backend.client_credentials() if isinstance(backend, Authenticates) else None
    if credentials is None:
        raise InvalidInput(_NOT_CONFIGURED)
    return credentials


def _usage(user: str) -> str:
    return f"client.{user} secret"
