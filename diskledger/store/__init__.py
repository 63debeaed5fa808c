"""The append-only ledger: the ``EventStore`` contract and its SQLAlchemy implementation."""

from diskledger.store.contract import EventStore, MemberRecord, PendingEntry
from diskledger.store.hashing import GENESIS, canonical_json, event_hash
from diskledger.store.sql import SqlEventStore, open_store

__all__ = [
    "GENESIS",
    "EventStore",
    "MemberRecord",
    "PendingEntry",
    "SqlEventStore",
    "canonical_json",
    "event_hash",
    "open_store",
]
