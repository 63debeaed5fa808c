"""The ``transitions`` state machine and the Mermaid diagram, both built from the tables.

The machine validates one proposed event against a view (``Validator.target``); it has no
callbacks, so firing a trigger on its throw-away model changes nothing but the model's state.
Replay never uses it: ``evolve`` folds events directly from the same table.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from transitions import Machine, MachineError

from diskledger.events import COMPLETED, split_type
from diskledger.states.disk import DISK_TABLE
from diskledger.states.member import MEMBER_TABLE
from diskledger.states.table import Table
from diskledger.states.template import TEMPLATE_TABLE

__all__ = ["Validator", "mermaid", "states_markdown"]

S = TypeVar("S")


class _Model:
    """What the guards look at while the machine decides."""

    def __init__(self) -> None:
        self.view: Any = None
        self.params: Mapping[str, Any] = {}


class Validator(Generic[S]):
    """A ``transitions.Machine`` built from a ``Table`` with ``auto_transitions=False``."""

    def __init__(self, table: Table[Any]) -> None:
        self.table = table
        self._model = _Model()
        self._lock = threading.Lock()
        model = self._model

        def condition(name: str) -> Any:
            guard = table.guards[name]
            return lambda: guard(model.view, model.params)

        self._machine = Machine(
            model=model,
            states=[s.value for s in table.states],
            initial=table.initial.value,
            transitions=[
                {
                    "trigger": t.event_type,
                    "source": t.source.value,
                    "dest": t.dest.value,
                    "conditions": [condition(g) for g in t.when],
                }
                for t in table.transitions
            ],
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )

    def target(self, view: Any, event_type: str, params: Mapping[str, Any]) -> str | None:
        """The state ``event_type`` would move ``view`` to, or None when the table forbids it."""
        if event_type not in self.table.event_types:
            return None
        with self._lock:
            self._model.view = view
            self._model.params = params
            self._machine.set_state(view.state.value)
            try:
                moved = self._model.trigger(event_type)  # type: ignore[attr-defined]
            except MachineError:
                return None
            return str(self._model.state) if moved else None  # type: ignore[attr-defined]


def _node(state: str) -> str:
    return state.replace("-", "_")


def mermaid(table: Table[Any]) -> str:
    """A ``stateDiagram-v2`` of the table: one edge per state change an operation can make.

    The ``started``/``failed`` self-loops every operation has are left out: they are the protocol,
    not the lifecycle, and docs/states.md says so once.
    """
    lines = ["stateDiagram-v2"]
    for state in table.states:
        if state.value != _node(state.value):
            lines.append(f'    state "{state.value}" as {_node(state.value)}')
    lines.append(f"    [*] --> {_node(table.initial.value)}")
    seen: set[tuple[str, str, str]] = set()
    for t in table.transitions:
        _, op, phase = split_type(t.event_type)
        if phase is not None and t.source == t.dest and phase != COMPLETED:
            continue
        label = op if phase in (None, COMPLETED) else f"{op} {phase}"
        if t.when:
            label += f" [{', '.join(t.when)}]"
        edge = (_node(t.source.value), _node(t.dest.value), label)
        if edge not in seen:
            seen.add(edge)
            lines.append(f"    {edge[0]} --> {edge[1]}: {label}")
    return "\n".join(lines)


_HEADER = """# Lifecycles

Generated from the transition tables in `diskledger/states/` by
`python -m diskledger.states.machine > docs/states.md`; a test fails when this file and the tables
disagree, so edit the tables, not this file.

Every operation that touches storage is recorded as `<kind>.<op>.started` (the intent, naming
every artifact it may create), then `<kind>.<op>.completed` or `<kind>.<op>.failed`. `started`
leaves the state as it is (templates show `fetching`), `failed` returns to the state the operation
started from; the diagrams show what `completed` (and the single-event facts) do. Guards in
brackets choose between edges or refuse the event. `taken-over` (another member claimed the
operation of a fenced one) and `compensating` (the owner claims its failed operation before
removing anything) change who may finish an operation, not the state.

Members have no storage operations: each event is a fact. A member's epoch is the position of
its `member.joined`; lease renewals are not events (see docs/multihost.md).
"""


def states_markdown() -> str:
    parts = [_HEADER]
    for title, table in (
        ("Disk", DISK_TABLE),
        ("Template", TEMPLATE_TABLE),
        ("Member", MEMBER_TABLE),
    ):
        parts.append(f"## {title}\n\n```mermaid\n{mermaid(table)}\n```\n")
        parts.append("| event | from | to | guards |\n|---|---|---|---|")
        parts.extend(
            f"| `{t.event_type}` | {t.source.value} | {t.dest.value} | {', '.join(t.when)} |"
            for t in table.transitions
        )
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(states_markdown(), end="")
