"""Replay folds as ``evolve`` folds: the same views, the same refusals, for any events."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskledger.errors import IllegalTransition
from diskledger.events import Metadata, NewEvent, intent_params, loads, metadata_op_id
from diskledger.states import (
    DISK_TABLE,
    MEMBER_TABLE,
    TEMPLATE_TABLE,
    DiskView,
    PendingOperation,
    evolve,
)
from diskledger.states.replay import Replay
from diskledger.states.streams import empty_view

STREAMS = ("disk:vm/a", "disk:vm/b", "template:host/base", "member:h1/m")
TABLES = {"disk": DISK_TABLE, "template": TEMPLATE_TABLE, "member": MEMBER_TABLE}
EVERY_TYPE = sorted(DISK_TABLE.event_types | TEMPLATE_TABLE.event_types | MEMBER_TABLE.event_types)


def payload(draw: st.DrawFn) -> dict[str, Any]:
    """Every field any fold reads, so that an event is judged by the lifecycle, not a KeyError;
    sizes and snapshot names from small sets, so that guards both hold and refuse."""
    size = draw(st.sampled_from([512, 1024, 2048, 4096]))
    snapshot = draw(st.sampled_from(["s1", "s2"]))
    params: dict[str, Any] = {
        "size": size,
        "snapshot": snapshot,
        "backend": "qcow2",
        "template": draw(st.sampled_from([None, "base"])),
        "preallocated": draw(st.booleans()),
        "source": "/img",
        "lease_expires": "2026-01-01T00:00:00+00:00",
    }
    if draw(st.booleans()):
        params["encryption"] = {"format": "luks", "provider": "local", "key": "k1"}
    data: dict[str, Any] = {
        "format": "qcow2",
        "size": size,
        "virtual_size": size,
        "location": "/d",
        "backing": None,
        "template": "base",
        "domain": "dom",
        "domain_uuid": "u-1",
        "target_dev": "vdb",
        "bus": "virtio",
        "by": "member:h2/m",
        "by_epoch": 7,
        "host": "h1",
        "lease_ttl": 30.0,
        "addresses": ["10.0.0.1:0/1"],
        "expires": "2026-01-01T00:00:30+00:00",
        "reason": "lease-expired",
    }
    shape = draw(st.sampled_from(["intent", "bare"]))
    if shape == "intent":
        owner = draw(st.sampled_from([None, {"member": "member:h1/m", "epoch": 3}]))
        artifacts = [{"kind": "file", "location": "/d"}]
        return {"params": params, "artifacts": artifacts, "owner": owner, **data}
    return {**params, **data}  # an intent without "params" is judged by the whole payload


@st.composite
def ledgers(draw: st.DrawFn) -> list[tuple[str, str, dict[str, Any], str | None]]:
    """Events for a few streams; most of them ones the stream's current state has a row for,
    so that long lives happen, and some of any type, op_id or stream (refused)."""
    views: dict[str, Any] = {}
    out: list[tuple[str, str, dict[str, Any], str | None]] = []
    for _ in range(draw(st.integers(0, 50))):
        stream = draw(st.sampled_from(STREAMS))
        view = views.get(stream) or empty_view(stream)
        table = TABLES[stream.partition(":")[0]]
        pending = view.pending
        if pending is not None:  # its outcome, a claim, ...: mostly with its op_id
            prefix = f"{table.kind}.{pending.op}."
            legal = sorted(t for t in table.event_types if t.startswith(prefix))
            legal = [t for t in legal if not t.endswith(".started")]
            legal += [f"{prefix}completed"] * len(legal)  # most operations complete
        else:  # an intent or a fact from this state
            legal = sorted(
                {
                    t.event_type
                    for t in table.transitions
                    if t.source == view.state
                    and (t.event_type.endswith(".started") or t.event_type.count(".") == 1)
                }
            )
        if legal and draw(st.integers(0, 9)) > 1:
            event_type = draw(st.sampled_from(legal))
        else:
            event_type = draw(st.sampled_from(EVERY_TYPE))
        mine = pending.op_id if pending is not None else f"op-{len(out)}"
        op_id = draw(st.sampled_from([mine, mine, mine, "op-x", None]))
        data = payload(draw)
        out.append((stream, event_type, data, op_id))
        with contextlib.suppress(IllegalTransition):
            views[stream] = evolve(view, NewEvent(event_type, data, Metadata(op_id=op_id)))
    return out


def evolve_fold(
    events: list[tuple[str, str, dict[str, Any], str | None]],
) -> tuple[dict[str, Any], list[str]]:
    views: dict[str, Any] = {}
    refused: list[str] = []
    for stream, event_type, data, op_id in events:
        view = views.get(stream) or empty_view(stream)
        try:
            views[stream] = evolve(view, NewEvent(event_type, data, Metadata(op_id=op_id)))
        except IllegalTransition as exc:
            refused.append(str(exc))
    return views, refused


def replay_fold(
    events: list[tuple[str, str, dict[str, Any], str | None]],
    *,
    as_text: bool,
    restart_at: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    replay = Replay()
    refused: list[str] = []
    for n, (stream, event_type, data, op_id) in enumerate(events):
        if n == restart_at:
            replay = Replay(replay.views())  # from a checkpoint of views
        try:
            replay.apply(stream, event_type, json.dumps(data) if as_text else data, op_id)
        except IllegalTransition as exc:
            refused.append(str(exc))
    return replay.views(), refused


@given(ledgers(), st.booleans(), st.data())
@settings(max_examples=150, deadline=None)
def test_replay_and_evolve_agree_on_any_events(
    events: list[tuple[str, str, dict[str, Any], str | None]], as_text: bool, data: st.DataObject
) -> None:
    expected = evolve_fold(events)
    assert replay_fold(events, as_text=as_text) == expected
    restart = data.draw(st.integers(0, max(len(events), 1)))
    assert replay_fold(events, as_text=True, restart_at=restart) == expected


def test_a_whole_disk_life_with_every_kind_of_outcome() -> None:
    def op(name: str, op_id: str, params: dict[str, Any], outcome: str, data: Any) -> list[Any]:
        intent = {"params": params, "artifacts": [{"kind": "file", "location": "/d"}]}
        return [
            ("disk:vm/a", f"disk.{name}.started", intent, op_id),
            ("disk:vm/a", f"disk.{name}.{outcome}", data, op_id),
        ]

    events = [
        *op(
            "create",
            "c",
            {"size": 1024},
            "completed",
            {"format": "raw", "size": 1024, "location": "/d"},
        ),
        *op("resize", "r1", {"size": 512}, "completed", {"size": 512}),  # a guard refuses it
        *op("resize", "r2", {"size": 2048}, "failed", {"error": "x"}),
        *op("resize", "r3", {"size": 2048}, "completed", {"size": 2048}),
        *op("snapshot", "s1", {"snapshot": "s1"}, "completed", {"size": 2048}),
        *op("snapshot", "s2", {"snapshot": "s1"}, "completed", {}),  # the name is taken
        *op("export", "e", {"target": "/x"}, "needs-operator", {"why": "?"}),
        ("disk:vm/a", "disk.export.taken-over", {"by": "member:h2/m", "by_epoch": 9}, "e"),
        ("disk:vm/a", "disk.export.completed", {"target": "/x"}, "other-op"),  # not its op
    ]
    views, refused = evolve_fold(events)
    assert replay_fold(events, as_text=True) == (views, refused)
    assert len(refused) == 5
    view = views["disk:vm/a"]
    assert isinstance(view, DiskView) and view.size == 2048 and view.snapshot_names == ("s1",)
    assert view.pending == PendingOperation(
        "export",
        "e",
        {"target": "/x"},
        ({"kind": "file", "location": "/d"},),
        view.pending.started_version if view.pending else 0,
        {"member": "member:h2/m", "epoch": 9},
    )


def test_a_stream_whose_every_event_is_refused_has_no_view() -> None:
    replay = Replay()
    with pytest.raises(IllegalTransition):
        replay.apply("disk:vm/a", "disk.resize.completed", "{}", "op")
    with pytest.raises(IllegalTransition, match="not a disk event"):
        replay.apply("disk:vm/a", "template.fetch.started", "{}", "op")
    assert replay.views() == {} and replay.view("disk:vm/a") is None and len(replay) == 0


def test_the_fast_decoders_decode_as_the_json_module_does() -> None:
    for text in (
        '{"params":{"size":1,"name":"é"},"artifacts":[]}',
        '{"size":123456789012345678901234567890}',
        '{"x":NaN,"params":{"y":Infinity}}',
        '{"params":[1,2]}',
        '{"a":1.5e300}',
    ):
        decoded = json.loads(text)
        assert repr(loads(text)) == repr(decoded)
        assert repr(intent_params(text)) == repr(decoded.get("params", decoded))
    for meta in (Metadata(op_id="op-1"), Metadata(op_id=None)):
        assert metadata_op_id(json.dumps(meta.to_json())) == meta.op_id
    assert metadata_op_id('{"host":"h"}') is None
