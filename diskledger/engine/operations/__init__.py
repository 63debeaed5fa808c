"""Every operation, one module per family, and their registry.

``REGISTRY`` maps each operation's name (as event types and the transition tables spell it) to
the one object that runs it and declares its recovery rules, what it refuses while a domain uses
the disk, and what recovery probes and records for it (see ``base.Operation``). Recovery finds an
operation pending in the ledger here by name; a test keeps the registry, the transition tables
and the rules in agreement.

| module | operations |
|---|---|
| ``create`` | ``create`` (from a template, or blank), ``import`` (from a local image) |
| ``resize`` | ``resize`` (offline, or through the running guest) |
| ``snapshots`` | ``snapshot``, ``rollback``, ``remove-snapshot`` |
| ``delete`` | ``delete`` |
| ``export`` | ``export`` |
| ``standalone`` | ``flatten``, ``direct-snapshot`` (RBD) |
| ``attachment`` | ``attach``, ``detach`` |
| ``templates`` | ``fetch`` (``template add``, ``ensure_template``) |
| ``template_gc`` | ``remove`` (``template gc``, ``collect_templates``) |
"""

from __future__ import annotations

from collections.abc import Mapping

from diskledger.engine.decisions import Rule
from diskledger.engine.operations.attachment import ATTACH, DETACH
from diskledger.engine.operations.base import Operation
from diskledger.engine.operations.create import CREATE, IMPORT
from diskledger.engine.operations.delete import DELETE
from diskledger.engine.operations.export import EXPORT
from diskledger.engine.operations.resize import RESIZE
from diskledger.engine.operations.snapshots import REMOVE_SNAPSHOT, ROLLBACK, SNAPSHOT
from diskledger.engine.operations.standalone import DIRECT_SNAPSHOT, FLATTEN
from diskledger.engine.operations.template_gc import REMOVE
from diskledger.engine.operations.templates import FETCH

__all__ = ["REFUSED_WHILE_ATTACHED", "REGISTRY", "RULES", "Operation"]

REGISTRY: Mapping[str, Operation] = {
    op.name: op
    for op in (
        CREATE,
        RESIZE,
        SNAPSHOT,
        ROLLBACK,
        REMOVE_SNAPSHOT,
        DELETE,
        EXPORT,
        IMPORT,
        FLATTEN,
        DIRECT_SNAPSHOT,
        ATTACH,
        DETACH,
        FETCH,
        REMOVE,
    )
}

RULES: tuple[Rule, ...] = tuple(rule for op in REGISTRY.values() for rule in op.rules)
"""Every operation's recovery rules, in registry order (docs/recovery.md prints them)."""

REFUSED_WHILE_ATTACHED: Mapping[str, str] = {
    op.name: op.while_attached for op in REGISTRY.values() if op.while_attached is not None
}
"""Why each operation waits for a detach. ``resize`` is absent: it goes through the guest."""
