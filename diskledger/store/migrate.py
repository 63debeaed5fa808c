"""Schema creation and upgrades, through Alembic, on a connection the store passes in."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

__all__ = ["current_revision", "head_revision", "migrate"]

_MIGRATIONS = Path(__file__).parent / "migrations"


@cache
def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


@cache
def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def migrate(conn: Connection, revision: str = "head") -> None:
    """Upgrade the ledger schema on ``conn`` to ``revision``; one already there is untouched."""
    if revision == "head" and current_revision(conn) == head_revision():
        return
    config = _config()
    config.attributes["connection"] = conn
    try:
        command.upgrade(config, revision)
    finally:
        config.attributes.pop("connection", None)
