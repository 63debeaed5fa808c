"""``--dist loadgroup`` that survives a crashed worker (a pytest plugin: tests/conftest.py
imports its hook).

`make test` runs the suite on two pytest-xdist workers. When a worker dies (a C library
aborting the process, say), xdist reports the test it was running as failed and starts a
replacement. Up to pytest-xdist 3.8.0, ``LoadScopeScheduling.remove_node`` (which ``loadgroup``
inherits) then puts *every* work unit the dead worker was ever given back on the queue, the
finished ones too (pytest-dev/pytest-xdist#1323, #1378). A finished unit is later sent as an
empty list of tests: the worker that gets it never reports a test for it, and a worker is only
given more work when it reports one. Under loadgroup every ungrouped test is a unit of its own,
so hundreds of empty units go to the back of the queue, and the run stops at 99 % with both
workers idle, until CI's timeout kills it (what happened to the run of ad9750c). The unit the
worker died in is also put back whole, so the test that crashed runs again (#1371).

``LoadGroupAfterCrash`` puts back only what did not run, and not the test that crashed (already
reported as failed); and it gives a worker asking for work at least two tests, as xdist does at
the start (a worker holds its last test until it knows the next one). The fixes merged
upstream (#1324, #1328) are not released yet; drop this module once a release has them
(pyproject.toml pins ``pytest-xdist<3.9`` because this leans on its scheduler's internals).
tests/support/test_xdist_scheduling.py crashes a worker in a real run to hold it to that.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling

__all__ = ["LoadGroupAfterCrash", "pytest_xdist_make_scheduler"]


class LoadGroupAfterCrash(LoadGroupScheduling):
    """``LoadGroupScheduling`` that requeues a crashed worker's unfinished tests only."""

    def remove_node(self, node: Any) -> str | None:
        workload: dict[str, dict[str, bool]] = self.assigned_work.pop(node)
        unfinished = {scope: unit for scope, unit in workload.items() if not all(unit.values())}
        if not unfinished:
            return None  # a worker shut down after its last test, as every worker does
        # The worker runs its tests in the order they were sent: the first one not reported
        # is the one it died in.
        crashed_scope, crashed = next(
            (scope, nodeid)
            for scope, unit in unfinished.items()
            for nodeid, done in unit.items()
            if not done
        )
        unfinished[crashed_scope][crashed] = True
        self.workqueue.update(
            (scope, unit) for scope, unit in unfinished.items() if not all(unit.values())
        )
        for other in self.assigned_work:
            self._reschedule(other)
        return crashed

    def _reschedule(self, node: Any) -> None:
        if node.shutting_down:
            return
        if not self.workqueue:
            node.shutdown()
            return
        if self._pending_of(self.assigned_work[node]) > 2:
            return
        self._assign_work_unit(node)
        # A worker runs a test once it knows the next one: a replacement given one unit of one
        # test would wait for the end of the run (#1327).
        while self.workqueue and self._pending_of(self.assigned_work[node]) < 2:
            self._assign_work_unit(node)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadGroupAfterCrash | None:
    if config.getvalue("dist") != "loadgroup":
        return None
    return LoadGroupAfterCrash(config, log)
