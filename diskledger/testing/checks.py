"""The invariant checks the lifecycle machine runs after every step (Hypothesis runs them in
the order of their method names: the bytes last) and once more at the end of each example: the
engine against the model, the bytes disks and exports hold, the streams, the domain, and the
ledger against storage. A violated one raises ``InvariantViolation`` naming it (their names are
in ``invariants``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, NoReturn

from hypothesis.stateful import invariant

from diskledger.backends import SourceKind
from diskledger.engine import Engine
from diskledger.states import DISK_TABLE, TEMPLATE_TABLE, evolve, params_of
from diskledger.states.machine import Validator
from diskledger.states.streams import DISK, empty_view, stream_kind
from diskledger.testing.config import Harness
from diskledger.testing.draws import DISKS, TARGETS
from diskledger.testing.invariants import (
    AGREE,
    ATTACHED,
    CHAIN,
    COPIES,
    DATA,
    EXACT_SIZE,
    FORMAT,
    GAPLESS,
    LEGAL,
    NEVER_SHRINKS,
    STORAGE,
    USERS,
)
from diskledger.testing.model import SECTOR, ModelDisk, show
from diskledger.testing.preconditions import Preconditions
from diskledger.testing.stats import violation
from diskledger.testing.storage import InspectingFileStorage, StorageAccess

__all__ = ["Checks"]


class Checks(Preconditions):
    """The ``@invariant`` methods of the lifecycle machine (a mixin of ``DiskLifecycle``), and
    how they raise a violation."""

    harness: ClassVar[Harness]
    engine: Engine
    storage: StorageAccess
    """Guest bytes of disks and direct snapshots."""
    files: InspectingFileStorage
    """Exports, which are always files."""
    exports: Path
    sizes: dict[str, int]
    """Each live disk's recorded size at the previous check."""
    formats: dict[str, str]
    """Each live disk's format since it was created."""
    dirty: set[str]
    """Disks whose bytes may have changed since they were last read."""
    copies_changed: bool
    """A direct snapshot finished since the snapshot pool was last listed."""
    direct_snapshots: bool
    reads: int
    checked: dict[str, int]
    """The ledger's head when each check of it last ran."""

    @invariant()
    def disks_match_the_model(self) -> None:
        views = {v.disk: v for v in self.engine.list() if v.size is not None}
        for disk, view in views.items():
            assert view.size is not None and view.format is not None
            if view.size < self.sizes.get(disk, 0):
                self._violate(NEVER_SHRINKS, f"{disk} went from {self.sizes[disk]} to {view.size}")
            if self.formats.setdefault(disk, view.format) != view.format:
                self._violate(FORMAT, f"{disk} {self.formats[disk]} -> {view.format}")
            self.sizes[disk] = view.size
        for gone in set(self.sizes) - set(views):
            del self.sizes[gone]
            self.formats.pop(gone, None)
        for template in self.model.templates:
            users = sorted(self.engine.template_users(template))
            expected = sorted(d for d, m in self.model.disks.items() if m.template == template)
            if not self._any_pending() and users != expected:
                self._violate(USERS, f"{template}: {users}, expected {expected}")
        for disk in DISKS:
            if self._pending(f"disk:{disk}"):
                continue
            seen_view, wanted = views.get(disk), self.model.disks.get(disk)
            if seen_view is not None and wanted is not None:
                if seen_view.size != wanted.size:
                    change = f"{(seen_view.size or 0) - wanted.size:+d}"
                    self._violate(
                        EXACT_SIZE,
                        f"{disk} is {seen_view.size} bytes, asked {wanted.size} ({change})",
                    )
                for snapshot in seen_view.snapshots:
                    asked = wanted.snapshots.get(snapshot.name)
                    if asked is not None and snapshot.size != asked:
                        self._violate(
                            EXACT_SIZE,
                            f"{disk}@{snapshot.name} is {snapshot.size} bytes, taken at {asked}",
                        )
            seen, expected_view = _describe_view(seen_view), _describe_model(wanted)
            if seen != expected_view:
                self._violate(AGREE, f"{disk}: the engine has {seen}, the model {expected_view}")

    @invariant()
    def what_disks_hold_is_what_the_model_says(self) -> None:
        """Read back every disk that may have changed since it was last read (the one an
        operation or a guest write touched; all of them after a crash or a recovery): each
        marker, two offsets without one (in turn the known sectors of its source and its first
        and last sector), and after a rollback every offset another version of it had a marker
        at."""
        for disk in sorted(self.dirty):
            model_disk = self.model.disks.get(disk)
            if model_disk is None:
                self.dirty.discard(disk)
                continue
            if self._pending(f"disk:{disk}") or model_disk.attached is not None:
                continue  # read once it settles, or once the guest let go of it
            view = self.engine.show(disk)
            assert view.location and view.format
            content, size = model_disk.content, model_disk.size
            others = content.unmarked(size)
            self.reads += 1
            turn = [others[(self.reads + i) % len(others)] for i in range(min(2, len(others)))]
            recheck = {o for o in model_disk.recheck if o <= size - SECTOR}
            model_disk.recheck.clear()
            for offset in sorted({*content.marks, *turn, *recheck}):
                wanted = content.at(offset)
                try:
                    got = self.storage.read(view.location, view.format, offset, SECTOR)
                except Exception as exc:  # unreadable is a wrong answer too
                    self._violate(DATA, f"{disk} at {offset}: cannot read it: {exc}")
                if got != wanted:
                    self._violate(
                        DATA,
                        f"{disk} ({view.format}, {size} bytes) at {offset}: "
                        f"{show(got)}, expected {show(wanted)}",
                    )
            self.dirty.discard(disk)

    @invariant()
    def what_exports_hold_is_what_the_disk_held(self) -> None:
        """Each finished export (and direct snapshot) once: its size, and the bytes where the
        disk it copied had markers or known sectors. With a snapshot pool, it holds exactly the
        finished direct snapshots."""
        for name, copy in [*self.model.exports.items(), *self.model.copies.items()]:
            if copy.checked:
                continue
            storage = self.files if name in self.model.exports else self.storage
            if name in self.model.exports:
                try:
                    size = self.files.inspect(copy.location, copy.format).size
                except AssertionError:  # qemu-img cannot read it
                    size = -1
                if size != copy.size:
                    self._violate(COPIES, f"{name} is {size} bytes, the disk was {copy.size}")
            for offset in copy.content.offsets(copy.size):
                wanted = copy.content.at(offset)
                try:
                    got = storage.read(copy.location, copy.format, offset, SECTOR)
                except Exception as exc:  # unreadable is a wrong answer too
                    self._violate(COPIES, f"{name} at {offset}: cannot read it: {exc}")
                if got != wanted:
                    self._violate(
                        COPIES, f"{name} at {offset}: {show(got)}, expected {show(wanted)}"
                    )
            copy.checked = True
        pool = self.harness.snapshot_pool
        if self.direct_snapshots and pool and self.copies_changed and not self.unresolved:
            self.copies_changed = False
            there = {x for x in self.storage.existing() if x.startswith(f"{pool}/")}
            wanted_images = {c.location.partition("@")[0] for c in self.model.copies.values()}
            expected = wanted_images | {c.location for c in self.model.copies.values()}
            if there != expected:
                self._violate(
                    STORAGE,
                    f"the snapshot pool has {sorted(there - expected)} the ledger does not "
                    f"name and lacks {sorted(expected - there)}",
                )

    @invariant()
    def streams_are_gapless_and_legal(self) -> None:
        if self._nothing_new("streams"):
            return
        versions: dict[str, int] = {}
        views: dict[str, Any] = {}
        for event in self.engine.store.read_all():
            expected = versions.get(event.stream, 0) + 1
            if event.version != expected:
                self._violate(GAPLESS, f"{event.stream} jumps to {event.version}")
            versions[event.stream] = event.version
            view = views.get(event.stream) or empty_view(event.stream)
            validator = _VALIDATORS[stream_kind(event.stream)]
            if validator.target(view, event.type, params_of(view, event)) is None:
                self._violate(LEGAL, f"{event.stream} v{event.version} {event.type}")
            views[event.stream] = evolve(view, event)

    @invariant()
    def the_domain_has_the_attached_disks(self) -> None:
        domain = self.harness.domain
        if domain is None or self._nothing_new("domain"):
            return
        info = self.engine.hypervisor.find(domain)
        if info is None:
            self._violate(ATTACHED, f"domain {domain} is gone")
        ours = {target: disk for disk, target in TARGETS.items()}
        for target, source in sorted(info.disks.items()):
            disk = ours.get(target)
            if disk is None or self._pending(f"disk:{disk}"):
                continue
            model_disk = self.model.disks.get(disk)
            if model_disk is None or model_disk.attached != target:
                self._violate(ATTACHED, f"{domain} has {target}; the ledger has no disk there")
            location = self.engine.show(disk).location
            where = source.path if source.kind is SourceKind.FILE else source.name
            if where != location:
                self._violate(ATTACHED, f"{domain} has {where} at {target}, not {disk}")
        for disk, model_disk in self.model.disks.items():
            at = model_disk.attached
            if at and at not in info.disks and not self._pending(f"disk:{disk}"):
                self._violate(ATTACHED, f"{disk} is attached at {at}; {domain} lacks it")

    @invariant()
    def the_ledger_and_storage_agree(self) -> None:
        if self._nothing_new("verify"):
            return
        report = self.engine.verify()
        if report.chain_error or report.model_mismatches:
            details = report.chain_error or "; ".join(report.model_mismatches)
            self._violate(CHAIN, details)
        if report.orphans or report.drift:
            self._violate(STORAGE, f"orphans {report.orphans}, drift {report.drift}")
        if report.stale_attachments and not self.unresolved:
            self._violate(ATTACHED, f"stale attachments {report.stale_attachments}")
        leftovers = [p.name for p in self.exports.iterdir() if ".tmp-" in p.name]
        if leftovers and not self.unresolved:
            self._violate(STORAGE, f"temporary export files left: {leftovers}")

    def _violate(self, invariant: str, details: str) -> NoReturn:
        raise violation(invariant, details)

    def _nothing_new(self, check: str) -> bool:
        """Whether the ledger has had no event since ``check`` last ran: then the ledger, the
        storage it names and the domain have nothing new to show (a refused request, a guest
        write, an armed crash or a repeated key append nothing; a refused request that touched
        storage all the same shows at the next check that runs, and Hypothesis shrinks to it)."""
        head = self.engine.store.head()
        if self.checked.get(check) == head:
            return True
        self.checked[check] = head
        return False


_VALIDATORS: dict[str, Validator[Any]] = {
    DISK: Validator(DISK_TABLE),
    "template": Validator(TEMPLATE_TABLE),
}


def _describe_view(view: Any) -> tuple[Any, ...] | None:
    if view is None:
        return None
    snapshots = tuple((s.name, s.size) for s in view.snapshots)
    attached = view.attachment.target_dev if view.attachment else None
    return (view.state.value, view.size, view.format, view.template, snapshots, attached)


def _describe_model(model: ModelDisk | None) -> tuple[Any, ...] | None:
    if model is None:
        return None
    snapshots = tuple(model.snapshots.items())
    return (
        model.state.value,
        model.size,
        model.format,
        model.template,
        snapshots,
        model.attached,
    )
