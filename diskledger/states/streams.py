"""Stream ids: ``disk:<instance>/<name>``, ``template:<scope>/<template>``, ``member:<id>``."""

from __future__ import annotations

from diskledger.states.disk import DiskView
from diskledger.states.member import MemberView
from diskledger.states.template import TemplateView

__all__ = [
    "DISK",
    "MEMBER",
    "TEMPLATE",
    "disk_stream",
    "empty_view",
    "member_stream",
    "stream_kind",
    "template_stream",
]

DISK = "disk"
TEMPLATE = "template"
MEMBER = "member"
_KINDS = (DISK, TEMPLATE, MEMBER)


def disk_stream(disk: str) -> str:
    return f"{DISK}:{disk}"


def template_stream(scope: str, template: str) -> str:
    return f"{TEMPLATE}:{scope}/{template}"


def member_stream(member: str) -> str:
    return f"{MEMBER}:{member}"


def stream_kind(stream: str) -> str:
    kind, sep, _ = stream.partition(":")
    if not sep or kind not in _KINDS:
        raise ValueError(f"not a diskledger stream id: {stream!r}")
    return kind


def empty_view(stream: str) -> DiskView | TemplateView | MemberView:
    """The view of a stream with no events: the initial state of its lifecycle."""
    kind = stream_kind(stream)
    key = stream.partition(":")[2]
    if kind == DISK:
        return DiskView(disk=key)
    if kind == MEMBER:
        return MemberView(member=key)
    return TemplateView(template=key.rpartition("/")[2])
