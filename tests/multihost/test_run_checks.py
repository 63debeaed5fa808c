"""The checks tests/multihost/run.py adds to the checker's, on made-up ledgers (no rig)."""

from __future__ import annotations

from typing import Any

from tests.multihost.checker import LedgerEvent
from tests.multihost.run import check_acknowledged, check_claim_chain
from tests.multihost.witness import WitnessCall

OP = "h3-op-1"


def event(position: int, phase: str, data: dict[str, Any]) -> LedgerEvent:
    return LedgerEvent(position, "disk:vm/root", position, f"disk.delete.{phase}", data, op_id=OP)


def call(member: str, name: str, t_start: float, t_end: float, result: str = "ok") -> WitnessCall:
    return WitnessCall(OP, "delete", member, 1, "takeover", name, t_start, t_end, result, "h", 1)


def ledger(second_from: str) -> list[LedgerEvent]:
    return [
        event(1, "started", {"owner": {"member": "h3/a", "epoch": 1}}),
        event(2, "taken-over", {"from": "h3/a", "by": "h2/b"}),
        event(3, "taken-over", {"from": second_from, "by": "h1/c"}),
        event(4, "completed", {}),
    ]


def test_a_claim_from_a_member_that_no_longer_owned_it_and_its_dual_execution() -> None:
    witness = [
        call("h2/b", "claim", 10.0, 10.1),
        call("h2/b", "delete", 10.2, 11.0),
        call("h1/c", "claim", 10.5, 10.6),
        call("h2/b", "remove", 11.1, 11.2),  # the first taker, after the second claim
    ]
    result = check_claim_chain(ledger(second_from="h3/a"), witness)
    assert result.counts["claims from a member that no longer owned it"] == 1
    assert result.counts["dual executions"] == 1
    assert "h2/b owned it then" in result.violations[0].message


def test_a_chain_of_claims_each_from_the_owner_passes() -> None:
    result = check_claim_chain(ledger(second_from="h2/b"), [call("h2/b", "remove", 11.1, 11.2)])
    assert result.ok and result.counts["claims"] == 2


def test_acknowledged_successes_and_refusals() -> None:
    events = [event(1, "started", {}), event(2, "completed", {})]
    ok = {"op_id": OP, "op": "delete", "disk": "vm/root", "result": "ok"}
    refused = {**ok, "result": "error:OperationPending"}
    assert check_acknowledged(events, [ok]).ok
    assert not check_acknowledged(events, [refused]).ok  # refused, yet recorded
    assert not check_acknowledged([], [ok]).ok  # a success the ledger never saw
    assert check_acknowledged([], [{**ok, "op": "resize"}]).ok  # a resize with nothing to do
