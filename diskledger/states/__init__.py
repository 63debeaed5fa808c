"""The lifecycles of disks, templates and members: states, transition tables, the pure fold."""

from diskledger.states.disk import (
    DISK_TABLE,
    Attachment,
    DiskState,
    DiskView,
    Encryption,
    PendingOperation,
    Snapshot,
)
from diskledger.states.evolve import EventLike, evolve, fold, params_of
from diskledger.states.member import MEMBER_TABLE, MemberState, MemberView
from diskledger.states.table import Row, Table, Transition
from diskledger.states.template import TEMPLATE_TABLE, TemplateState, TemplateView

__all__ = [
    "DISK_TABLE",
    "MEMBER_TABLE",
    "TEMPLATE_TABLE",
    "Attachment",
    "DiskState",
    "DiskView",
    "Encryption",
    "EventLike",
    "MemberState",
    "MemberView",
    "PendingOperation",
    "Row",
    "Snapshot",
    "Table",
    "TemplateState",
    "TemplateView",
    "Transition",
    "evolve",
    "fold",
    "params_of",
]
