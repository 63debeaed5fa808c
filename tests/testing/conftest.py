"""Print what the harness did, so a run's figures are visible next to its result."""

from __future__ import annotations

import pytest

from diskledger.testing import STATS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if STATS.examples:
        terminalreporter.write_line(f"diskledger.testing: {STATS.line()}")
