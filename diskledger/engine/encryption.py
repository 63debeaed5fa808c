"""Encrypted disks in the engine: keys made before the intent, destroyed after the data, and the
sweep for keys no intent ever named.

The order is what makes a SIGKILL anywhere safe (docs/encryption.md):

1. ``new_key``: the provider is checked, then the key is made and held by this process; a crash
   here (``after-key-created``) leaves a key no intent names, which the next ``recover`` finds
   unheld and unnamed and destroys (``sweep``);
2. the intent records ``params.encryption`` (format, provider, the key's *reference*);
3. the key is destroyed only once the data it protects is gone (``destroy_key``, reached by a
   delete's effect or finish, and by the undoing of a create or import), before the outcome is
   recorded: until then the intent is pending, and recovery runs the idempotent removal and
   destruction again (``before-key-destroyed`` is the point between the two).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, Self, runtime_checkable

from diskledger import faults
from diskledger.backends import Backend, DiskSource, Observation, TemplateSource
from diskledger.backends.qemu import Luks
from diskledger.engine.runtime import Runtime
from diskledger.errors import InvalidInput, KeyNotFound, UnsafeKeyStore
from diskledger.keys import KeyProvider, NewKey
from diskledger.states import DiskView, Encryption

__all__ = [
    "FORMAT",
    "Encrypting",
    "OpensMappings",
    "check_can_encrypt",
    "destroy_key",
    "encryption_of",
    "guest_source",
    "key_problems",
    "keyed",
    "luks",
    "mapping_backend",
    "new_key",
    "provider",
    "refuse_encrypted",
    "sweep",
    "usable",
]

log = logging.getLogger(__name__)

FORMAT = "luks"
"""The format an encrypted disk's intent records (qemu's LUKS in qcow2), unless its backend says
another (``encryption_format``: the lvm backend's dm-crypt ``luks2``)."""


@runtime_checkable
class Encrypting(Protocol):
    """What a backend offers to make encrypted disks (the file backends; the lvm backend next):
    ``encrypts`` true, ``create``/``import_file`` that take the key as ``luks`` (a secret file
    and the PBKDF time), and ``with_key``: itself for one encrypted disk, so that whatever must
    open the disk's data (resize, snapshots) gets the key. Checked by attribute, so that any
    backend may offer it without a common base class."""

    name: str
    encrypts: bool

    def create(
        self,
        location: str,
        token: str,
        *,
        size: int | None,
        template: TemplateSource | None,
        luks: Luks | None = None,
    ) -> Observation: ...

    def import_file(
        self,
        location: str,
        token: str,
        source: str,
        fmt: str,
        *,
        max_virtual_size: int,
        luks: Luks | None = None,
    ) -> Observation: ...

    def with_key(self, luks: Luks) -> Self: ...


@runtime_checkable
class OpensMappings(Protocol):
    """A backend whose encrypted disks a guest uses through a mapping the host opens with the
    key (dm-crypt, the lvm backend), instead of through a libvirt secret qemu decrypts with:
    ``attach`` opens it and describes the disk by ``mapped_source``; ``detach``, and an attach
    rolled back, close it."""

    def mapped_source(self, location: str) -> DiskSource: ...

    def open_mapping(self, location: str, luks: Luks) -> str: ...

    def close_mapping(self, location: str) -> bool: ...


def mapping_backend(backend: Backend, made: Encryption | None) -> OpensMappings | None:
    """``backend`` when a guest uses the disk encrypted as ``made`` through a host mapping;
    None when the disk is not encrypted or qemu decrypts it (a libvirt secret)."""
    if made is None or not isinstance(backend, OpensMappings):
        return None
    return backend


def guest_source(
    backend: Backend, location: str, made: Encryption | None, *, addresses: bool = True
) -> DiskSource:
    """The storage a domain is given for the disk at ``location`` (encrypted as ``made``):
    its mapping when the host decrypts it, the backend's ``disk_source`` otherwise. What an
    attach describes, and what verify and resize look for in the domain."""
    mapped = mapping_backend(backend, made)
    if mapped is not None:
        return mapped.mapped_source(location)
    return backend.disk_source(location, addresses=addresses)


def provider(rt: Runtime, name: str | None = None) -> KeyProvider:
    """The key provider called ``name`` (the configured one when None)."""
    keys = rt.keys
    if keys is None:
        raise UnsafeKeyStore("this engine has no key provider configured")
    if name is not None and name != keys.name:
        raise UnsafeKeyStore(
            f"the key provider {name!r} is not configured here (it is {keys.name})"
        )
    return keys


def check_can_encrypt(rt: Runtime, backend: Backend) -> Encrypting:
    """Refuse, before anything is recorded, a backend that cannot encrypt or keys that could
    not be kept safely."""
    if not isinstance(backend, Encrypting) or not backend.encrypts:
        raise InvalidInput(
            f"the {backend.name} backend cannot encrypt disks (yet): --encrypt works with "
            "qcow2 and lvm"
        )
    provider(rt).check()
    return backend


def new_key(rt: Runtime, op: str, op_id: str) -> tuple[NewKey, Encryption]:
    """A new key for operation ``op_id``, durable and held, and what its intent records."""
    keys = provider(rt)
    fmt = str(getattr(rt.backend, "encryption_format", FORMAT))
    key = keys.create(op_id)
    faults.reach("after-key-created", op)
    return key, Encryption(fmt, keys.name, key.ref)


def encryption_of(source: DiskView | Mapping[str, Any]) -> Encryption | None:
    """The encryption a disk's view, or an intent's params, records."""
    if isinstance(source, DiskView):
        return source.encryption
    raw = source.get("encryption")
    return Encryption.from_json(raw) if raw else None


@contextlib.contextmanager
def luks(rt: Runtime, encryption: Encryption) -> Iterator[Luks]:
    """qemu-img's view of the key: a file only its owner can read, for the duration."""
    keys = provider(rt, encryption.provider)
    with keys.secret_file(encryption.key) as path:
        yield Luks(path, rt.luks_iter_time_ms)


def usable(rt: Runtime, view: DiskView) -> Encryption | None:
    """The encryption of ``view``'s disk, its key checked to be there (``KeyNotFound`` before
    anything is recorded when it is gone)."""
    made = view.encryption
    if made is not None and not provider(rt, made.provider).exists(made.key):
        raise KeyNotFound(made.key, made.provider)
    return made


@contextlib.contextmanager
def keyed(rt: Runtime, made: Encryption | None, backend: Backend) -> Iterator[Backend]:
    """``backend`` as it must work on a disk encrypted as ``made`` (None: as it is): its
    ``qemu-img`` calls get the key as a secret file for the duration."""
    if made is None:
        yield backend
        return
    if not isinstance(backend, Encrypting) or not backend.encrypts:
        raise InvalidInput(f"the {backend.name} backend cannot encrypt disks")
    with luks(rt, made) as key:
        keyed = backend.with_key(key)
        assert isinstance(keyed, Backend)
        yield keyed


def destroy_key(rt: Runtime, encryption: Encryption, op: str) -> bool:
    """Destroy the key once the data it protects is gone; idempotent. Whether it was there."""
    faults.reach("before-key-destroyed", op)
    return provider(rt, encryption.provider).destroy(encryption.key)


def refuse_encrypted(view: DiskView, what: str) -> None:
    """Refuse, before the intent, an operation diskledger does not do on encrypted disks yet."""
    if view.encryption is not None:
        raise InvalidInput(f"disk {view.disk} is encrypted: {what}")


def key_problems(rt: Runtime) -> list[dict[str, str]]:
    """What ``verify`` would report of keys: a live encrypted disk whose key is not with its
    provider (its data can no longer be read), and a key of this host's provider that no disk
    and no pending operation names and no process holds (an orphan the next ``recover``
    destroys). Each ``{disk or key, problem}``; never a key's material. A provider in use that
    could not keep keys safely raises ``UnsafeKeyStore``."""
    keys = rt.keys
    problems: list[dict[str, str]] = []
    named: set[str] = set()
    held = {k.ref for k in keys.list_keys() if k.held} if keys is not None else set()
    for view in rt.store.disks():
        made = view.encryption
        if made is None:
            continue
        named.add(made.key)
        if view.pending is None and (
            keys is None or made.provider != keys.name or not keys.exists(made.key)
        ):
            problems.append({"disk": view.disk, "key": made.key, "problem": "its key is missing"})
    for entry in rt.store.pending():
        raw = entry.operation.params.get("encryption")
        if raw:
            named.add(str(raw.get("key")))
    if keys is not None:
        listed = list(keys.list_keys())
        if listed or named:  # a store never used may not exist yet, and that is no problem
            keys.check()
        for info in listed:
            if info.ref not in named and info.ref not in held and not info.held:
                problems.append({"key": info.ref, "problem": "no disk or operation names it"})
    return problems


def sweep(rt: Runtime) -> list[str]:
    """Destroy every key of this host's provider that no process holds and that neither a disk
    nor a pending operation of the ledger names: a key made by a process that died before its
    intent was recorded. The references destroyed (never the keys)."""
    keys = rt.keys
    if keys is None:
        return []
    # Listed before the ledger is read: a key unheld now belongs to an operation whose intent
    # (and, once released, outcome) is durable already, or to nobody.
    try:
        candidates = [k for k in keys.list_keys() if not k.held]
    except UnsafeKeyStore as exc:
        log.warning("recovery: cannot sweep keys: %s", exc)  # not a reason to stop recovering
        return []
    if not candidates:
        return []
    named = {
        view.encryption.key
        for view in rt.store.disks()
        if view.encryption is not None and view.encryption.provider == keys.name
    }
    for entry in rt.store.pending():
        encryption = entry.operation.params.get("encryption")
        if encryption:
            named.add(str(encryption.get("key")))
    destroyed = []
    for info in candidates:
        if info.ref in named:
            continue
        try:
            keys.destroy(info.ref)
        except (UnsafeKeyStore, InvalidInput) as exc:
            log.warning("recovery: cannot destroy the orphaned key %s: %s", info.ref, exc)
            continue
        log.warning(
            "recovery: destroyed key %s, which no intent names (op %s)", info.ref, info.owner
        )
        destroyed.append(info.ref)
    return destroyed
