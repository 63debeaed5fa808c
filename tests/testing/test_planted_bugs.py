"""The harness must be able to fail: each planted bug is caught, and the failure names the
invariant it broke.

Every bug lives in a throw-away subclass of the raw backend (or a wrapper of the event store) and
is run through the real harness with a fixed, derandomized budget, so CI finds it every time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import Phase

from diskledger import faults
from diskledger.backends import Artifact, Observation, RawBackend, TemplateSource, files
from diskledger.backends.files import temporary_path
from diskledger.store import EventStore
from diskledger.testing import Harness, InvariantViolation, budget, run_lifecycle

MiB = 1 << 20


class LeaksItsTemporaryFile(RawBackend):
    """Writes under a temporary name it never declares, so a crash mid-copy leaves it behind."""

    def create_artifacts(self, location: str, token: str) -> tuple[Artifact, ...]:
        return super().create_artifacts(location, token)[1:]  # the final name only


class PublishesBeforeTheDataIsWhole(RawBackend):
    """Puts an empty file at the final name first, then writes the data into it."""

    def create(
        self, location: str, token: str, *, size: int | None, template: TemplateSource | None
    ) -> Observation:
        if files.stat(location) is not None:
            return self._observe(location)
        files.ensure_dir_under(self.root, os.path.dirname(location), files.IMAGE_DIR_MODE)
        temp = temporary_path(location, token)
        open(temp, "wb").close()
        files.publish(temp, location)
        faults.reach("mid-effect", "create")
        self._write_new(temp, size, template)
        files.publish(temp, location)
        return self._observe(location)


class ShrinksOnResize(RawBackend):
    def resize(self, location: str, fmt: str, size: int) -> Observation:
        os.truncate(location, max(512, self._virtual_size(location) - MiB // 2))
        return self._observe(location)


class ForgetsSnapshotsOnDelete(RawBackend):
    def delete(self, location: str, fmt: str, snapshots: Sequence[str]) -> None:
        files.remove_file(location)


class DropsSnapshotOutcomes:
    """An event store that silently loses every ``disk.snapshot.completed`` event."""

    def __init__(self, inner: EventStore) -> None:
        self._inner = inner

    def append(self, stream: str, expected_version: int, events: Sequence[Any]) -> list[Any]:
        kept = [e for e in events if e.type != "disk.snapshot.completed"]
        return self._inner.append(stream, expected_version, kept) if kept else []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


PLANTED: dict[str, tuple[Harness, str]] = {
    "leaks its temporary file on a crash mid-effect": (
        Harness("leaky", backend=LeaksItsTemporaryFile),
        "storage holds exactly what the ledger names",
    ),
    "reports success before the data is whole": (
        Harness("early", backend=PublishesBeforeTheDataIsWhole),
        "after recover nothing is pending",
    ),
    "shrinks on resize": (
        Harness("shrinks", backend=ShrinksOnResize),
        "sizes never shrink",
    ),
    "forgets to remove snapshots on delete": (
        Harness("forgets", backend=ForgetsSnapshotsOnDelete),
        "storage holds exactly what the ledger names",
    ),
    "a store that drops an event": (
        Harness("drops", backend="raw", store=DropsSnapshotOutcomes),  # type: ignore[arg-type]
        "the model and the engine agree",
    ),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_the_harness_catches(bug: str, qemu_img: None) -> None:
    harness, invariant = PLANTED[bug]
    with pytest.raises(InvariantViolation) as caught:
        run_lifecycle(
            harness,
            settings=budget(
                max_examples=200, stateful_step_count=40, derandomize=True, phases=[Phase.generate]
            ),
        )
    assert caught.value.invariant == invariant, str(caught.value)
    assert f"invariant violated: {invariant}" in str(caught.value)


def test_an_honest_backend_passes_the_same_budget(qemu_img: None) -> None:
    """The control: the same budget on the real raw backend finds nothing."""
    run_lifecycle(
        Harness("honest", backend=RawBackend),
        settings=budget(max_examples=30, stateful_step_count=40, derandomize=True),
    )
