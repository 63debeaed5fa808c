"""The one failure path of scripts/lib/peer-venv.sh, shared by nova-venv.sh and glance-venv.sh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# PyPI out of reach: every index and link a pip configuration may name, and no retries.
UNREACHABLE = {
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_EXTRA_INDEX_URL": "",
    "PIP_FIND_LINKS": "",
    "PIP_NO_INDEX": "",
    "PIP_RETRIES": "0",
    "PIP_TIMEOUT": "2",
}


def assert_fails_with_one_line(script: str, venv_variable: str, tmp_path: Path) -> None:
    """``scripts/<script>`` with PyPI out of reach: one line on stderr, nothing on stdout, a
    non-zero status, and no venv left at ``$<venv_variable>``."""
    done = subprocess.run(
        [str(REPO / "scripts" / script)],
        env={**os.environ, **UNREACHABLE, venv_variable: str(tmp_path / "venv")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "venv").exists()
