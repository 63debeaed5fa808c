"""The ``diskledger`` command line (``diskledger.cli.app``), run by ``python -m diskledger.cli``."""

import gc

# Importing the command line makes some 50,000 objects and no garbage worth a
# collection: the collector is paused while it does (about 10 ms of every command).
_collecting = gc.isenabled()
gc.disable()
try:
    from diskledger.cli.app import build_parser, main
finally:
    if _collecting:
        gc.enable()

__all__ = ["build_parser", "main"]
