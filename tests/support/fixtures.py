"""pytest fixtures giving tests a real, throw-away PostgreSQL server.

* ``postgres_server`` (session scope): one :class:`~tests.support.postgres.PostgresServer` for the
  whole session, stopped (and its temporary directory removed) at the end. If PostgreSQL is not
  installed the tests using it are skipped -- except under ``CI=true``, where a missing component
  is a failure, so they fail with the reason instead.
* ``postgres_url`` (function scope): the SQLAlchemy URL of a fresh, empty, uniquely named database
  on that server, so every test is isolated from the others.

To make them available to every test, ``tests/conftest.py`` should import them::

    from tests.support.fixtures import postgres_server, postgres_url  # noqa: F401

(This relies on ``tests/__init__.py``: with it, pytest puts the repository root on ``sys.path``.
Import them in that one place only: each module that imports them gets its own session server.)
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Iterator

import pytest

from .postgres import PostgresServer, PostgresUnavailable

__all__ = ["postgres_server", "postgres_url"]

_db_counter = itertools.count(1)


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL server for the test session."""
    server = PostgresServer()
    unavailable: str | None = None
    try:
        server.start()
    except PostgresUnavailable as exc:
        unavailable = f"PostgreSQL is unavailable: {exc}"
    if unavailable is not None:  # outside the except block, to keep the report short
        if _in_ci():
            pytest.fail(f"{unavailable} (CI=true: a missing component is a failure)", pytrace=False)
        pytest.skip(unavailable)
    try:
        yield server
    finally:
        server.stop()


def _database_name(test_name: str) -> str:
    """``t<n>_<test name>_<random>``: unique, readable, and a valid 63-byte identifier."""
    slug = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")
    prefix = f"t{next(_db_counter)}_"
    suffix = f"_{uuid.uuid4().hex[:8]}"
    return prefix + slug[: 63 - len(prefix) - len(suffix)] + suffix


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of a new, empty database on the session's server, for this test only.

    The database is not dropped afterwards: the whole server is thrown away at the end.
    """
    return postgres_server.fresh_database(_database_name(request.node.name))
