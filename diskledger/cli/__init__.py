"""The ``diskledger`` command line (``diskledger.cli.app``), run by ``python -m diskledger.cli``."""

from diskledger.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
