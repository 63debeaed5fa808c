"""The key-provider contract: where the keys of encrypted disks live.

The ledger records only a key's *reference* (an opaque string the provider hands out) and the
provider's name; the key material stays with the provider and reaches qemu, cryptsetup or libvirt
only as a file it opens (``secret_file``) or bytes handed straight to libvirt (``material``).

Crash safety rests on three promises of every provider:

- ``create`` makes the key durably *before* the engine records the intent that names it, and
  the key stays ``held`` by the creating process until that process lets go of it (or dies), so
  that a sweep for orphaned keys (``list_keys``) never takes a key whose intent is still being
  written;
- ``destroy`` is idempotent: recovery may call it again for a key that is already gone;
- a reference names one key for ever: a new key never reuses an old reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["KeyInfo", "KeyProvider", "NewKey"]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One key a provider keeps, as ``KeyProvider.keys`` lists it (never its material)."""

    ref: str
    owner: str
    """The label ``create`` was given: the op id of the operation that made the key."""
    held: bool
    """The process that made it may still be about to record its intent: not an orphan yet."""


class NewKey(Protocol):
    """A key just made, held by this process until ``release`` (or its death)."""

    ref: str

    def release(self) -> None:
        """Let go of the key: from now on a sweep may judge it by the ledger alone."""
        ...


@runtime_checkable
class KeyProvider(Protocol):
    """Keeps the keys of encrypted disks. ``name`` is recorded beside each reference, so that a
    ledger can hold disks whose keys live with different providers."""

    name: str

    def check(self) -> None:
        """Refuse, with ``UnsafeKeyStore`` and one line, when keys could not be kept safely
        (a key directory others can read, one this process cannot write); changes nothing."""
        ...

    def create(self, owner: str) -> NewKey:
        """Make a new random key, durably, labelled ``owner`` (an op id); it is held by this
        process until ``NewKey.release``."""
        ...

    def exists(self, ref: str) -> bool:
        """Whether the key ``ref`` is there."""
        ...

    def secret_file(self, ref: str) -> AbstractContextManager[str]:
        """A path to a file only this user can read that holds the key's material, for as long
        as the context lasts (``qemu-img --object secret,file=``, ``cryptsetup --key-file``).
        ``KeyNotFound`` when the key is gone."""
        ...

    def material(self, ref: str) -> bytes:
        """The key itself (for libvirt's ``virSecretSetValue``); never log or record it.
        ``KeyNotFound`` when the key is gone."""
        ...

    def destroy(self, ref: str) -> bool:
        """Destroy the key for good (overwrite, then remove); idempotent. Whether it existed."""
        ...

    def list_keys(self) -> Iterator[KeyInfo]:
        """Every key this provider keeps (for the orphan sweep and verify)."""
        ...
