"""A property-based harness that shakes a disk backend with random operations and crashes.

``DiskLifecycle`` is a Hypothesis ``RuleBasedStateMachine`` that drives an ``Engine`` on real
storage through random sequences of every operation the engine has — template imports, creates
(from a template or blank), imports of local image files, resizes, snapshots, rollbacks, snapshot
removals, exports, flattens, direct snapshots, attaching to and detaching from a libvirt domain
(when the harness is given one), deletes — with repeated idempotency keys, requests the engine
must refuse, **guest writes** (a distinct 512-byte marker written into a disk through the
storage, as a guest would), **operations crashed at a fault point** (in-process: the
operation's thread dies on the spot and no compensation runs; or a real ``diskledger`` CLI
process is SIGKILLed there), recoveries and engine restarts. Every size it asks for is a multiple
of 512 bytes, not of a MiB; on a backend with ``Capability.FIXED_SIZE`` (parallels) a resize
that grows a disk is a request the engine must refuse. A model of the expected state runs
alongside, down to the bytes: what each disk, snapshot and export holds. After every step, and
once more at the end of each example (after recovering what a crash left unresolved), the
invariants below are checked; a violated one raises ``InvariantViolation`` naming it, and
Hypothesis prints the shrunk operation sequence that led there.

Invariants (``INVARIANTS``; docs/testing.md explains each):

- the hash chain holds and replaying the ledger gives the stored read models;
- stream versions have no gaps, and every recorded transition is legal by the lifecycle tables;
- storage holds exactly the artifacts the ledger names, with the recorded sizes, formats and
  backing (no orphans, no drift);
- a disk's size never shrinks, is exactly the size asked for (to the byte: sizes are drawn at
  512-byte granularity), and its format never changes;
- every template's users are exactly the live disks made from it;
- the model and the engine agree on every disk (state, size, snapshots, template, attachment)
  and on which requests are refused; a refused request changes nothing;
- a disk holds the bytes the model says (its template's or source's bytes, the markers written
  into it, zeros elsewhere; after a rollback, the snapshot's bytes), and an export or a direct
  snapshot holds the bytes of the disk it copied;
- the domain has exactly the disks the ledger says are attached to it;
- repeating a completed operation's idempotency key changes nothing;
- after ``recover`` nothing is pending.

Run it on a backend with a few lines::

    from diskledger.testing import Harness, lifecycle_test_case

    TestMyBackend = lifecycle_test_case(Harness("mine", backend=lambda root: MyBackend(root)))

or, from a pytest test that needs fixtures, ``run_lifecycle(Harness(...))``. The budget comes
from ``DISKLEDGER_HARNESS_EXAMPLES`` (examples per run, default 5) and
``DISKLEDGER_HARNESS_STEPS`` (steps per example, default 30). ``STATS`` counts steps,
operations, refusals, guest writes, crashes, recoveries and violations across runs: unexpected
ones apart from those of a run on a bug planted on purpose (``stats.planted_bug()``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import unittest
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from diskledger import faults
from diskledger.backends import Capability, SourceKind
from diskledger.engine import Engine
from diskledger.errors import BackendError, DiskLedgerError
from diskledger.events import COMPLETED, FAILED, split_type
from diskledger.states import DiskState
from diskledger.testing.checks import Checks
from diskledger.testing.config import Harness, budget
from diskledger.testing.draws import (
    CRASH,
    DIRECT,
    DISKS,
    IMPORT_SIZE,
    IMPORTS,
    MAX_MARKS,
    REPEATS,
    SNAPSHOTS,
    TARGETS,
    TEMPLATES,
    MiB,
    mostly,
    weighted,
)
from diskledger.testing.invariants import AGREE, RECOVERED, REFUSED, REPEATED
from diskledger.testing.model import (
    SECTOR,
    Apply,
    Content,
    Copy,
    Model,
    ModelDisk,
    Unresolved,
    sector_of,
    source_image,
)
from diskledger.testing.stats import STATS, HarnessStats
from diskledger.testing.storage import FileStorage, InspectingFileStorage, StorageAccess

__all__ = [
    "STATS",
    "DiskLifecycle",
    "Harness",
    "HarnessStats",
    "budget",
    "lifecycle_machine",
    "lifecycle_test_case",
    "run_lifecycle",
]


# -- the machine ------------------------------------------------------------------------------


class DiskLifecycle(Checks, RuleBasedStateMachine):
    """The lifecycle machine; ``lifecycle_machine(harness)`` makes one for a harness.

    Rules draw what they act on from the model: mostly a disk, snapshot, template or size the
    request succeeds with, sometimes any (a request for a disk that does not exist, a snapshot
    that is not there, a size that shrinks must be refused and change nothing). Rules that can
    only be refused in the current state (a template that is cached, a flatten on a backend
    that cannot) are drawn only while the example has made fewer than one refused request per
    four operations, so that most steps do something.

    What its rules may act on comes from ``Preconditions`` (``preconditions``), its invariant
    checks from ``Checks`` (``checks``), what it draws from ``draws``; its counts go to ``STATS``
    (``stats``).
    """

    harness: ClassVar[Harness]

    def __init__(self) -> None:
        super().__init__()
        workdir = self.harness.workdir
        self.directory = Path(tempfile.mkdtemp(prefix="diskledger-harness-", dir=workdir))
        self.root = self.directory / "root"
        self.exports = self.directory / "exports"
        self.exports.mkdir()
        if self.harness.domain is not None:
            # qemu runs as another user: it must traverse every directory above a disk.
            self.directory.chmod(0o711)
            self.root.mkdir(mode=0o711)
            self.root.chmod(0o711)
        self.ledger = (
            self.harness.ledger(self.root)
            if self.harness.ledger
            else f"sqlite:///{self.directory}/ledger.db"
        )
        if self.harness.reset:
            self.harness.reset()
        self.engine = self.harness.open(self.root, self.ledger)
        if self.harness.storage is None:
            backend = self.engine.backend
            where = backend.disk_source(backend.disk_location("vm-1", "root"), addresses=False)
            if where.kind is not SourceKind.FILE:
                self.engine.close()
                shutil.rmtree(self.directory, ignore_errors=True)
                raise ValueError(
                    f"the {backend.name} backend's disks are not files: give the harness a "
                    "storage= that reaches them (a StorageAccess, e.g. RbdStorage for rbd)"
                )
        self.storage: StorageAccess = (self.harness.storage or FileStorage)(self.root)
        self.files = InspectingFileStorage(self.exports)
        size = self.harness.template_size
        self.sources = {t: source_image(t, fmt, size) for t, fmt in TEMPLATES.items()}
        self.imports = {name: source_image(name, fmt, IMPORT_SIZE) for name, fmt in IMPORTS.items()}
        self.model = Model()
        self.unresolved: dict[str, Unresolved] = {}
        self.last_completed: tuple[Callable[[Engine, str], Any], str, str] | None = None
        self.sizes: dict[str, int] = {}
        self.formats: dict[str, str] = {}
        self.here = HarnessStats()
        """This example's counts."""
        self.dirty: set[str] = set()
        """Disks whose bytes may have changed since they were last read."""
        self.copies_changed = False
        self.counter = 0
        self.recovered_at = 0
        self.reads = 0
        self.checked: dict[str, int] = {}
        """The ledger's head when each check of it last ran."""
        self.repeated: set[str] = set()
        """The kinds of operation whose idempotency key this example repeated."""
        capabilities = self.engine.backend.capabilities
        self.flattens = Capability.FLATTEN in capabilities
        self.direct_snapshots = (
            Capability.DIRECT_SNAPSHOT in capabilities and self.harness.snapshot_pool is not None
        )
        self.snapshots_in_use = Capability.SNAPSHOT_IN_USE in capabilities
        self.fixed_size = Capability.FIXED_SIZE in capabilities
        """Disks keep the size they were made with: growing one must be refused (parallels)."""
        STATS.examples += 1

    def teardown(self) -> None:
        try:
            if sys.exc_info()[1] is None:  # the example passed so far: see it to its end
                self._finish()
        finally:
            try:
                if self.harness.domain is not None:
                    self._detach_everything()
            finally:
                self._close()

    def _close(self) -> None:
        try:
            self.engine.close()
            close = getattr(self.storage, "close", None)
            if callable(close):
                close()
        finally:
            if self.harness.reset:
                self.harness.reset()
            shutil.rmtree(self.directory, ignore_errors=True)

    def _finish(self) -> None:
        """The end of every example: what a crash left unresolved is recovered, and the
        invariants are checked once more (a crash whose recovery never ran is still judged)."""
        if self.unresolved:
            self.engine.recover()
            self._after_recovery()
        for check in (
            self.disks_match_the_model,
            self.streams_are_gapless_and_legal,
            self.the_domain_has_the_attached_disks,
            self.the_ledger_and_storage_agree,
            self.what_disks_hold_is_what_the_model_says,
            self.what_exports_hold_is_what_the_disk_held,
        ):
            check()

    def _detach_everything(self) -> None:
        """Leave the domain as it was: every disk this example attached is detached (quietly
        after a failure, which must not be hidden by another)."""
        failed = sys.exc_info()[1] is not None
        try:
            self.engine.recover()
            for view in self.engine.list():
                if view.attachment is not None:
                    self.engine.detach(view.disk)
        except DiskLedgerError:
            if not failed:
                raise

    # -- rules: templates and new disks -----------------------------------------------------

    @initialize(template=st.sampled_from(sorted(TEMPLATES)))
    def start_with_a_template(self, template: str) -> None:
        self._add_template(None, template)

    @precondition(lambda self: self._uncached() or self._may_refuse())
    @rule(data=st.data())
    def add_template(self, data: st.DataObject) -> None:
        template = data.draw(mostly(self._uncached(), sorted(TEMPLATES)), label="template")
        self._add_template(data, template)

    def _add_template(self, data: st.DataObject | None, template: str) -> None:
        source = self.sources[template]
        cached = template in self.model.templates or self._pending(f"template:{template}")
        size = source.image.size

        def apply(model: Model) -> None:
            model.templates[template] = size

        self._perform(
            data,
            "fetch",
            f"template:{template}",
            lambda engine, op_id: engine.add_template(
                template, source.path, source.format, op_id=op_id
            ),
            ["template", "add", template, str(source.path), "--format", source.format],
            valid=not cached,
            apply=apply,
        )

    # A crashed operation still pending may bind a template when recovery finishes it, which
    # the model cannot foresee: removals are drawn only while nothing is pending.
    @precondition(
        lambda self: (
            not self._any_pending() and (bool(self._unused_templates()) or self._may_refuse())
        )
    )
    @rule(data=st.data())
    def remove_template(self, data: st.DataObject) -> None:
        """One template removal, as ``template gc`` makes of each template it collects."""
        unused = self._unused_templates()
        template = data.draw(mostly(unused, sorted(TEMPLATES)), label="template")

        def apply(model: Model) -> None:
            del model.templates[template]

        self._perform(
            data,
            "remove",
            f"template:{template}",
            lambda engine, op_id: engine.remove_template(template, op_id=op_id),
            ["template", "remove", template],
            valid=template in unused,
            apply=apply,
        )

    @precondition(lambda self: self._may_create() or self._may_refuse())
    @rule(data=st.data())
    def create_from_template(self, data: st.DataObject) -> None:
        disk = data.draw(mostly(self._free_names(), DISKS), label="disk")
        cached = sorted(t for t in self.model.templates if not self._pending(f"template:{t}"))
        template = data.draw(mostly(cached, sorted(TEMPLATES)), label="template")
        base = self.model.templates.get(template)
        around = base or self.harness.template_size
        size = data.draw(
            weighted(
                (3, st.none()),
                (1, st.just(around)),
                (3, st.integers(1, 2048).map(lambda n: around + n * SECTOR)),
                (1, st.integers(1, 64).map(lambda n: around - n * SECTOR)),
            ),
            label="size",
        )
        valid = (
            base is not None
            and (size is None or size >= base)
            and self._absent(disk)
            and not self._pending(f"template:{template}")
        )
        fmt = self._disk_format()
        image = self.sources[template].image

        def apply(model: Model) -> None:
            assert base is not None
            model.disks[disk] = ModelDisk(
                DiskState.CREATED, size or base, fmt, template, Content(image)
            )

        argv = ["disk", "create", disk, "--template", template]
        self._perform(
            data,
            "create",
            f"disk:{disk}",
            lambda engine, op_id: engine.create(disk, template=template, size=size, op_id=op_id),
            [*argv, "--size", str(size)] if size else argv,
            valid=valid,
            apply=apply,
        )

    @precondition(lambda self: self._may_create() or self._may_refuse())
    @rule(data=st.data())
    def create_blank(self, data: st.DataObject) -> None:
        disk = data.draw(mostly(self._free_names(), DISKS), label="disk")
        size = data.draw(
            weighted(
                (6, st.integers(1, 8192).map(lambda n: n * SECTOR)),
                (2, st.sampled_from([1, 7, 8, 9, 2047, 2048, 2049]).map(lambda n: n * SECTOR)),
                (1, st.integers(1, 4 * MiB).filter(lambda n: n % SECTOR != 0)),
            ),
            label="size",
        )
        fmt = self._disk_format()

        def apply(model: Model) -> None:
            model.disks[disk] = ModelDisk(DiskState.CREATED, size, fmt, None)

        self._perform(
            data,
            "create",
            f"disk:{disk}",
            lambda engine, op_id: engine.create(disk, size=size, op_id=op_id),
            ["disk", "create", disk, "--blank", "--size", str(size)],
            valid=self._absent(disk) and size % SECTOR == 0,
            apply=apply,
        )

    @precondition(lambda self: self._may_create() or self._may_refuse())
    @rule(data=st.data())
    def import_disk(self, data: st.DataObject) -> None:
        """A disk from a local image file: one the harness made (raw or qcow2), or an export."""
        disk = data.draw(mostly(self._free_names(), DISKS), label="disk")
        sources: dict[str, tuple[Path, str, int, Content]] = {
            name: (s.path, s.format, s.image.size, Content(s.image))
            for name, s in self.imports.items()
        }
        for name, copy in self.model.exports.items():
            sources[name] = (Path(copy.location), copy.format, copy.size, copy.content)
        choice = data.draw(
            weighted((9, st.sampled_from(sorted(sources))), (1, st.just("missing.raw"))),
            label="source",
        )
        path, fmt, size, content = sources.get(
            choice, (self.directory / "missing.raw", "raw", 0, Content())
        )
        disk_format = self._disk_format()

        def apply(model: Model) -> None:
            model.disks[disk] = ModelDisk(DiskState.CREATED, size, disk_format, None, content)

        self._perform(
            data,
            "import",
            f"disk:{disk}",
            lambda engine, op_id: engine.import_disk(disk, path, fmt, op_id=op_id),
            ["disk", "import", disk, str(path), "--format", fmt],
            valid=self._absent(disk) and choice in sources,
            apply=apply,
        )

    # -- rules: changing a disk -------------------------------------------------------------

    @precondition(lambda self: self._live_names() or self._may_refuse())
    @rule(data=st.data())
    def resize(self, data: st.DataObject) -> None:
        disk = data.draw(mostly(self._live_names(), DISKS), label="disk")
        current = self._live(disk)
        now = current.size if current else 4 * MiB
        size = data.draw(
            weighted(
                (6, st.integers(1, 2048).map(lambda n: now + n * SECTOR)),
                (1, st.just(now)),
                (1, st.integers(1, 64).map(lambda n: now - n * SECTOR)),
                (1, st.integers(1, SECTOR - 1).map(lambda n: now + n)),
            ),
            label="size",
        )

        def apply(model: Model) -> None:
            model_disk = model.disks[disk]
            if size == model_disk.size:
                return
            model_disk.size, model_disk.resized = size, True
            if model_disk.state is DiskState.CREATED:
                model_disk.state = DiskState.RESIZED

        self._perform(
            data,
            "resize",
            f"disk:{disk}",
            lambda engine, op_id: engine.resize(disk, size, op_id=op_id),
            ["disk", "resize", disk, str(size)],
            valid=(
                current is not None
                and size >= now
                and size % SECTOR == 0
                and (size == now or not self.fixed_size)
            ),
            apply=apply,
            writes=current is None or size != now,
        )

    @precondition(lambda self: self._snapshottable() or self._may_refuse())
    @rule(data=st.data())
    def snapshot(self, data: st.DataObject) -> None:
        # Those with a snapshot first (see _mostly): a rollback then has several to choose from.
        good = sorted(self._snapshottable(), key=lambda d: not self.model.disks[d].snapshots)
        disk = self._draw_disk(data, good, "snapshot")
        current = self._live(disk)
        taken = current.snapshots if current else {}
        free = [s for s in SNAPSHOTS if s not in taken]
        snapshot = data.draw(mostly(free, SNAPSHOTS), label="snapshot")

        def apply(model: Model) -> None:
            model_disk = model.disks[disk]
            model_disk.snapshots[snapshot] = model_disk.size
            model_disk.saved[snapshot] = model_disk.content
            model_disk.state = DiskState.SNAPSHOTTED

        done = self._perform(
            data,
            "snapshot",
            f"disk:{disk}",
            lambda engine, op_id: engine.snapshot(disk, snapshot, op_id=op_id),
            ["disk", "snapshot", disk, snapshot],
            valid=self._allowed(current, "snapshot") and snapshot not in taken,
            apply=apply,
        )
        # The guest carries on writing, mostly: the snapshot then holds other bytes than the
        # disk, and a rollback to it (or to another one) has something to restore.
        carries_on = weighted((3, st.just(True)), (1, st.just(False)))
        if done and disk in self._writable() and data.draw(carries_on, label="then"):
            self._write(data, disk)

    @precondition(lambda self: self._with_snapshots("rollback") or self._may_refuse())
    @rule(data=st.data())
    def rollback(self, data: st.DataObject) -> None:
        """Back to a snapshot: mostly one whose bytes differ from the disk's now, the newest
        first."""
        disk, snapshot, current = self._draw_snapshot(data, "rollback")
        self._rollback(data, disk, snapshot, current)

    @precondition(lambda self: self._with_snapshots("rollback", 2))
    @rule(data=st.data())
    def rollback_among_several_snapshots(self, data: st.DataObject) -> None:
        """Back to one of several snapshots that hold different bytes (a backend that restores
        another one than asked, the newest or the first, shows only here): its own rule, so
        that it is drawn as often as the others and not only when a rollback happens to find
        a disk with several."""
        disk = data.draw(st.sampled_from(self._with_snapshots("rollback", 2)), label="disk")
        current = self.model.disks[disk]
        snapshots = list(reversed(current.snapshots))
        snapshots.sort(key=lambda s: current.saved[s] == current.content)
        snapshot = data.draw(st.sampled_from(snapshots), label="snapshot")
        self._rollback(data, disk, snapshot, current)

    def _rollback(
        self, data: st.DataObject, disk: str, snapshot: str, current: ModelDisk | None
    ) -> None:
        def apply(model: Model) -> None:
            model_disk = model.disks[disk]
            versions = [model_disk.content, *model_disk.saved.values()]
            model_disk.content = model_disk.saved[snapshot]
            model_disk.recheck.update(o for version in versions for o in version.marks)

        self._perform(
            data,
            "rollback",
            f"disk:{disk}",
            lambda engine, op_id: engine.rollback(disk, snapshot, op_id=op_id),
            ["disk", "rollback", disk, snapshot],
            valid=self._allowed(current, "rollback") and snapshot in _snapshots(current),
            apply=apply,  # the size and the state stay
        )

    @precondition(lambda self: self._with_snapshots("remove-snapshot") or self._may_refuse())
    @rule(data=st.data())
    def remove_snapshot(self, data: st.DataObject) -> None:
        disk, snapshot, current = self._draw_snapshot(data, "remove-snapshot")

        def apply(model: Model) -> None:
            model_disk = model.disks[disk]
            del model_disk.snapshots[snapshot]
            del model_disk.saved[snapshot]
            if not model_disk.snapshots:
                model_disk.state = DiskState.RESIZED if model_disk.resized else DiskState.CREATED

        self._perform(
            data,
            "remove-snapshot",
            f"disk:{disk}",
            lambda engine, op_id: engine.remove_snapshot(disk, snapshot, op_id=op_id),
            ["disk", "remove-snapshot", disk, snapshot],
            valid=self._allowed(current, "remove-snapshot") and snapshot in _snapshots(current),
            apply=apply,
        )

    def _draw_snapshot(self, data: st.DataObject, op: str) -> tuple[str, str, ModelDisk | None]:
        # A rollback first on those with the most snapshots (a rollback to the wrong one shows
        # there); a removal first on those with the fewest (the others keep theirs).
        good = sorted(
            self._with_snapshots(op),
            key=lambda d: len(self.model.disks[d].snapshots) * (-1 if op == "rollback" else 1),
        )
        disk = self._draw_disk(data, good, op)
        current = self._live(disk)
        taken = list(reversed(current.snapshots)) if current else []  # the newest first
        if op == "rollback" and current is not None:
            # First those whose bytes differ from the disk's now: where a rollback shows.
            taken.sort(key=lambda s: current.saved[s] == current.content)
        snapshot = data.draw(mostly(taken, SNAPSHOTS), label="snapshot")
        return disk, snapshot, current

    @precondition(lambda self: self._live_names("export") or self._may_refuse())
    @rule(data=st.data(), fmt=st.sampled_from(["raw", "qcow2"]))
    def export(self, data: st.DataObject, fmt: str) -> None:
        disk = self._draw_disk(data, self._live_names("export"), "export")
        current = self._live(disk)
        self.counter += 1
        name = f"export-{self.counter}.{fmt}"
        target = self.exports / name
        copy = Copy(str(target), fmt, current.size, current.content) if current else None

        def apply(model: Model) -> None:
            assert copy is not None
            model.exports[name] = copy
            self.copies_changed = True

        self._perform(
            data,
            "export",
            f"disk:{disk}",
            lambda engine, op_id: engine.export(disk, target, fmt, op_id=op_id),
            ["disk", "export", disk, str(target), "--format", fmt],
            valid=self._allowed(current, "export"),
            apply=apply,
        )

    @precondition(
        lambda self: (self.flattens and self._live_names("flatten")) or self._may_refuse()
    )
    @rule(data=st.data())
    def flatten(self, data: st.DataObject) -> None:
        """RBD: copy into a clone what it shares with its template (no other backend can)."""
        disk = self._draw_disk(data, self._live_names("flatten"), "flatten")
        current = self._live(disk)
        self._perform(
            data,
            "flatten",
            f"disk:{disk}",
            lambda engine, op_id: engine.flatten(disk, op_id=op_id),
            ["disk", "flatten", disk],
            valid=self.flattens and self._allowed(current, "flatten"),
            apply=lambda model: None,  # the same bytes, no longer shared
        )

    @precondition(
        lambda self: (
            (self.direct_snapshots and self._live_names("direct-snapshot")) or self._may_refuse()
        )
    )
    @rule(data=st.data())
    def direct_snapshot(self, data: st.DataObject) -> None:
        """RBD with a snapshot pool: a standalone copy of the disk there, as Glance gets one."""
        disk = self._draw_disk(data, self._live_names("direct-snapshot"), "direct-snapshot")
        current = self._live(disk)
        taken = current.snapshots if current else {}
        snapshot = data.draw(mostly([DIRECT], SNAPSHOTS), label="snapshot")
        self.counter += 1
        image_id = f"image-{self.counter}"
        copy = None
        if current is not None and self.harness.snapshot_pool:
            location = f"{self.harness.snapshot_pool}/{image_id}@snap"
            copy = Copy(location, "raw", current.size, current.content)

        def apply(model: Model) -> None:
            assert copy is not None
            model.copies[image_id] = copy
            self.copies_changed = True

        self._perform(
            data,
            "direct-snapshot",
            f"disk:{disk}",
            lambda engine, op_id: engine.direct_snapshot(disk, snapshot, image_id, op_id=op_id),
            ["disk", "direct-snapshot", disk, snapshot, image_id],
            valid=self.direct_snapshots
            and self._allowed(current, "direct-snapshot")
            and snapshot not in taken,
            apply=apply,
        )

    @precondition(
        lambda self: (
            self.harness.domain is not None and (self._live_names("attach") or self._may_refuse())
        )
    )
    @rule(data=st.data())
    def attach(self, data: st.DataObject) -> None:
        disk = self._draw_disk(data, self._live_names("attach"), "attach")
        current = self._live(disk)
        domain, target = self.harness.domain, TARGETS[disk]
        assert domain is not None

        def apply(model: Model) -> None:
            model.disks[disk].attached = target

        self._perform(
            data,
            "attach",
            f"disk:{disk}",
            lambda engine, op_id: engine.attach(
                disk, domain, target_dev=target, bus="scsi", op_id=op_id
            ),
            ["disk", "attach", disk, domain, "--dev", target, "--bus", "scsi"],
            valid=self._allowed(current, "attach"),
            apply=apply,
        )

    @precondition(
        lambda self: self.harness.domain is not None and (self._attached() or self._may_refuse())
    )
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        disk = data.draw(mostly(self._attached(), DISKS), label="disk")
        current = self._live(disk)

        def apply(model: Model) -> None:
            model.disks[disk].attached = None

        self._perform(
            data,
            "detach",
            f"disk:{disk}",
            lambda engine, op_id: engine.detach(disk, op_id=op_id),
            ["disk", "detach", disk],
            valid=current is not None and current.attached is not None,
            apply=apply,
        )

    @precondition(lambda self: self._may_delete() or self._may_refuse())
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        disk = self._draw_disk(data, self._live_names("delete"), "delete")
        current = self._live(disk)

        def apply(model: Model) -> None:
            del model.disks[disk]

        self._perform(
            data,
            "delete",
            f"disk:{disk}",
            lambda engine, op_id: engine.delete(disk, op_id=op_id),
            ["disk", "delete", disk],
            valid=self._allowed(current, "delete"),
            apply=apply,
        )

    # -- rules: the guest, repeats, crashes, recovery ---------------------------------------

    @precondition(lambda self: bool(self._writable()))
    @rule(data=st.data())
    def write_guest_data(self, data: st.DataObject) -> None:
        """A distinct marker into a disk no domain uses, through the storage, as a guest would
        (mostly one whose bytes a snapshot holds: a later rollback then has work to do)."""
        STATS.steps += 1
        self.here.steps += 1
        writable = self._writable()
        kept = [
            d for d in writable if self.model.disks[d].content in self.model.disks[d].saved.values()
        ]
        self._write(data, data.draw(mostly(kept, writable), label="disk"))

    def _write(self, data: st.DataObject, disk: str) -> None:
        """A marker naming the disk and a counter into its first or last sector, where another
        version of it had one (a snapshot's end, a marker undone by a rollback), or anywhere."""
        STATS.writes += 1
        self.here.writes += 1
        model_disk = self.model.disks[disk]
        last = model_disk.size // SECTOR - 1
        marks = sorted(o // SECTOR for o in model_disk.content.marks)
        if len(marks) >= MAX_MARKS:
            where: st.SearchStrategy[int] = st.sampled_from(marks)
        else:
            near = {0, last, *marks}
            near |= {o // SECTOR for saved in model_disk.saved.values() for o in saved.marks}
            near |= {s // SECTOR for s in model_disk.snapshots.values()}
            if model_disk.content.base is not None:
                near.add(model_disk.content.base.size // SECTOR)
            interesting = sorted(s for s in near if 0 <= s <= last)
            where = weighted((1, st.sampled_from(interesting)), (2, st.integers(0, last)))
        offset = data.draw(where, label="sector") * SECTOR
        self.counter += 1
        marker = sector_of(f"{disk} #{self.counter} @{offset}")
        view = self.engine.show(disk)
        assert view.location and view.format
        self.storage.write(view.location, view.format, offset, marker)
        model_disk.content = model_disk.content.marked(offset, marker)
        self.dirty.add(disk)

    @precondition(
        lambda self: (
            self.last_completed is not None
            and self.last_completed[2].split()[0] not in self.repeated
            and len(self.repeated) < REPEATS
        )
    )
    @rule()
    def repeat_an_idempotency_key(self) -> None:
        """The last completed operation again, with its key: its result, nothing new. Drawn
        once per kind of operation, for up to ``REPEATS`` kinds in an example."""
        STATS.steps += 1
        self.here.steps += 1
        assert self.last_completed is not None
        request, op_id, what = self.last_completed
        self.repeated.add(what.split()[0])
        before = self._event_count()
        try:
            request(self.engine, op_id)
        except DiskLedgerError as exc:
            self._violate(REPEATED, f"{what} again raised: {exc}")
        if self._event_count() != before:
            self._violate(REPEATED, f"{what} again appended events")

    @precondition(lambda self: self.unresolved or self.here.steps >= self.recovered_at + 10)
    @rule(restart=st.booleans())
    def recover(self, restart: bool) -> None:
        """Recover in this engine, or restart: a new engine, as a restarted process gets, which
        recovers before it serves. Drawn while a crashed operation is unresolved, and every ten
        steps or so otherwise."""
        STATS.steps += 1
        self.here.steps += 1
        self.recovered_at = self.here.steps
        if restart:
            self.engine.close()
            self.engine = self.harness.open(self.root, self.ledger)
        self.engine.recover()
        self._after_recovery()

    # -- the operation step -----------------------------------------------------------------

    def _perform(
        self,
        data: st.DataObject | None,
        op: str,
        stream: str,
        request: Callable[[Engine, str], Any],
        argv: Sequence[str],
        *,
        valid: bool,
        apply: Apply,
        writes: bool = True,
    ) -> bool:
        """Run one operation, and check it against the model: a request the model expects to be
        refused must be, and change nothing; one it expects to succeed runs to its end, or (one
        time in ``CRASHES``, drawn from ``data``) crashes at a fault point, in this process or
        by SIGKILL of a CLI process running it. Returns whether it completed here and now."""
        STATS.steps += 1
        self.here.steps += 1
        what = f"{op} {stream.partition(':')[2]}"
        valid = valid and not self._pending(stream)
        op_id = _new_op_id()
        if not valid:
            STATS.refusals += 1
            self.here.refusals += 1
            self._refused(what, lambda: request(self.engine, op_id))
            return False
        STATS.operations += 1
        self.here.operations += 1
        if stream.startswith("disk:"):
            self.dirty.add(stream.partition(":")[2])
        crash = None
        if writes and data is not None:
            crash = data.draw(CRASH, label="crash")
        if crash is None:
            try:
                request(self.engine, op_id)
            except DiskLedgerError as exc:
                self._violate(AGREE, f"{what} was refused: {exc}")
            apply(self.model)
            if writes:  # an operation that changed nothing recorded nothing to repeat
                self.last_completed = (request, op_id, what)
            return True
        point, how = crash
        STATS.crashes += 1
        if how == "in-process" or not self.harness.kills_processes:
            with faults.armed(f"{op}@{point}:crash"):
                try:
                    request(self.engine, op_id)
                except faults.Crash:
                    pass
                except DiskLedgerError as exc:
                    self._violate(AGREE, f"{what} was refused: {exc}")
        else:
            STATS.subprocess_kills += 1
            env = self.harness.cli_environ(self.root, self.ledger)
            env["DISKLEDGER_FAULT"] = f"{op}@{point}:kill"
            done = subprocess.run(
                [sys.executable, "-m", "diskledger.cli", *argv, "--op-id", op_id],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if done.returncode not in (0, -9):
                self._violate(AGREE, f"{what} in a CLI process: {done.stderr.strip()}")
        self.unresolved[op_id] = Unresolved(stream, apply)
        self._resolve()
        return False

    def _refused(self, what: str, call: Callable[[], Any]) -> None:
        before = self._event_count()
        try:
            call()
        except BackendError as exc:
            self._violate(REFUSED, f"{what} reached storage before it was refused: {exc}")
        except DiskLedgerError:
            pass
        else:
            self._violate(AGREE, f"{what} was accepted; the model expected a refusal")
        if self._event_count() != before:
            self._violate(REFUSED, f"{what} was refused but appended events")

    def _resolve(self) -> None:
        """Apply to the model every crashed operation whose outcome is now recorded."""
        for op_id, change in list(self.unresolved.items()):
            # Not the last event: a rolled-back create ends with disk.template-released.
            phases = {split_type(e.type)[2] for e in self.engine.store.read_operation(op_id)}
            if COMPLETED in phases:
                change.apply(self.model)
            elif FAILED not in phases and phases:
                continue  # still pending
            del self.unresolved[op_id]
        # Whatever a crash or a recovery may have touched is read again.
        self.dirty.update(self.model.disks)

    def _after_recovery(self) -> None:
        STATS.recoveries += 1
        self._resolve()
        pending = [f"{e.stream} {e.operation.op}" for e in self.engine.store.pending()]
        if pending:
            self._violate(RECOVERED, f"still pending: {pending}")

    # -- helpers ----------------------------------------------------------------------------

    def _draw_disk(self, data: st.DataObject, good: Sequence[str], op: str) -> str:
        """Mostly one of ``good``, else any name; one time in four a disk a domain uses when
        ``op`` is refused on it, so that the refusals while attached are checked too."""
        refused = [d for d in self._attached() if not self._allowed(self.model.disks[d], op)]
        if refused:
            return data.draw(mostly(good, refused, odds=4), label="disk")
        return data.draw(mostly(good, DISKS), label="disk")

    def _disk_format(self) -> str:
        return self.engine.backend.disk_format

    def _event_count(self) -> int:
        return self.engine.store.head()


def _new_op_id() -> str:
    return uuid.uuid4().hex


def _snapshots(disk: ModelDisk | None) -> Mapping[str, int]:
    return disk.snapshots if disk is not None else {}


def lifecycle_machine(harness: Harness) -> type[DiskLifecycle]:
    """A ``DiskLifecycle`` subclass bound to ``harness``."""
    return type(f"DiskLifecycle_{harness.name}", (DiskLifecycle,), {"harness": harness})


def lifecycle_test_case(
    harness: Harness, *, settings: settings | None = None
) -> type[unittest.TestCase]:
    """A ``unittest.TestCase`` (pytest collects it) that runs the machine within ``budget()``."""
    case: type[unittest.TestCase] = lifecycle_machine(harness).TestCase
    case.settings = settings or budget()  # type: ignore[attr-defined]
    return case


def run_lifecycle(harness: Harness, *, settings: settings | None = None) -> None:
    """Run the machine now (from a pytest test that has the fixtures the harness needs)."""
    run_state_machine_as_test(lifecycle_machine(harness), settings=settings or budget())
