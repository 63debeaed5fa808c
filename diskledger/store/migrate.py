"""Schema creation and upgrades, through Alembic, on a connection the store passes in.

Opening a ledger that is already current costs one query: Alembic (a tenth of a second to import)
is loaded only when there is something to upgrade.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["HEAD", "current_revision", "head_revision", "migrate"]

HEAD: Final = "0003"
"""The newest migration; a test checks it against Alembic's script directory."""

_MIGRATIONS = Path(__file__).parent / "migrations"


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def head_revision() -> str | None:
    """The head according to Alembic's script directory (what ``HEAD`` must equal)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def migrate(conn: Connection, revision: str = "head") -> None:
    """Upgrade the ledger schema on ``conn`` to ``revision``; one already there is untouched."""
    if revision == "head" and current_revision(conn) == HEAD:
        return
    from alembic import command

    config = _config()
    config.attributes["connection"] = conn
    command.upgrade(config, revision)
