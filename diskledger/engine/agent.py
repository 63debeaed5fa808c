"""The agent: a long-running member that keeps its lease and takes over members that stopped.

``diskledger agent`` runs ``serve`` on every host of a shared ledger. It joins at once (so that
its epoch exists before anything fails), renews its lease from the membership's heartbeat, and
every ``LeaseSettings.scan_every`` seconds runs one recovery pass: the operations of dead
processes on this host, and a takeover scan for members on other hosts
(``diskledger.engine.takeover``). Each pass that did something is handed to ``report``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from diskledger.engine.recovery import RecoveryReport, recover
from diskledger.engine.runtime import Runtime
from diskledger.engine.takeover import Observer
from diskledger.errors import DiskLedgerError, Fenced, InvalidInput

__all__ = ["serve"]

log = logging.getLogger(__name__)


def serve(
    rt: Runtime,
    stop: threading.Event,
    report: Callable[[RecoveryReport], None] = lambda _: None,
) -> None:
    """Run until ``stop`` is set (then leave the ledger cleanly) or this member is fenced."""
    membership = rt.membership
    if membership is None:
        raise InvalidInput(
            "the agent needs a shared ledger with members (PostgreSQL, or DISKLEDGER_MEMBERS=1)"
        )
    membership.owner()
    log.info("agent %s serving (epoch %s)", membership.member, membership.epoch)
    observer = Observer()
    while not stop.wait(membership.settings.scan_every):
        try:
            done = recover(rt, observer=observer)
        except Fenced:
            raise
        except DiskLedgerError as exc:
            # A database restart or a partition: the heartbeat decides whether we are still a
            # member; the next scan tries again.
            log.warning("agent %s: recovery pass failed: %s", membership.member, exc)
            continue
        if done.rolled_forward or done.rolled_back or done.needs_operator:
            report(done)
    membership.leave()
