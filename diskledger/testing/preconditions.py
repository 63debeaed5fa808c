"""What a rule may act on now, read from the model: the live, free and attached disks, the
uncached templates, the disks with snapshots, what a domain's use of a disk refuses, and
whether the example may spend a step on a request that can only be refused. The machine's
preconditions and draws ask these; the checks ask what is pending."""

from __future__ import annotations

from collections.abc import Sequence

from diskledger.testing.draws import DISKS, LIVE_DISKS, SNAPSHOTS, TEMPLATES
from diskledger.testing.model import Content, Model, ModelDisk, Unresolved
from diskledger.testing.stats import HarnessStats

__all__ = ["REFUSED_WHILE_ATTACHED", "SNAPSHOTS_IN_USE", "Preconditions"]

REFUSED_WHILE_ATTACHED = frozenset(
    {
        "attach",
        "delete",
        "rollback",
        "export",
        "flatten",
        "snapshot",
        "remove-snapshot",
        "direct-snapshot",
    }
)
"""What the model expects the engine to refuse on a disk a domain uses (the harness's own
statement of the rule, not the engine's table: a change there shows up here as a violation)."""
SNAPSHOTS_IN_USE = frozenset({"snapshot", "remove-snapshot", "direct-snapshot"})
"""...except these, on a backend with ``Capability.SNAPSHOT_IN_USE`` (RBD)."""


class Preconditions:
    """The questions about the example's state that the lifecycle machine's rules ask before
    they are drawn and while they draw (a mixin of ``DiskLifecycle``)."""

    model: Model
    unresolved: dict[str, Unresolved]
    """Crashed operations whose outcome the ledger does not show yet, by operation id."""
    here: HarnessStats
    """This example's counts."""
    snapshots_in_use: bool
    """The backend has ``Capability.SNAPSHOT_IN_USE``."""

    def _pending(self, stream: str) -> bool:
        return any(u.stream == stream for u in self.unresolved.values())

    def _any_pending(self) -> bool:
        return bool(self.unresolved)

    def _absent(self, disk: str) -> bool:
        return disk not in self.model.disks

    def _live(self, disk: str) -> ModelDisk | None:
        return self.model.disks.get(disk)

    def _allowed(self, disk: ModelDisk | None, op: str) -> bool:
        """Whether ``op`` may run on ``disk``: it exists, and no domain uses it, or the
        operation may run under a guest (see ``REFUSED_WHILE_ATTACHED``)."""
        if disk is None:
            return False
        if disk.attached is None or op not in REFUSED_WHILE_ATTACHED:
            return True
        return op in SNAPSHOTS_IN_USE and self.snapshots_in_use

    def _live_names(self, op: str | None = None) -> list[str]:
        """Live disks with nothing pending that ``op`` may act on."""
        return [
            d
            for d in DISKS
            if d in self.model.disks
            and not self._pending(f"disk:{d}")
            and (op is None or self._allowed(self.model.disks[d], op))
        ]

    def _free_names(self) -> list[str]:
        return [d for d in DISKS if d not in self.model.disks and not self._pending(f"disk:{d}")]

    def _uncached(self) -> list[str]:
        return [
            t
            for t in sorted(TEMPLATES)
            if t not in self.model.templates and not self._pending(f"template:{t}")
        ]

    def _unused_templates(self) -> list[str]:
        """Cached templates no disk of the model was made from: what ``template gc`` collects."""
        used = {m.template for m in self.model.disks.values()}
        return [
            t
            for t in sorted(self.model.templates)
            if t not in used and not self._pending(f"template:{t}")
        ]

    def _may_create(self) -> bool:
        """While fewer than ``LIVE_DISKS`` disks live (of six names): each disk then lives long
        enough to be snapshotted, written and rolled back."""
        return bool(self._free_names()) and len(self.model.disks) < LIVE_DISKS

    def _may_delete(self) -> bool:
        """While ``LIVE_DISKS`` disks live, one of which may be deleted."""
        return len(self.model.disks) >= LIVE_DISKS and bool(self._live_names("delete"))

    def _snapshottable(self) -> list[str]:
        return [
            d
            for d in self._live_names("snapshot")
            if len(self.model.disks[d].snapshots) < len(SNAPSHOTS)
        ]

    def _with_snapshots(self, op: str, at_least: int = 1) -> list[str]:
        """Disks ``op`` may act on with ``at_least`` snapshots (that hold different bytes,
        when more than one)."""
        return [
            d
            for d in self._live_names(op)
            if len(self.model.disks[d].snapshots) >= at_least
            and (at_least < 2 or _differ(list(self.model.disks[d].saved.values())))
        ]

    def _attached(self) -> list[str]:
        return [d for d in self._live_names() if self.model.disks[d].attached]

    def _writable(self) -> list[str]:
        return [d for d in self._live_names() if self.model.disks[d].attached is None]

    def _may_refuse(self) -> bool:
        """Whether a rule that can only be refused now may be drawn: while this example has
        made fewer than one refused request per four operations."""
        return 4 * self.here.refusals < self.here.operations


def _differ(contents: Sequence[Content]) -> bool:
    return any(c != contents[0] for c in contents[1:])
