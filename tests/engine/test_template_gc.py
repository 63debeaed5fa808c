"""Template garbage collection (``Engine.collect_templates``, the ``template.remove`` operation):
exactly the unused-and-old templates go, each by a recorded operation; in-use, young and pending
ones stay; a create that binds a template while its removal runs wins.

Ages are measured to an injected ``now`` against the times the ledger recorded, never by sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from diskledger import faults
from diskledger.engine import Engine
from diskledger.engine.operations.template_gc import DEFAULT_AGE, parse_duration
from diskledger.errors import Conflict, InvalidInput, OperationPending, TemplateNotFound
from diskledger.events import NewEvent
from diskledger.states import TemplateState


def add(engine: Engine, template: str, files: dict[str, Path]) -> None:
    engine.add_template(template, files["qcow2"], "qcow2")


def event_time(engine: Engine, stream: str, event_type: str) -> datetime:
    """When the last ``event_type`` of ``stream`` was recorded."""
    return [e for e in engine.store.read_stream(stream) if e.type == event_type][-1].time


def template_file(engine: Engine, template: str) -> Path:
    return Path(engine.runtime.templates.location(template))


def test_the_default_age_is_novas_24_hours() -> None:
    assert timedelta(seconds=86400) == DEFAULT_AGE


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("3600", 3600), ("0", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "5x", "-5m", "1h30m", "24 hours"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid duration"):
        parse_duration(text)


def test_gc_removes_exactly_the_unused_and_old(
    engine: Engine, template_files: dict[str, Path]
) -> None:
    for name in ("old", "used", "young"):
        add(engine, name, template_files)
    engine.create("vm-1/root", template="used")
    engine.create("vm-2/root", template="young")
    engine.delete("vm-2/root")  # young's last user went away just now
    t_old = event_time(engine, engine.runtime.template_stream("old"), "template.fetch.completed")
    t_young = event_time(engine, "disk:vm-2/root", "disk.delete.completed")
    assert t_young > t_old
    age = (t_young - t_old) / 2

    report = engine.collect_templates(age, now=t_young)

    actions = {c.template: c.action for c in report.templates}
    assert actions == {"old": "removed", "used": "kept", "young": "kept"}
    assert report.removed == ("old",)
    since = {c.template: c.unused_since for c in report.templates}
    assert since["old"] == t_old and since["young"] == t_young  # the ledger's times
    assert {c.template: c.users for c in report.templates}["used"] == ("vm-1/root",)
    assert not template_file(engine, "old").exists()
    assert template_file(engine, "used").exists() and template_file(engine, "young").exists()
    with pytest.raises(TemplateNotFound):
        engine.template("old")
    history = [e.type for e in engine.store.read_stream(engine.runtime.template_stream("old"))]
    assert history[-2:] == ["template.remove.started", "template.remove.completed"]
    assert engine.verify().ok

    # A day later everything unused goes; the disk's template stays.
    later = engine.collect_templates(now=t_young + DEFAULT_AGE)
    assert later.removed == ("young",)
    assert engine.template("used").state is TemplateState.CACHED
    assert engine.verify().ok


def test_a_released_pin_counts_from_its_release(
    engine: Engine, template_files: dict[str, Path]
) -> None:
    add(engine, "base", template_files)
    with faults.armed("create@mid-effect:eio"), pytest.raises(Exception, match="fault injected"):
        engine.create("vm-1/root", template="base")
    released = event_time(engine, "disk:vm-1/root", "disk.template-released")
    report = engine.collect_templates(0, dry_run=True)
    assert [(c.template, c.unused_since) for c in report.templates] == [("base", released)]


def test_dry_run_changes_nothing_and_lists_what_it_would_remove(
    engine: Engine, template_files: dict[str, Path]
) -> None:
    add(engine, "a", template_files)
    add(engine, "b", template_files)
    engine.create("vm-1/root", template="b")
    head = engine.store.head()
    report = engine.collect_templates(0, dry_run=True)
    assert report.dry_run and report.removed == ("a",)
    assert [c.action for c in report.templates] == ["would-remove", "kept"]
    assert engine.store.head() == head
    assert template_file(engine, "a").exists()


def test_a_template_with_a_fetch_pending_is_kept(
    engine: Engine, template_files: dict[str, Path]
) -> None:
    with faults.armed("fetch@after-intent:crash"), pytest.raises(faults.Crash):
        add(engine, "base", template_files)
    report = engine.collect_templates(0)
    (kept,) = report.templates
    assert kept.action == "kept" and "fetch" in kept.reason and "pending" in kept.reason
    with pytest.raises(OperationPending):
        engine.remove_template("base")


def test_a_template_in_use_is_refused_with_nothing_recorded(
    engine: Engine, template_files: dict[str, Path]
) -> None:
    add(engine, "base", template_files)
    engine.create("vm-1/root", template="base")
    head = engine.store.head()
    with pytest.raises(Conflict, match="in use by disk vm-1/root"):
        engine.remove_template("base")
    assert engine.store.head() == head


def test_a_removed_template_can_be_added_again_and_used(
    engine: Engine, template_files: dict[str, Path]
) -> None:
    add(engine, "base", template_files)
    engine.create("vm-1/root", template="base")
    engine.delete("vm-1/root")
    assert engine.collect_templates(0).removed == ("base",)
    add(engine, "base", template_files)
    engine.create("vm-2/root", template="base")
    assert engine.template_users("base") == ["vm-2/root"]
    assert engine.collect_templates(0).removed == ()
    assert engine.verify().ok


def test_a_create_that_binds_during_the_removal_wins(
    engine: Engine, template_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create that read the template as cached before the removal's intent binds it after:
    the removal sees the pin once the template is moved aside, puts it back, and fails."""
    add(engine, "base", template_files)
    rt = engine.runtime
    store = rt.templates
    set_aside = store.set_aside
    view = engine.template("base")

    def racing(template: str, token: str) -> None:
        set_aside(template, token)
        bound = NewEvent(
            "disk.template-bound",
            {
                "template": "base",
                "template_stream": rt.template_stream("base"),
                "template_version": view.version,
                "format": view.format,
                "virtual_size": view.virtual_size,
            },
            rt.metadata("racing-create"),
        )
        rt.store.append("disk:vm-1/root", 0, [bound])

    monkeypatch.setattr(store, "set_aside", racing)
    report = engine.collect_templates(0)
    (kept,) = report.templates
    assert kept.action == "kept" and "in use by disk vm-1/root" in kept.reason
    assert template_file(engine, "base").exists()
    assert engine.template("base").state is TemplateState.CACHED
    events = engine.store.read_stream(rt.template_stream("base"))
    assert events[-1].type == "template.remove.failed"
    assert events[-1].data["recovery"]["decision"] == "roll-back"
    monkeypatch.undo()
    engine.create("vm-2/root", template="base")  # still usable


