from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from diskledger.engine import Config, Engine


@pytest.fixture(params=["raw", "qcow2"])
def engine(request: pytest.FixtureRequest, tmp_path: Path, qemu_img: None) -> Iterator[Engine]:
    config = Config.load(root=tmp_path / "root", backend=request.param, environ={})
    with Engine.open(config) as engine:
        yield engine


@pytest.fixture
def base(engine: Engine, template_files: dict[str, Path]) -> str:
    engine.add_template("base", template_files["qcow2"], "qcow2")
    return "base"
