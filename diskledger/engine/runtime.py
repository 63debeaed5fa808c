"""What the operations, recovery and verify work with: the runtime, built in one place.

``Runtime`` holds the ledger, the backends (the configured one, and any other a disk's stream
names, made on first use), the template store, the hypervisor connection and who this process is
(host, actor, metadata for the events it records). ``build`` makes one from a ``Config``;
``Engine`` composes it, and so does the harness in ``diskledger.testing``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from diskledger.backends import Backend, FencesMembers, TemplateStore, registry
from diskledger.engine.config import Config
from diskledger.engine.liveness import current_process
from diskledger.engine.members import Membership
from diskledger.events import Metadata
from diskledger.hypervisor import Hypervisor
from diskledger.keys import KeyProvider, LocalKeyDirectory, default_key_dir
from diskledger.states import DiskView
from diskledger.states.streams import template_stream
from diskledger.store import EventStore, open_store

__all__ = ["Runtime", "build"]

RECOVERY_ACTOR = "diskledger-recover"


@dataclass(slots=True)
class Runtime:
    store: EventStore
    backend: Backend
    """The configured backend: new disks are made here."""
    templates: TemplateStore
    hypervisor: Hypervisor
    """libvirtd, for attached disks (connected on first use)."""
    host: str
    make_backend: Callable[[str], Backend]
    """Another backend by the name a disk's stream recorded (a ledger may hold several)."""
    actor: str = "diskledger"
    max_image_size: int = 16 << 40
    rbd_secret_uuid: str | None = None
    """The libvirt secret network disk descriptions authenticate with."""
    membership: Membership | None = None
    """This engine as a member of a shared ledger (None: a single-host ledger)."""
    keys: KeyProvider | None = None
    """Where the keys of encrypted disks live (None: this runtime makes none)."""
    luks_iter_time_ms: int = 100
    _backends: dict[str, Backend] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._backends.setdefault(self.backend.name, self.backend)
        self._enlist(self.backend)

    def _enlist(self, backend: Backend) -> None:
        """On a shared ledger, a backend on shared storage registers every client it opens with
        this member before using it, and tells the member when the storage fenced it."""
        if self.membership is not None and isinstance(backend, FencesMembers):
            backend.set_registrar(
                self.membership.register_clients, on_fenced=self.membership.fence_self
            )
            self.membership.on_storage_fence(backend.close)

    def backend_named(self, name: str | None) -> Backend:
        """The backend called ``name`` (the configured one when None): a disk is always handled
        by the backend that made it, as the ledger recorded."""
        if name is None:
            return self.backend
        backend = self._backends.get(name)
        if backend is None:
            backend = self._backends[name] = self.make_backend(name)
            self._enlist(backend)
        return backend

    def backend_of(self, disk: DiskView) -> Backend:
        """The backend that keeps ``disk`` (ledgers from before the ``backend`` field recorded
        only the format, which then names a file backend)."""
        return self.backend_named(disk.backend or disk.format)

    def owner(self) -> dict[str, object] | None:
        """``{member, epoch}`` for a new intent (joining the ledger on first use), or None on a
        ledger without members."""
        return None if self.membership is None else self.membership.owner()

    def template_stream(self, template: str) -> str:
        """The stream of ``template`` in this runtime's template store."""
        return template_stream(self.templates.scope or self.host, template)

    def metadata(
        self, op_id: str, *, causation: str | None = None, actor: str | None = None
    ) -> Metadata:
        """Who records an event of operation ``op_id``: this host and process."""
        return Metadata(
            op_id=op_id,
            host=self.host,
            pid=os.getpid(),
            actor=actor or self.actor,
            causation=causation,
            process=current_process(),
        )

    def recovery_metadata(self, op_id: str, run_id: str) -> Metadata:
        """Metadata for an outcome recorded by recovery on behalf of a dead writer."""
        return self.metadata(op_id, causation=run_id, actor=RECOVERY_ACTOR)

    def close(self) -> None:
        try:
            if self.membership is not None:
                self.membership.leave()
            for backend in self._backends.values():
                backend.close()
            self.hypervisor.close()
        finally:
            self.store.close()


def build(
    config: Config,
    *,
    backend: Backend | None = None,
    store: Callable[[EventStore], EventStore] | None = None,
) -> Runtime:
    """The runtime ``config`` describes: its backend made as the backend registry declares it
    (with the settings ``Config.load`` read), its template store, the ledger, the hypervisor.
    ``backend`` stands in for the configured one (a test's own backend, which keeps templates
    where the configured one would); ``store`` wraps the opened event store (to test the harness
    itself)."""
    root = str(config.root)

    def make(name: str) -> Backend:
        spec = registry.spec(name)
        if name == config.backend:
            return spec.make(root, config.settings)
        return spec.make(root, spec.load_settings(config.environ))

    chosen = backend or make(config.backend)
    config.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    opened = open_store(config.ledger)
    ledger = store(opened) if store is not None else opened
    membership = (
        Membership(ledger, config.host, config.lease, actor=config.actor)
        if config.members
        else None
    )
    return Runtime(
        store=ledger,
        backend=chosen,
        templates=registry.spec(config.backend).templates(chosen, root, config.max_template_size),
        hypervisor=Hypervisor(config.libvirt_uri, detach_timeout=config.detach_timeout),
        host=config.host,
        make_backend=make,
        actor=config.actor,
        max_image_size=config.max_template_size,
        rbd_secret_uuid=config.rbd_secret_uuid,
        membership=membership,
        keys=config.keys or LocalKeyDirectory(default_key_dir(config.root)),
        luks_iter_time_ms=config.luks_iter_time_ms,
    )