@pytest.mark.parametrize(
    ("point", "left"), [("after-intent", "cached"), ("mid-effect", None), ("after-effect", None)]
)
def test_a_crashed_removal_is_recovered(
    engine: Engine, template_files: dict[str, Path], point: str, left: str | None
) -> None:
    add(engine, "base", template_files)
    with faults.armed(f"remove@{point}:crash"), pytest.raises(faults.Crash):
        engine.remove_template("base")
    # Before recovery the template is set aside or gone under a removal still pending: in
    # flight, not drift (found by the harness, which now draws removals).
    before = engine.verify()
    assert before.ok, before.to_json()
    report = engine.recover()
    done = report.rolled_back if left else report.rolled_forward
    assert [o.op for o in done] == ["remove"], report.to_json()
    if left is None:
        with pytest.raises(TemplateNotFound):
            engine.template("base")
        assert not template_file(engine, "base").exists()
    else:
        assert engine.template("base").state.value == left
        assert template_file(engine, "base").exists()
    assert not list(template_file(engine, "base").parent.glob("*.tmp-*"))
    assert engine.verify().ok
    assert engine.recover(dry_run=True).pending == []


def test_a_negative_age_is_refused(engine: Engine) -> None:
    with pytest.raises(InvalidInput):
        engine.collect_templates(-1)


def test_an_ageless_clock_keeps_everything_young(
    engine: Engine, template_files: dict[str, Path]
) -> None:
    add(engine, "base", template_files)
    now = datetime.now(UTC)
    assert engine.collect_templates(timedelta(hours=1), now=now).removed == ()
    assert engine.collect_templates(timedelta(hours=1), now=now + timedelta(hours=2)).removed == (
        "base",
    )
