"""Keys of encrypted disks: the provider contract and the local key directory.

``provider_from_environ`` picks the configured provider: ``DISKLEDGER_KEY_PROVIDER`` (``local``,
the default and for now the only one; Barbican or Vault through castellan would be further
names) and, for ``local``, ``DISKLEDGER_KEY_DIR`` (default ``<root>-keys``, beside the root
rather than in it: keys kept apart from the data they protect, and out of the tree ``verify``
walks for orphans).
The ledger records a key's reference and its provider's name, never the key (see
docs/encryption.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from diskledger.errors import InvalidInput
from diskledger.keys.contract import KeyInfo, KeyProvider, NewKey
from diskledger.keys.local import LocalKeyDirectory

__all__ = [
    "PROVIDERS",
    "KeyInfo",
    "KeyProvider",
    "LocalKeyDirectory",
    "NewKey",
    "provider_from_environ",
]

PROVIDERS = ("local",)


def default_key_dir(root: str | os.PathLike[str]) -> str:
    """``<root>-keys``: the local provider's directory when none is configured."""
    return os.path.abspath(os.fspath(root)).rstrip(os.sep) + "-keys"


def provider_from_environ(environ: Mapping[str, str], root: str | os.PathLike[str]) -> KeyProvider:
    """The key provider ``environ`` configures (nothing is touched until a key is needed)."""
    name = environ.get("DISKLEDGER_KEY_PROVIDER") or "local"
    if name not in PROVIDERS:
        raise InvalidInput(f"DISKLEDGER_KEY_PROVIDER={name!r} is not one of {', '.join(PROVIDERS)}")
    directory = environ.get("DISKLEDGER_KEY_DIR") or default_key_dir(root)
    if not os.path.isabs(directory):
        raise InvalidInput(f"DISKLEDGER_KEY_DIR={directory!r} is not an absolute path")
    return LocalKeyDirectory(directory)
