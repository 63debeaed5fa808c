"""The engine: the embedding API that joins the ledger, the lifecycles and storage.

``Engine`` is a façade; the runtime it composes (``runtime``), the one place the operation
protocol runs (``protocol``), the operations themselves (``operations/``), crash recovery
(``recovery``, deciding by each operation's rules through ``settle``), ``verify``, and on a shared
ledger the member (``members``), the takeover (``takeover``) and the agent (``agent``) are its
parts.
"""

from diskledger.engine.config import DEFAULT_ROOT, Config
from diskledger.engine.engine import FORMATS, DirectSnapshot, Engine, Export
from diskledger.engine.inputs import check_disk, check_name, parse_size
from diskledger.engine.runtime import Runtime, build

# The ledger as the command line may open it without an engine (completing names on a server).
from diskledger.store import MemberRecord, open_store

__all__ = [
    "DEFAULT_ROOT",
    "FORMATS",
    "Config",
    "DirectSnapshot",
    "Engine",
    "Export",
    "MemberRecord",
    "Runtime",
    "build",
    "check_disk",
    "check_name",
    "open_store",
    "parse_size",
]
