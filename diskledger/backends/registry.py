"""Backends found by name: the built-in ones, those registered in process, and those installed
distributions declare in the ``diskledger.backends`` entry-point group.

A backend is declared once, as a ``BackendSpec``: its name, how its settings are read from the
environment, how it is made, and where it keeps its templates. The built-in modules declare
theirs as ``SPEC`` (``raw.py``, ``qcow2.py``, ``parallels.py``, ``rbd/``, ``lvm/``). A third
party declares its own in its distribution's metadata, for example in ``pyproject.toml``::

    [project.entry-points."diskledger.backends"]
    tiny = "tiny_backend:SPEC"

The entry point's name is the backend's name; its object is a ``BackendSpec`` (not a factory
returning one) whose ``name`` is that same name. It is imported only when that name is first
asked for, and remembered. Names are looked up in this order: built-ins, then registered specs,
then entry points, so neither can shadow a built-in.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from diskledger.backends.contract import Backend, TemplateStore
from diskledger.errors import InvalidInput, UnknownBackend

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["ENTRY_POINT_GROUP", "BackendSpec", "names", "register", "spec"]

ENTRY_POINT_GROUP: Final = "diskledger.backends"

_BUILT_IN: Final[Mapping[str, str]] = {
    "raw": "diskledger.backends.raw",
    "qcow2": "diskledger.backends.qcow2",
    "rbd": "diskledger.backends.rbd",
    "lvm": "diskledger.backends.lvm",
    "parallels": "diskledger.backends.parallels",
}
"""Each built-in backend's name and the module whose ``SPEC`` declares it (imported on first
use)."""


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """How a backend is declared: once, by name.

    ``make(root, load_settings(environ))`` is the backend; ``templates(backend, root,
    max_virtual_size)`` is where that backend keeps its templates. ``root`` is the directory for
    the engine's local files (the ledger, staging, and the disks of file backends).
    """

    name: str
    """How configuration (``DISKLEDGER_BACKEND``) and the ledger's disk records name it."""
    load_settings: Callable[[Mapping[str, str]], object]
    """Its settings from DISKLEDGER_* environment variables; raises InvalidInput (one clear line)
    on bad values. Unset variables take their defaults: every backend loads from ``{}``."""
    make: Callable[[str, object], Backend]
    """(root, settings) -> the backend; ``settings`` is what ``load_settings`` returned."""
    templates: Callable[[Backend, str, int], TemplateStore]
    """(backend, root, max_virtual_size) -> where it keeps templates (a template claiming a
    larger virtual size is refused)."""


_lock = threading.RLock()  # re-entrant: a module imported under it may call register()
_specs: dict[str, BackendSpec] = {}
"""Every spec looked up so far, by name."""
_registered: dict[str, BackendSpec] = {}


def register(spec: BackendSpec) -> None:
    """Make ``spec`` known by its name, in this process (tests, embedders). Registering the
    same spec again is a no-op; another spec under a name already taken (a built-in's
    included) is ``InvalidInput``."""
    with _lock:
        taken = _registered.get(spec.name)
        if taken is None and spec.name in _BUILT_IN:
            taken = _built_in(spec.name)
        if taken is not None and taken != spec:
            raise InvalidInput(f"a backend named {spec.name!r} is registered already")
        _registered[spec.name] = spec
        _specs[spec.name] = spec


def spec(name: str) -> BackendSpec:
    """The backend called ``name``: built in, registered, or declared by an installed
    distribution's entry point (imported now, once). ``UnknownBackend`` when none is;
    ``InvalidInput`` naming the entry point and its distribution when it cannot be loaded, is
    not a ``BackendSpec``, names another backend, or two distributions declare the name."""
    with _lock:
        found = _specs.get(name)
        if found is None:
            if name in _BUILT_IN:
                found = _built_in(name)
            elif name in _registered:
                found = _registered[name]
            else:
                found = _load(name)
            _specs[name] = found
        return found


def names() -> tuple[str, ...]:
    """Every backend name known: the built-ins (raw, qcow2, rbd, lvm, parallels), then the
    registered and the entry-point names, sorted. Entry points are listed, not imported."""
    with _lock:
        others = (set(_registered) | set(_entry_points())) - set(_BUILT_IN)
    return (*_BUILT_IN, *sorted(others))


def _built_in(name: str) -> BackendSpec:
    declared = importlib.import_module(_BUILT_IN[name]).SPEC
    assert isinstance(declared, BackendSpec) and declared.name == name
    return declared


@functools.cache
def _entry_points() -> Mapping[str, tuple[EntryPoint, ...]]:
    """The group's entry points by name, listed once per process. ``importlib.metadata`` is
    imported here: a built-in name never needs it, and importing it costs every command."""
    from importlib.metadata import entry_points

    by_name: dict[str, tuple[EntryPoint, ...]] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        by_name[point.name] = (*by_name.get(point.name, ()), point)
    return by_name


def _load(name: str) -> BackendSpec:
    points = _entry_points().get(name, ())
    if not points:
        raise UnknownBackend(name, names())
    if len(points) > 1:
        raise InvalidInput(
            f"backend {name!r} is declared by several entry points of group "
            f"{ENTRY_POINT_GROUP}: {'; '.join(_describe(p) for p in points)}"
        )
    point = points[0]
    try:
        loaded = point.load()
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise InvalidInput(
            f"backend {name!r}: cannot load {_describe(point)}: {type(exc).__name__}: {reason}"
        ) from exc
    if not isinstance(loaded, BackendSpec):
        raise InvalidInput(
            f"backend {name!r}: {_describe(point)} is a {type(loaded).__name__}, "
            "not a diskledger.backends.registry.BackendSpec"
        )
    if loaded.name != name:
        raise InvalidInput(
            f"backend {name!r}: {_describe(point)} declares the backend {loaded.name!r}"
        )
    return loaded


def _describe(point: EntryPoint) -> str:
    """``entry point tiny = tiny_backend:SPEC of tiny-backend 0.1``."""
    dist = point.dist
    source = f" of {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {point.name} = {point.value}{source}"
