"""Stream ids: ``disk:<instance>/<name>`` and ``template:<scope>/<template>``."""

from __future__ import annotations

from diskledger.states.disk import DiskView
from diskledger.states.template import TemplateView

__all__ = ["DISK", "TEMPLATE", "disk_stream", "empty_view", "stream_kind", "template_stream"]

DISK = "disk"
TEMPLATE = "template"


def disk_stream(disk: str) -> str:
    return f"{DISK}:{disk}"


def template_stream(scope: str, template: str) -> str:
    return f"{TEMPLATE}:{scope}/{template}"


def stream_kind(stream: str) -> str:
    kind, sep, _ = stream.partition(":")
    if not sep or kind not in (DISK, TEMPLATE):
        raise ValueError(f"not a diskledger stream id: {stream!r}")
    return kind


def empty_view(stream: str) -> DiskView | TemplateView:
    """The view of a stream with no events: the initial state of its lifecycle."""
    kind = stream_kind(stream)
    key = stream.partition(":")[2]
    if kind == DISK:
        return DiskView(disk=key)
    return TemplateView(template=key.rpartition("/")[2])
