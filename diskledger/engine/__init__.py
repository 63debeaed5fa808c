"""The engine: the embedding API that joins the ledger, the lifecycles and storage."""

from diskledger.engine.config import DEFAULT_ROOT, Config
from diskledger.engine.engine import FORMATS, DirectSnapshot, Engine, Export
from diskledger.engine.inputs import check_disk, check_name, parse_size

__all__ = [
    "DEFAULT_ROOT",
    "FORMATS",
    "Config",
    "DirectSnapshot",
    "Engine",
    "Export",
    "check_disk",
    "check_name",
    "parse_size",
]
