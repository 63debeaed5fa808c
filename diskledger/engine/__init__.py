"""The engine: the embedding API that joins the ledger, the lifecycles and storage.

``Engine`` is a façade; the runtime it composes (``runtime``), the one place the operation
protocol runs (``protocol``), the operations themselves (``operations/``), crash recovery
(``recovery``, deciding by each operation's rules through ``settle``) and ``verify`` are its parts.
"""

from diskledger.engine.config import DEFAULT_ROOT, Config
from diskledger.engine.engine import FORMATS, DirectSnapshot, Engine, Export
from diskledger.engine.inputs import check_disk, check_name, parse_size
from diskledger.engine.runtime import Runtime, build

__all__ = [
    "DEFAULT_ROOT",
    "FORMATS",
    "Config",
    "DirectSnapshot",
    "Engine",
    "Export",
    "Runtime",
    "build",
    "check_disk",
    "check_name",
    "parse_size",
]
