"""The operations registry, the transition tables and the recovery rules agree.

Each operation is declared once (``diskledger.engine.operations``); these tests replace the
hand-kept sets that used to list which operations exist, which have recovery rules and which wait
for a detach.
"""

from __future__ import annotations

import inspect

import pytest

from diskledger.cli import build_parser
from diskledger.engine import Engine
from diskledger.engine.decisions import CONDITIONS, Decision
from diskledger.engine.operations import REFUSED_WHILE_ATTACHED, REGISTRY, RULES, Operation
from diskledger.engine.recovery import RULES as RECOVERY_RULES
from diskledger.states import DISK_TABLE, TEMPLATE_TABLE
from diskledger.states.streams import DISK, TEMPLATE

OPERATIONS = sorted(REGISTRY)

# The engine method and CLI verb of each operation (``fetch`` is ``template add``, ``remove``
# is ``template gc``).
API = {
    "create": ("create", "disk create"),
    "import": ("import_disk", "disk import"),
    "resize": ("resize", "disk resize"),
    "snapshot": ("snapshot", "disk snapshot"),
    "rollback": ("rollback", "disk rollback"),
    "remove-snapshot": ("remove_snapshot", "disk remove-snapshot"),
    "delete": ("delete", "disk delete"),
    "export": ("export", "disk export"),
    "flatten": ("flatten", "disk flatten"),
    "direct-snapshot": ("direct_snapshot", "disk direct-snapshot"),
    "attach": ("attach", "disk attach"),
    "detach": ("detach", "disk detach"),
    "fetch": ("add_template", "template add"),
    "remove": ("remove_template", "template gc"),
}


def storage_ops(kind: str) -> set[str]:
    table = DISK_TABLE if kind == DISK else TEMPLATE_TABLE
    return {row.op for row in table.rows if not row.fact}


def test_every_storage_operation_of_the_tables_is_registered_and_nothing_else() -> None:
    for kind in (DISK, TEMPLATE):
        registered = {name for name, op in REGISTRY.items() if op.kind == kind}
        assert registered == storage_ops(kind), kind


@pytest.mark.parametrize("name", OPERATIONS)
def test_an_operation_is_one_object_registered_under_its_name(name: str) -> None:
    op = REGISTRY[name]
    assert isinstance(op, Operation)
    assert op.name == name
    assert callable(op)


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operation_has_rules_and_they_name_known_conditions(name: str) -> None:
    rules = REGISTRY[name].rules
    assert rules, f"{name} has no recovery rules"
    assert {r.op for r in rules} == {name}
    assert {r.when for r in rules} <= CONDITIONS.keys()
    assert all(isinstance(r.decision, Decision) for r in rules)
    # Nothing after a catch-all row can ever be chosen.
    whens = [r.when for r in rules]
    assert "otherwise" not in whens[:-1]


def test_the_recovery_table_is_the_operations_rules_in_registry_order() -> None:
    assert RECOVERY_RULES == RULES
    assert [r.op for r in RULES] == sorted((r.op for r in RULES), key=list(REGISTRY).index)


def test_operations_the_table_refuses_while_attached_wait_for_a_detach() -> None:
    # A row guarded by ``detached`` must be refused before anything is recorded, with a reason.
    guarded = {row.op for row in DISK_TABLE.rows if "detached" in row.when} - {"attach"}
    assert guarded <= REFUSED_WHILE_ATTACHED.keys()
    assert "attach" in REFUSED_WHILE_ATTACHED  # one domain at a time
    assert "resize" not in REFUSED_WHILE_ATTACHED  # it goes through the guest
    assert "detach" not in REFUSED_WHILE_ATTACHED


def test_operations_that_finish_in_place_know_how() -> None:
    for name, op in REGISTRY.items():
        finishes = any(r.decision is Decision.FINISH for r in op.rules)
        overridden = type(op).finish is not Operation.finish
        assert finishes == overridden, name


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operation_has_an_engine_method_and_a_cli_verb(name: str) -> None:
    method, verb = API[name]
    assert inspect.isfunction(getattr(Engine, method))
    parser = build_parser()
    group, leaf = verb.split()
    subparsers = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert leaf in subparsers[group]._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(API) == set(REGISTRY)
