"""Package attributes imported on first use (PEP 562): a package whose exports would import more
than most of its callers need names the module each lives in, and a caller pays for that module
when it first asks for a name from it."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import cast

__all__ = ["exports"]


def exports(
    namespace: MutableMapping[str, object], where: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package whose globals are ``namespace``: a name in
    ``where`` is imported from the module named there when first asked for, then kept."""

    def attribute(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted(set(namespace) | set(cast(Iterable[str], namespace.get("__all__", ()))))

    return attribute, names
