"""Leases: a fetcher renews its claim on a template while it works, so that others wait for it,
and take over when it stops renewing."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from types import TracebackType

from diskledger.events import LEASE_RENEWED, Metadata, operation_event
from diskledger.store import EventStore

__all__ = ["LEASE_SECONDS", "LeaseKeeper", "expired", "expiry"]

LEASE_SECONDS = float(os.environ.get("DISKLEDGER_LEASE_SECONDS", "30"))
"""How long a lease runs without renewal; renewed every third of it."""


def expiry(seconds: float = LEASE_SECONDS) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="microseconds")


def expired(expires: str | None) -> bool:
    return expires is not None and datetime.fromisoformat(expires) < datetime.now(UTC)


class LeaseKeeper:
    """Appends ``<kind>.<op>.lease-renewed`` every third of the lease while the block runs.

    It owns the stream's version while it runs: ``version`` is what the writer appends its outcome
    with once the block has ended (and the renewals with it).
    """

    def __init__(
        self, store: EventStore, stream: str, version: int, kind: str, op: str, meta: Metadata
    ) -> None:
        self.store = store
        self.stream = stream
        self.version = version
        self._event = (kind, op, meta)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease {stream}", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        kind, op, meta = self._event
        while not self._stop.wait(LEASE_SECONDS / 3):
            renewal = operation_event(kind, op, LEASE_RENEWED, {"expires": expiry()}, meta)
            try:
                self.store.append(self.stream, self.version, [renewal])
            except BaseException as exc:  # the outcome append will meet the same trouble
                self.error = exc
                return
            self.version += 1
