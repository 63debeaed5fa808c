"""The harness must be able to fail: each planted bug is caught, and the failure names the
invariant it broke.

Every bug lives in a throw-away subclass of the raw backend (or a wrapper of the event store) and
is run through the real harness with a fixed, derandomized budget, so CI finds it every time.
The bugs of the second and third groups keep the ledger and storage in perfect agreement (the
right files, sizes and formats, every event legal): only reading the guest's bytes, or holding
each size to the byte that was asked for, shows them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import Phase

from diskledger import faults
from diskledger.backends import Artifact, Observation, RawBackend, TemplateSource, files
from diskledger.backends.files import temporary_path
from diskledger.store import EventStore
from diskledger.testing import Harness, InvariantViolation, budget, planted_bug, run_lifecycle

MiB = 1 << 20

# -- what the ledger and storage show -----------------------------------------------------------


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

    def append(
        self, stream: str, expected_version: int, events: Sequence[Any], *, sync: bool = True
    ) -> list[Any]:
        kept = [e for e in events if e.type != "disk.snapshot.completed"]
        return self._inner.append(stream, expected_version, kept, sync=sync) if kept else []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# -- what only the guest's bytes show -----------------------------------------------------------


class RollsBackNothing(RawBackend):
    """A rollback that restores nothing: the disk keeps the data it had (at the right size)."""

    def rollback(
        self, location: str, fmt: str, snapshot: str, token: str, *, size: int
    ) -> Observation:
        return self.resize(location, fmt, size)


class RollsBackToTheFirstSnapshot(RawBackend):
    """A rollback to whichever snapshot's name sorts first, not the one asked for."""

    def rollback(
        self, location: str, fmt: str, snapshot: str, token: str, *, size: int
    ) -> Observation:
        first = sorted(os.listdir(f"{location}.snapshots"))[0]  # raw.py's layout
        return super().rollback(location, fmt, first, token, size=size)


class ExportsZeros(RawBackend):
    """An export of the right size and format that holds nothing: it copies a blank image."""

    def export(
        self, location: str, fmt: str, target: str, target_format: str, token: str
    ) -> Observation:
        directory = tempfile.mkdtemp(prefix="diskledger-blank-")
        try:
            blank = os.path.join(directory, "blank")
            with open(blank, "wb") as handle:
                handle.truncate(os.path.getsize(location))
            return super().export(blank, fmt, target, target_format, token)
        finally:
            shutil.rmtree(directory)


class LeavesTheTemplateOut(RawBackend):
    """A disk made from a template is blank, at the template's size or the size asked."""

    def create(
        self, location: str, token: str, *, size: int | None, template: TemplateSource | None
    ) -> Observation:
        if template is not None:
            size = size or template.virtual_size
        return super().create(location, token, size=size, template=None)


class ZeroesOnResize(RawBackend):
    """A resize that grows the disk by writing it anew: everything in it reads as zeros."""

    def resize(self, location: str, fmt: str, size: int) -> Observation:
        os.truncate(location, 0)
        os.truncate(location, size)
        return super().resize(location, fmt, size)


# -- what only holding sizes to the byte shows --------------------------------------------------


class RoundsResizesUpToAMiB(RawBackend):
    """A resize to the next whole MiB above the size asked for."""

    def resize(self, location: str, fmt: str, size: int) -> Observation:
        return super().resize(location, fmt, -(-size // MiB) * MiB)


class RoundsBlankDisksDownTo4KiB(RawBackend):
    """A blank disk made a whole number of 4 KiB blocks, rounding the size asked for down."""

    def create(
        self, location: str, token: str, *, size: int | None, template: TemplateSource | None
    ) -> Observation:
        if template is None and size is not None:
            size = max(4096, size // 4096 * 4096)
        return super().create(location, token, size=size, template=template)


DATA = "a disk holds the bytes the model says"
EXACT_SIZE = "a disk is the size it was asked to be"

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
    "a rollback that restores nothing": (Harness("unrolled", backend=RollsBackNothing), DATA),
    "a rollback to the wrong snapshot": (
        Harness("misrolled", backend=RollsBackToTheFirstSnapshot),
        DATA,
    ),
    "an export that copies a blank image": (
        Harness("blank-export", backend=ExportsZeros),
        "an export holds the bytes of the disk it copied",
    ),
    "a create from a template that leaves the template out": (
        Harness("templateless", backend=LeavesTheTemplateOut),
        DATA,
    ),
    "a resize that zeroes the disk": (Harness("zeroing", backend=ZeroesOnResize), DATA),
    "a resize that rounds up to the next MiB": (
        Harness("mib-resize", backend=RoundsResizesUpToAMiB),
        EXACT_SIZE,
    ),
    "a blank create that rounds down to 4 KiB": (
        Harness("4k-blank", backend=RoundsBlankDisksDownTo4KiB),
        EXACT_SIZE,
    ),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_the_harness_catches(bug: str, qemu_img: None) -> None:
    harness, invariant = PLANTED[bug]
    with pytest.raises(InvariantViolation) as caught, planted_bug():
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
