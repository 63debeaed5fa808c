"""What the command line says when a command is refused or fails: the operator's words and a
hint of what to do next, on one line, and the exit status.

The engine's errors speak its own language (streams, event types, versions); that text stays for
``--debug`` and for embedders, who catch the exception types. Exit statuses are part of the
command line's contract (``docs/cli.md``) and never change meaning:

====  ==========================================================================================
0     done (or, for ``verify``, the ledger and storage agree)
1     refused or failed: bad input, no such disk, a conflict, storage or the ledger failed;
      nothing is half done (what ran was recorded, and its compensation with it)
2     usage error: the command line itself is wrong
3     needs an operator: an operation is in flight or was left pending (``diskledger recover``),
      this member was fenced or lost an operation to a takeover, ``verify`` found a problem, or
      ``watch`` met a gap or a broken hash chain
75    this member lost its lease on a shared ledger and the process left at once
      (``EX_TEMPFAIL``, ``docs/multihost.md``): a supervisor starts it again as a new member
====  ==========================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from diskledger.errors import (
    CommandNotFound,
    ConcurrencyError,
    DiskLedgerError,
    DiskNotFound,
    FeedGap,
    Fenced,
    HypervisorUnavailable,
    IllegalTransition,
    OperationPending,
    OwnershipLost,
    SnapshotNotFound,
    TemplateNotFound,
)
from diskledger.render import human_size

if TYPE_CHECKING:
    from diskledger.engine import Engine

__all__ = ["DONE", "FAILED", "NEEDS_OPERATOR", "USAGE", "Explained", "explain"]

DONE: Final = 0
FAILED: Final = 1
USAGE: Final = 2
NEEDS_OPERATOR: Final = 3


@dataclass(frozen=True, slots=True)
class Explained:
    """One refusal or failure as the command line reports it."""

    line: str
    status: int


def explain(exc: DiskLedgerError, engine: Engine | None = None) -> Explained:
    """The operator's line for ``exc`` and the exit status. ``engine``, when the ledger is open,
    is asked about the disk or template concerned (its state, its size, its snapshots) so the
    line can say what is there; any failure to ask leaves the line without those details."""
    for kind, explainer in _EXPLAINERS:
        if isinstance(exc, kind):
            explained = explainer(exc, engine)
            if explained is not None:
                return explained
    return Explained(_one_line(str(exc)), FAILED)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _subject(stream: str) -> str:
    """``disk:vm/root`` → ``disk vm/root``; ``template:local/cirros`` → ``template cirros``."""
    kind, _, key = stream.partition(":")
    if kind == "template":
        key = key.rpartition("/")[2]
    return f"{kind} {key}" if key else stream


def _name(stream: str) -> str:
    return _subject(stream).partition(" ")[2]


def _disk_facts(engine: Engine | None, disk: str) -> str:
    """``created, 1.0 GiB`` for a disk the ledger knows, else ``""``."""
    if engine is None:
        return ""
    try:
        view = engine.show(disk)
    except DiskLedgerError:
        return ""
    return f"{view.state.value}, {human_size(view.size)}"


# The verb for each disk or template operation, as in "cannot be resized".
_PASSIVE: Final = {
    "create": "created",
    "import": "imported",
    "resize": "resized",
    "snapshot": "snapshotted",
    "rollback": "rolled back",
    "remove-snapshot": "stripped of a snapshot",
    "delete": "deleted",
    "export": "exported",
    "flatten": "flattened",
    "direct-snapshot": "copied to a snapshot",
    "attach": "attached",
    "detach": "detached",
    "fetch": "fetched",
    "remove": "removed",
}


def _operation(event_type: str) -> str:
    """``disk.resize.started`` → ``resize``."""
    parts = event_type.split(".")
    return parts[1] if len(parts) > 1 else event_type


def _illegal(exc: IllegalTransition, engine: Engine | None) -> Explained | None:
    subject, name, op = _subject(exc.stream), _name(exc.stream), _operation(exc.event_type)
    reason = str(exc).rpartition(f"'{exc.state}'")[2].removeprefix(": ")
    if exc.stream.startswith("disk:") and op in ("create", "import") and "exists" in reason:
        facts = _disk_facts(engine, name)
        there = f" ({facts})" if facts else ""
        return Explained(
            f"{subject} already exists{there}; delete it first or pick another name", FAILED
        )
    if exc.stream.startswith("template:") and op == "fetch":
        return Explained(
            f"{subject} is already cached; use it as it is, or add the new image under "
            "another name",
            FAILED,
        )
    if op == "snapshot" and "exists" in reason:
        snapshot = reason.partition(" ")[2].rpartition(" exists")[0]
        return Explained(
            f"{subject} already has a snapshot {snapshot}; pick another name, or remove that "
            f"one first (diskledger disk remove-snapshot {name} {snapshot.strip(chr(39))})",
            FAILED,
        )
    if exc.stream.startswith(("disk:", "template:")):
        verb = _PASSIVE.get(op, f"given a {op}")
        why = f" ({reason})" if reason else ""
        return Explained(
            f"{subject} cannot be {verb} while it is {exc.state}{why}; "
            f"see diskledger {subject.partition(' ')[0]} show {name}",
            FAILED,
        )
    return None


def _pending(exc: OperationPending, _engine: Engine | None) -> Explained:
    return Explained(
        f"{_subject(exc.stream)} has an operation in flight ({exc.op}, op {exc.op_id[:8]}); "
        "wait for it to finish, or if the process running it died, run diskledger recover",
        NEEDS_OPERATOR,
    )


def _concurrent(exc: ConcurrencyError, _engine: Engine | None) -> Explained:
    return Explained(
        f"{_subject(exc.stream)} changed while this command ran (another command recorded an "
        "operation first); look at it again (diskledger history) and retry if still wanted",
        FAILED,
    )


def _ownership(exc: OwnershipLost, _engine: Engine | None) -> Explained:
    return Explained(
        f"operation {exc.op_id[:8]} on {_subject(exc.stream)} was taken over by another "
        f"member, which finishes it; see diskledger history {_name(exc.stream)}",
        NEEDS_OPERATOR,
    )


def _fenced(exc: Fenced, _engine: Engine | None) -> Explained:
    return Explained(
        f"this member was fenced and stops here ({_one_line(str(exc))}); its operations are "
        "taken over by the others; start it again to rejoin",
        NEEDS_OPERATOR,
    )


def _feed_gap(exc: FeedGap, _engine: Engine | None) -> Explained:
    return Explained(
        f"{_one_line(str(exc))}; the ledger is not what it was: run diskledger verify",
        NEEDS_OPERATOR,
    )


def _no_disk(exc: DiskNotFound, _engine: Engine | None) -> Explained:
    return Explained(f"no disk {exc.disk} in the ledger; see diskledger disk list", FAILED)


def _no_template(exc: TemplateNotFound, _engine: Engine | None) -> Explained:
    return Explained(
        f"no template {exc.template} is cached; add it with diskledger template add "
        f"{exc.template} FILE --format FORMAT (or see diskledger template list)",
        FAILED,
    )


def _no_snapshot(exc: SnapshotNotFound, engine: Engine | None) -> Explained:
    known = ""
    if engine is not None:
        try:
            names = engine.show(exc.disk).snapshot_names
        except DiskLedgerError:
            names = None
        if names is not None:
            known = f"; its snapshots: {', '.join(names)}" if names else "; it has none"
    return Explained(f"disk {exc.disk} has no snapshot {exc.snapshot!r}{known}", FAILED)


def _no_tool(exc: CommandNotFound, _engine: Engine | None) -> Explained:
    return Explained(
        f"{_one_line(str(exc))}; install it (make setup installs everything diskledger uses)",
        FAILED,
    )


def _no_libvirt(exc: HypervisorUnavailable, _engine: Engine | None) -> Explained:
    return Explained(
        f"{_one_line(str(exc))}; is libvirtd running? (make libvirt-dev starts one)", FAILED
    )


_Explainer = Callable[[DiskLedgerError, "Engine | None"], "Explained | None"]


def _as(explainer: Callable[..., Explained | None]) -> _Explainer:
    return explainer


# Most specific first: the first type an error is an instance of explains it.
_EXPLAINERS: Final[tuple[tuple[type[DiskLedgerError], _Explainer], ...]] = (
    (IllegalTransition, _as(_illegal)),
    (OperationPending, _as(_pending)),
    (ConcurrencyError, _as(_concurrent)),
    (OwnershipLost, _as(_ownership)),
    (Fenced, _as(_fenced)),
    (FeedGap, _as(_feed_gap)),
    (DiskNotFound, _as(_no_disk)),
    (TemplateNotFound, _as(_no_template)),
    (SnapshotNotFound, _as(_no_snapshot)),
    (CommandNotFound, _as(_no_tool)),
    (HypervisorUnavailable, _as(_no_libvirt)),
)
