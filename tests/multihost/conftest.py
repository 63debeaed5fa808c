"""Fixtures of the multi-host tests: one rig (3 hosts, real PostgreSQL and Ceph in the core
namespace, libfaketime on every host) for the whole of tests/multihost -- the rig's self-tests
and the smoke run -- reset between tests, and stopped once the last of them is done.

Without root, iproute2, iptables, the freezer, libfaketime, PostgreSQL or Ceph the rig's tests
are skipped, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.multihost.rig import UNAVAILABLE, Cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "multihost: runs hosts in network namespaces (tests/multihost; needs root)"
    )


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    rig = Cluster(3, faketime=True)
    unavailable: str | None = None
    try:
        rig.start()
    except UNAVAILABLE as exc:
        unavailable = f"the multi-host rig cannot run here: {exc}"
    if unavailable is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"{unavailable}; under CI=true a missing component is a failure", pytrace=False
            )
        pytest.skip(unavailable)
    try:
        with rig.postgres.connect() as conn:
            conn.execute("CREATE TABLE stand_in (id serial PRIMARY KEY, host text, pid int, n int)")
            conn.commit()
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def rig(cluster: Cluster) -> Iterator[Cluster]:
    """The module's rig with every host healed, thawed, killed and its witness files gone."""
    cluster.reset()
    yield cluster
    cluster.reset()
