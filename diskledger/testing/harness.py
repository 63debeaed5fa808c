"""A property-based harness that shakes a disk backend with random operations and crashes.

``DiskLifecycle`` is a Hypothesis ``RuleBasedStateMachine`` that drives an ``Engine`` on real
storage through random sequences of template imports, creates, resizes, snapshots, rollbacks,
snapshot removals, exports, deletes, repeated idempotency keys, invalid requests, **crashes at a
fault point of the next operation** (in-process: the operation's thread dies on the spot and no
compensation runs; or a real ``diskledger`` CLI process is SIGKILLed there), recoveries and engine
restarts. A model of the expected state runs alongside. After every step the invariants below are
checked; a violated one raises ``InvariantViolation`` naming it, and Hypothesis prints the shrunk
operation sequence that led there.

Invariants (``INVARIANTS``; docs/testing.md explains each):

- the hash chain holds and replaying the ledger gives the stored read models;
- stream versions have no gaps, and every recorded transition is legal by the lifecycle tables;
- storage holds exactly the artifacts the ledger names, with the recorded sizes, formats and
  backing (no orphans, no drift);
- a disk's size never shrinks and its format never changes;
- every template's users are exactly the live disks made from it;
- the model and the engine agree on every disk (state, size, snapshots, template) and on which
  requests are refused; a refused request changes nothing;
- repeating a completed operation's idempotency key changes nothing;
- after ``recover`` nothing is pending.

Run it on a backend with a few lines::

    from diskledger.testing import Harness, lifecycle_test_case

    TestMyBackend = lifecycle_test_case(Harness("mine", backend=lambda root: MyBackend(root)))

or, from a pytest test that needs fixtures, ``run_lifecycle(Harness(...))``. The budget comes
from ``DISKLEDGER_HARNESS_EXAMPLES`` (examples per run, default 10) and
``DISKLEDGER_HARNESS_STEPS`` (steps per example, default 30). ``STATS`` counts steps, crashes,
recoveries and violations across runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from diskledger import faults
from diskledger.backends import Backend
from diskledger.engine import Config, Engine, build
from diskledger.errors import BackendError, DiskLedgerError
from diskledger.events import COMPLETED, FAILED, split_type
from diskledger.states import DISK_TABLE, TEMPLATE_TABLE, DiskState, evolve, params_of
from diskledger.states.machine import Validator
from diskledger.states.streams import DISK, empty_view, stream_kind
from diskledger.store import EventStore

__all__ = [
    "INVARIANTS",
    "STATS",
    "DiskLifecycle",
    "Harness",
    "HarnessStats",
    "InvariantViolation",
    "budget",
    "lifecycle_machine",
    "lifecycle_test_case",
    "run_lifecycle",
]

MiB = 1 << 20
DISKS = ("vm-1/root", "vm-1/data", "vm-2/root", "vm-2/data", "vm-3/root", "vm-3/swap")
SNAPSHOTS = ("s1", "s2", "s3")
TEMPLATES = {"base": "raw", "alt": "qcow2"}
POINTS = faults.POINTS

INVARIANTS = (
    "the hash chain holds and replay gives the read models",
    "stream versions have no gaps",
    "every recorded transition is legal",
    "storage holds exactly what the ledger names",
    "sizes never shrink",
    "a disk's format never changes",
    "template users are the disks made from them",
    "the model and the engine agree",
    "a refused request changes nothing",
    "a repeated idempotency key changes nothing",
    "after recover nothing is pending",
)


class InvariantViolation(AssertionError):
    """An invariant of ``INVARIANTS`` does not hold; ``invariant`` names it."""

    def __init__(self, invariant: str, details: str) -> None:
        super().__init__(f"invariant violated: {invariant}: {details}")
        self.invariant = invariant
        self.details = details


@dataclass
class HarnessStats:
    examples: int = 0
    steps: int = 0
    operations: int = 0
    """Steps that ran an operation the model expected to succeed (crashed ones included)."""
    refusals: int = 0
    """Steps that made a request the model expected to be refused."""
    crashes: int = 0
    subprocess_kills: int = 0
    recoveries: int = 0
    violations: int = 0

    def line(self) -> str:
        return (
            f"{self.examples} examples, {self.steps} steps ({self.operations} operations, "
            f"{self.refusals} refused requests), {self.crashes} crashes injected "
            f"({self.subprocess_kills} by SIGKILL of a CLI process), {self.recoveries} recoveries, "
            f"{self.violations} violations"
        )


STATS = HarnessStats()


@dataclass(frozen=True)
class Harness:
    """What to shake.

    ``backend`` is a name the CLI knows (``raw``, ``qcow2``, ``rbd``; with ``environ`` for its
    settings) or a factory ``root -> Backend`` for a backend of your own. Crashes by SIGKILL of a
    real CLI process need a named backend; a factory gets in-process crashes only.
    ``store`` may wrap the event store (to test the harness itself); ``reset`` runs before and
    after every example (for shared storage: empty the pool).
    """

    name: str
    backend: str | Callable[[str], Backend]
    environ: Mapping[str, str] = field(default_factory=dict)
    ledger: Callable[[Path], str] | None = None
    store: Callable[[EventStore], EventStore] | None = None
    reset: Callable[[], None] | None = None
    template_size: int = 4 * MiB

    @property
    def kills_processes(self) -> bool:
        return isinstance(self.backend, str)

    def open(self, root: Path, ledger: str) -> Engine:
        environ = {**os.environ, **self.environ}
        name = self.backend if isinstance(self.backend, str) else "raw"
        config = Config.load(root=root, ledger=ledger, backend=name, environ=environ)
        own = None if isinstance(self.backend, str) else self.backend(str(root))
        return Engine(build(config, backend=own, store=self.store))

    def cli_environ(self, root: Path, ledger: str) -> dict[str, str]:
        assert isinstance(self.backend, str)
        return {
            **os.environ,
            **self.environ,
            "DISKLEDGER_ROOT": str(root),
            "DISKLEDGER_LEDGER": ledger,
            "DISKLEDGER_BACKEND": self.backend,
            "DISKLEDGER_RECOVER": "0",  # the harness decides when recovery runs
        }


def budget(**overrides: Any) -> settings:
    """Hypothesis settings from ``DISKLEDGER_HARNESS_EXAMPLES`` and ``DISKLEDGER_HARNESS_STEPS``."""
    values: dict[str, Any] = {
        "max_examples": int(os.environ.get("DISKLEDGER_HARNESS_EXAMPLES", "10")),
        "stateful_step_count": int(os.environ.get("DISKLEDGER_HARNESS_STEPS", "30")),
        "deadline": None,
        "database": None,
        "suppress_health_check": list(HealthCheck),
    }
    values.update(overrides)
    return settings(**values)


# -- the model --------------------------------------------------------------------------------


@dataclass
class ModelDisk:
    state: DiskState
    size: int
    format: str
    template: str | None
    snapshots: dict[str, int] = field(default_factory=dict)
    resized: bool = False


@dataclass
class Model:
    disks: dict[str, ModelDisk] = field(default_factory=dict)
    templates: dict[str, int] = field(default_factory=dict)
    """Cached templates and their virtual sizes."""


Apply = Callable[[Model], None]


@dataclass
class Unresolved:
    """An operation that crashed: the model applies it once the ledger shows it completed."""

    stream: str
    apply: Apply


_SOURCES: dict[int, dict[str, Path]] = {}


def _template_sources(size: int) -> dict[str, Path]:
    """One raw and one qcow2 image of ``size`` with data at the start, made once per process."""
    if size not in _SOURCES:
        directory = Path(tempfile.mkdtemp(prefix="diskledger-harness-templates-"))
        raw = directory / "base.raw"
        with raw.open("wb") as handle:
            handle.write(b"DISKLEDGER-HARNESS".ljust(64 << 10, b"\x5a"))
            handle.truncate(size)
        qcow2 = directory / "alt.qcow2"
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
            check=True,
            capture_output=True,
        )
        _SOURCES[size] = {"base": raw, "alt": qcow2}
    return _SOURCES[size]


# -- the machine ------------------------------------------------------------------------------


class DiskLifecycle(RuleBasedStateMachine):
    """The lifecycle machine; ``lifecycle_machine(harness)`` makes one for a harness."""

    harness: ClassVar[Harness]

    disks = Bundle("disks")
    """Disks a create was asked for; operations mostly pick from these, sometimes from any name
    (a request for a disk that does not exist must be refused and change nothing)."""
    ANY_DISK = st.one_of(disks, disks, st.sampled_from(DISKS))

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="diskledger-harness-"))
        self.root = self.directory / "root"
        self.exports = self.directory / "exports"
        self.exports.mkdir()
        self.ledger = (
            self.harness.ledger(self.root)
            if self.harness.ledger
            else f"sqlite:///{self.directory}/ledger.db"
        )
        if self.harness.reset:
            self.harness.reset()
        self.engine = self.harness.open(self.root, self.ledger)
        self.sources = _template_sources(self.harness.template_size)
        self.model = Model()
        self.unresolved: dict[str, Unresolved] = {}
        self.crash_next: tuple[str, str] | None = None
        self.last_completed: tuple[Callable[[Engine, str], Any], str, str] | None = None
        self.sizes: dict[str, int] = {}
        self.formats: dict[str, str] = {}
        STATS.examples += 1

    def teardown(self) -> None:
        self.engine.close()
        if self.harness.reset:
            self.harness.reset()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- rules ------------------------------------------------------------------------------

    @initialize(template=st.sampled_from(sorted(TEMPLATES)))
    def start_with_a_template(self, template: str) -> None:
        self.add_template(template)

    @rule(template=st.sampled_from(sorted(TEMPLATES)))
    def add_template(self, template: str) -> None:
        fmt = TEMPLATES[template]
        source = self.sources[template]
        cached = template in self.model.templates or self._pending(f"template:{template}")
        size = self.harness.template_size

        def apply(model: Model) -> None:
            model.templates[template] = size

        self._perform(
            "fetch",
            f"template:{template}",
            lambda engine, op_id: engine.add_template(template, source, fmt, op_id=op_id),
            ["template", "add", template, str(source), "--format", fmt],
            valid=not cached,
            apply=apply,
        )

    @rule(
        target=disks,
        disk=st.sampled_from(DISKS),
        template=st.sampled_from(sorted(TEMPLATES)),
        asked=st.sampled_from(["none", "same", "bigger", "none", "bigger", "smaller"]),
    )
    def create_from_template(self, disk: str, template: str, asked: str) -> MultipleResults[str]:
        base = self.model.templates.get(template)
        size = None
        if base is not None and asked != "none":
            size = base + {"same": 0, "bigger": MiB, "smaller": -MiB}[asked]
        valid = base is not None and asked != "smaller" and self._absent(disk)
        fmt = self._disk_format()

        def apply(model: Model) -> None:
            assert base is not None
            model.disks[disk] = ModelDisk(DiskState.CREATED, size or base, fmt, template)

        argv = ["disk", "create", disk, "--template", template]
        return self._perform(
            "create",
            f"disk:{disk}",
            lambda engine, op_id: engine.create(disk, template=template, size=size, op_id=op_id),
            [*argv, "--size", str(size)] if size else argv,
            valid=valid,
            apply=apply,
            result=disk,
        )

    @rule(target=disks, disk=st.sampled_from(DISKS), size=st.sampled_from([MiB, 3 * MiB]))
    def create_blank(self, disk: str, size: int) -> MultipleResults[str]:
        fmt = self._disk_format()

        def apply(model: Model) -> None:
            model.disks[disk] = ModelDisk(DiskState.CREATED, size, fmt, None)

        return self._perform(
            "create",
            f"disk:{disk}",
            lambda engine, op_id: engine.create(disk, size=size, op_id=op_id),
            ["disk", "create", disk, "--blank", "--size", str(size)],
            valid=self._absent(disk),
            apply=apply,
            result=disk,
        )

    @rule(disk=ANY_DISK, delta=st.sampled_from([-MiB, 0, MiB, 2 * MiB, MiB, 2 * MiB]))
    def resize(self, disk: str, delta: int) -> None:
        current = self._live(disk)
        size = (current.size if current else 4 * MiB) + delta

        def apply(model: Model) -> None:
            if delta == 0:
                return
            model_disk = model.disks[disk]
            model_disk.size, model_disk.resized = size, True
            if model_disk.state is DiskState.CREATED:
                model_disk.state = DiskState.RESIZED

        self._perform(
            "resize",
            f"disk:{disk}",
            lambda engine, op_id: engine.resize(disk, size, op_id=op_id),
            ["disk", "resize", disk, str(size)],
            valid=current is not None and delta >= 0,
            apply=apply,
            writes=delta != 0,
        )

    @rule(disk=ANY_DISK, snapshot=st.sampled_from(SNAPSHOTS))
    def snapshot(self, disk: str, snapshot: str) -> None:
        current = self._live(disk)

        def apply(model: Model) -> None:
            model_disk = model.disks[disk]
            model_disk.snapshots[snapshot] = model_disk.size
            model_disk.state = DiskState.SNAPSHOTTED

        self._perform(
            "snapshot",
            f"disk:{disk}",
            lambda engine, op_id: engine.snapshot(disk, snapshot, op_id=op_id),
            ["disk", "snapshot", disk, snapshot],
            valid=current is not None and snapshot not in current.snapshots,
            apply=apply,
        )

    @rule(disk=ANY_DISK, snapshot=st.sampled_from(SNAPSHOTS))
    def rollback(self, disk: str, snapshot: str) -> None:
        current = self._live(disk)
        self._perform(
            "rollback",
            f"disk:{disk}",
            lambda engine, op_id: engine.rollback(disk, snapshot, op_id=op_id),
            ["disk", "rollback", disk, snapshot],
            valid=current is not None and snapshot in current.snapshots,
            apply=lambda model: None,  # the data goes back; the size and state stay
        )

    @rule(disk=ANY_DISK, snapshot=st.sampled_from(SNAPSHOTS))
    def remove_snapshot(self, disk: str, snapshot: str) -> None:
        current = self._live(disk)

        def apply(model: Model) -> None:
            model_disk = model.disks[disk]
            del model_disk.snapshots[snapshot]
            if not model_disk.snapshots:
                model_disk.state = DiskState.RESIZED if model_disk.resized else DiskState.CREATED

        self._perform(
            "remove-snapshot",
            f"disk:{disk}",
            lambda engine, op_id: engine.remove_snapshot(disk, snapshot, op_id=op_id),
            ["disk", "remove-snapshot", disk, snapshot],
            valid=current is not None and snapshot in current.snapshots,
            apply=apply,
        )

    @rule(disk=ANY_DISK, fmt=st.sampled_from(["raw", "qcow2"]))
    def export(self, disk: str, fmt: str) -> None:
        current = self._live(disk)
        target = self.exports / f"{uuid.uuid4().hex}.{fmt}"
        self._perform(
            "export",
            f"disk:{disk}",
            lambda engine, op_id: engine.export(disk, target, fmt, op_id=op_id),
            ["disk", "export", disk, str(target), "--format", fmt],
            valid=current is not None,
            apply=lambda model: None,
        )

    @rule(disk=st.one_of(consumes(disks), st.sampled_from(DISKS)))
    def delete(self, disk: str) -> None:
        def apply(model: Model) -> None:
            del model.disks[disk]

        self._perform(
            "delete",
            f"disk:{disk}",
            lambda engine, op_id: engine.delete(disk, op_id=op_id),
            ["disk", "delete", disk],
            valid=self._live(disk) is not None,
            apply=apply,
        )

    @rule()
    def repeat_an_idempotency_key(self) -> None:
        """The last completed operation again, with its key: its result, nothing new."""
        STATS.steps += 1
        if self.last_completed is None:
            return
        request, op_id, what = self.last_completed
        before = self._event_count()
        try:
            request(self.engine, op_id)
        except DiskLedgerError as exc:
            self._violate(
                "a repeated idempotency key changes nothing", f"{what} again raised: {exc}"
            )
        if self._event_count() != before:
            self._violate(
                "a repeated idempotency key changes nothing", f"{what} again appended events"
            )

    @rule(
        point=st.sampled_from(POINTS),
        how=st.sampled_from(["in-process", "in-process", "kill a CLI process"]),
    )
    def crash_during_the_next_operation(self, point: str, how: str) -> None:
        STATS.steps += 1
        if how != "in-process" and not self.harness.kills_processes:
            how = "in-process"
        self.crash_next = (point, how)

    @rule(restart=st.booleans())
    def recover(self, restart: bool) -> None:
        """Recover in this engine, or restart: a new engine, as a restarted process gets, which
        recovers before it serves."""
        STATS.steps += 1
        if restart:
            self.engine.close()
            self.engine = self.harness.open(self.root, self.ledger)
        self.engine.recover()
        self._after_recovery()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def the_ledger_and_storage_agree(self) -> None:
        report = self.engine.verify()
        if report.chain_error or report.model_mismatches:
            details = report.chain_error or "; ".join(report.model_mismatches)
            self._violate(INVARIANTS[0], details)
        if report.orphans or report.drift:
            self._violate(INVARIANTS[3], f"orphans {report.orphans}, drift {report.drift}")
        leftovers = [p.name for p in self.exports.iterdir() if ".tmp-" in p.name]
        if leftovers and not self.unresolved:
            self._violate(INVARIANTS[3], f"temporary export files left: {leftovers}")

    @invariant()
    def streams_are_gapless_and_legal(self) -> None:
        versions: dict[str, int] = {}
        views: dict[str, Any] = {}
        for event in self.engine.store.read_all():
            expected = versions.get(event.stream, 0) + 1
            if event.version != expected:
                self._violate(INVARIANTS[1], f"{event.stream} jumps to {event.version}")
            versions[event.stream] = event.version
            view = views.get(event.stream) or empty_view(event.stream)
            validator = _VALIDATORS[stream_kind(event.stream)]
            if validator.target(view, event.type, params_of(view, event)) is None:
                self._violate(INVARIANTS[2], f"{event.stream} v{event.version} {event.type}")
            views[event.stream] = evolve(view, event)

    @invariant()
    def disks_match_the_model(self) -> None:
        views = {v.disk: v for v in self.engine.list() if v.size is not None}
        for disk, view in views.items():
            assert view.size is not None and view.format is not None
            if view.size < self.sizes.get(disk, 0):
                self._violate(INVARIANTS[4], f"{disk} went from {self.sizes[disk]} to {view.size}")
            if self.formats.setdefault(disk, view.format) != view.format:
                self._violate(INVARIANTS[5], f"{disk} {self.formats[disk]} -> {view.format}")
            self.sizes[disk] = view.size
        for gone in set(self.sizes) - set(views):
            del self.sizes[gone]
            self.formats.pop(gone, None)
        for template in self.model.templates:
            users = sorted(self.engine.template_users(template))
            expected = sorted(d for d, m in self.model.disks.items() if m.template == template)
            if not self._any_pending() and users != expected:
                self._violate(INVARIANTS[6], f"{template}: {users}, expected {expected}")
        for disk in DISKS:
            if self._pending(f"disk:{disk}"):
                continue
            seen = _describe_view(views.get(disk))
            wanted = _describe_model(self.model.disks.get(disk))
            if seen != wanted:
                self._violate(INVARIANTS[7], f"{disk}: the engine has {seen}, the model {wanted}")

    # -- the operation step -----------------------------------------------------------------

    def _perform(
        self,
        op: str,
        stream: str,
        request: Callable[[Engine, str], Any],
        argv: Sequence[str],
        *,
        valid: bool,
        apply: Apply,
        writes: bool = True,
        result: str | None = None,
    ) -> MultipleResults[str]:
        """Run one operation as the next step says (plainly, or crashing at a fault point), and
        check it against the model; returns ``result`` for a bundle when the request was valid."""
        STATS.steps += 1
        what = f"{op} {stream.partition(':')[2]}"
        valid = valid and not self._pending(stream)
        op_id = uuid.uuid4().hex
        if not valid:
            STATS.refusals += 1
            self._refused(what, lambda: request(self.engine, op_id))
            return multiple()
        STATS.operations += 1
        produced = multiple(result) if result is not None else multiple()
        crash, self.crash_next = (self.crash_next, None) if writes else (None, self.crash_next)
        if crash is None:
            try:
                request(self.engine, op_id)
            except DiskLedgerError as exc:
                self._violate(INVARIANTS[7], f"{what} was refused: {exc}")
            apply(self.model)
            if writes:  # an operation that changed nothing recorded nothing to repeat
                self.last_completed = (request, op_id, what)
            return produced
        point, how = crash
        STATS.crashes += 1
        if how == "in-process":
            with faults.armed(f"{op}@{point}:crash"):
                try:
                    request(self.engine, op_id)
                except faults.Crash:
                    pass
                except DiskLedgerError as exc:
                    self._violate(INVARIANTS[7], f"{what} was refused: {exc}")
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
                self._violate(INVARIANTS[7], f"{what} in a CLI process: {done.stderr.strip()}")
        self.unresolved[op_id] = Unresolved(stream, apply)
        self._resolve()
        return produced

    def _refused(self, what: str, call: Callable[[], Any]) -> None:
        before = self._event_count()
        try:
            call()
        except BackendError as exc:
            self._violate(INVARIANTS[8], f"{what} reached storage before it was refused: {exc}")
        except DiskLedgerError:
            pass
        else:
            self._violate(INVARIANTS[7], f"{what} was accepted; the model expected a refusal")
        if self._event_count() != before:
            self._violate(INVARIANTS[8], f"{what} was refused but appended events")

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

    def _after_recovery(self) -> None:
        STATS.recoveries += 1
        self._resolve()
        pending = [f"{e.stream} {e.operation.op}" for e in self.engine.store.pending()]
        if pending:
            self._violate(INVARIANTS[10], f"still pending: {pending}")

    # -- helpers ----------------------------------------------------------------------------

    def _violate(self, invariant: str, details: str) -> None:
        STATS.violations += 1
        raise InvariantViolation(invariant, details)

    def _pending(self, stream: str) -> bool:
        return any(u.stream == stream for u in self.unresolved.values())

    def _any_pending(self) -> bool:
        return bool(self.unresolved)

    def _absent(self, disk: str) -> bool:
        return disk not in self.model.disks

    def _live(self, disk: str) -> ModelDisk | None:
        return self.model.disks.get(disk)

    def _disk_format(self) -> str:
        return self.engine.backend.disk_format

    def _event_count(self) -> int:
        return sum(1 for _ in self.engine.store.read_all())


_VALIDATORS: dict[str, Validator[Any]] = {
    DISK: Validator(DISK_TABLE),
    "template": Validator(TEMPLATE_TABLE),
}


def _describe_view(view: Any) -> tuple[Any, ...] | None:
    if view is None:
        return None
    snapshots = tuple((s.name, s.size) for s in view.snapshots)
    return (view.state.value, view.size, view.format, view.template, snapshots)


def _describe_model(model: ModelDisk | None) -> tuple[Any, ...] | None:
    if model is None:
        return None
    snapshots = tuple(model.snapshots.items())
    return (model.state.value, model.size, model.format, model.template, snapshots)


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
