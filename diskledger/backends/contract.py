"""The backend contract: what the engine asks of storage, in plain values.

Backends never see the ledger. The engine asks a backend for the names of every artifact an
operation may create (``*_artifacts``) and records them in the operation's intent *before* calling
the effect; the effect then writes under exactly those names. Every effect:

- publishes atomically: data is written under the temporary name and renamed onto the final name
  only when whole (or, for qcow2 internal snapshots, created by one ``qemu-img`` call), so a
  half-written artifact is never mistaken for a finished one. A backend that ``ClonesInPlace``
  makes a disk under its final name instead and names the clone in the intent as well
  (``ArtifactKind.RBD_CLONE``), so that its probe tells a clone cut short from a whole one;
- is idempotent: running it again after a crash converges on the same result;
- takes the format from the caller (the format the ledger recorded) and passes it to every
  ``qemu-img`` call with ``-f`` (or ``--image-opts driver=...``); guest-writable data is never
  probed to decide a format;
- returns an ``Observation`` of what it produced, or raises a ``BackendError``.

``remove`` is the one compensation path: it deletes the named artifacts, idempotently, whether the
caller is the in-process failure handler or crash recovery. ``probe`` reports, for each named
artifact, whether it exists and what it looks like. ``disk_source`` tells a hypervisor how to
reach a disk (what libvirt's ``<disk>`` element says of its source), without touching storage
beyond asking a cluster where its monitors are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from diskledger.backends.sources import ImageSource

__all__ = [
    "Artifact",
    "ArtifactKind",
    "Authenticates",
    "Backend",
    "Capability",
    "ChecksCapacity",
    "ClonesInPlace",
    "ClonesTemplates",
    "DirectSnapshots",
    "DiskSource",
    "Fences",
    "FencesMembers",
    "Flattens",
    "Observation",
    "SetAsideVolumes",
    "SetsAside",
    "SourceKind",
    "TemplateSource",
    "TemplateStore",
]


class ArtifactKind(StrEnum):
    FILE = "file"
    """A file at ``location``."""
    INTERNAL_SNAPSHOT = "internal-snapshot"
    """A snapshot named ``name`` inside the qcow2 image at ``location``."""
    RBD_IMAGE = "rbd-image"
    """The RBD image ``location`` (``pool/image``), with whatever snapshots it holds."""
    RBD_CLONE = "rbd-clone"
    """The RBD image ``location`` while an operation clones it in place, under its final name,
    from the snapshot ``name`` (``pool/image@snap``); always ``temporary``. It *exists* while
    something is under ``location`` that is not yet a whole clone of ``name`` (a clone cut short:
    a name without an image that opens, an image without that parent, or one its parent's
    snapshot does not list among its clones), and ``remove`` removes only that, never a whole
    clone. Probed beside it, the ``RBD_IMAGE`` at the same ``location`` exists only once whole."""
    RBD_SNAPSHOT = "rbd-snapshot"
    """The snapshot ``name`` of the RBD image ``location`` (``pool/image``)."""
    LVM_VOLUME = "lvm-volume"
    """The logical volume ``location`` (``vg/lv``)."""
    LVM_SNAPSHOT = "lvm-snapshot"
    """The snapshot ``name`` of the disk at ``location`` (``vg/lv``), itself a logical volume."""


class Capability(StrEnum):
    INTERNAL_SNAPSHOTS = "internal-snapshots"
    """Snapshots live inside the disk image (qcow2) rather than beside it."""
    BACKING_OVERLAY = "backing-overlay"
    """Disks made from a template are copy-on-write overlays that keep the template as backing."""
    FLATTEN = "flatten"
    """A disk can be detached from its template by copying the data it shares (``flatten``)."""
    DIRECT_SNAPSHOT = "direct-snapshot"
    """A snapshot can be cloned into an image pool and handed off (``direct_snapshot``)."""
    SNAPSHOT_IN_USE = "snapshot-in-use"
    """Snapshots can be taken and removed while a running guest writes to the disk: the storage
    hands the request to the guest's own client (RBD's exclusive lock), so the snapshot is
    crash-consistent and nothing is written behind the guest's back."""
    DURABLE_EFFECTS = "durable-effects"
    """What a call that changes storage did is on stable storage when it returns: files and
    their directories fsynced, ``qemu-img`` done (it flushes the image as it closes it), Ceph's
    writes acknowledged. The engine then commits a storage operation's outcome without waiting
    for the ledger's own sync (``Plan.durable_effect``): should a power cut take the outcome, the
    intent is still there and recovery, finding the effect, rolls it forward."""
    FIXED_SIZE = "fixed-size"
    """Disks keep the virtual size they were made with: the storage cannot grow them (qemu's
    parallels driver has no resize), so the engine refuses a resize (``Unsupported``) before it
    records anything, and the backend's ``resize`` raises ``Unsupported`` too. A disk can
    still be made at any size, a template's data included."""


@dataclass(frozen=True, slots=True)
class Artifact:
    """Something an operation may create, named before it exists.

    ``temporary`` artifacts exist only while the operation runs (the name data is written under
    before the rename); the others are what a completed operation leaves behind.
    """

    kind: ArtifactKind
    location: str
    name: str | None = None
    temporary: bool = False

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"kind": self.kind.value, "location": self.location}
        if self.name is not None:
            raw["name"] = self.name
        if self.temporary:
            raw["temporary"] = True
        return raw

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Artifact:
        return cls(
            kind=ArtifactKind(raw["kind"]),
            location=raw["location"],
            name=raw.get("name"),
            temporary=bool(raw.get("temporary", False)),
        )


@dataclass(frozen=True, slots=True)
class Observation:
    """What storage showed for one artifact. Sizes are bytes; ``size`` is the virtual size."""

    artifact: Artifact
    exists: bool
    format: str | None = None
    size: int | None = None
    allocated: int | None = None
    backing: str | None = None
    snapshots: tuple[str, ...] = ()
    protected: bool | None = None
    """For a snapshot that can be protected (RBD): whether it is; None elsewhere."""

    def to_json(self) -> dict[str, Any]:
        raw = {
            "artifact": self.artifact.to_json(),
            "exists": self.exists,
            "format": self.format,
            "size": self.size,
            "allocated": self.allocated,
            "backing": self.backing,
            "snapshots": list(self.snapshots),
        }
        if self.protected is not None:
            raw["protected"] = self.protected
        return raw


@dataclass(frozen=True, slots=True)
class TemplateSource:
    """A cached template a disk is made from, as the ledger recorded it."""

    location: str
    format: str
    virtual_size: int


class SourceKind(StrEnum):
    FILE = "file"
    """A file on this host: ``path``."""
    BLOCK = "block"
    """A block device on this host (LVM): ``path``."""
    NETWORK = "network"
    """Storage reached over the network: ``protocol``, ``name`` and the ``hosts`` to ask."""


@dataclass(frozen=True, slots=True)
class DiskSource:
    """How a hypervisor reaches a disk: the source half of a libvirt ``<disk>`` element.

    ``hosts`` are (host, port) pairs of the cluster's monitors; ``user`` is the client the
    hypervisor authenticates as (cephx id, without ``client.``); ``preallocated`` says the disk's
    space was reserved when it was made, so native AIO will not block on allocation.
    """

    kind: SourceKind
    path: str | None = None
    protocol: str | None = None
    name: str | None = None
    hosts: tuple[tuple[str, int], ...] = ()
    user: str | None = None
    preallocated: bool = False


@runtime_checkable
class Backend(Protocol):
    """A storage driver for disks. ``token`` is the operation id; temporary names derive from it."""

    name: str
    """How configuration names this backend (``raw``, ``qcow2``)."""
    disk_format: str
    """The format of the disks it makes, recorded at create and passed back on every call."""
    capabilities: frozenset[Capability]
    preallocates: bool
    """Disks get their whole virtual size allocated when made and when grown (``fallocate``)."""

    def disk_location(self, instance: str, disk: str) -> str:
        """Where the disk ``instance/disk`` lives (a path under the root)."""
        ...

    def create_artifacts(self, location: str, token: str) -> tuple[Artifact, ...]: ...

    def create(
        self, location: str, token: str, *, size: int | None, template: TemplateSource | None
    ) -> Observation:
        """Make the disk from ``template`` (grown to ``size`` when larger) or blank of ``size``.

        An existing disk at ``location`` is never re-created: it is observed and returned.
        """
        ...

    def import_artifacts(self, location: str, token: str) -> tuple[Artifact, ...]: ...

    def import_file(
        self, location: str, token: str, source: str, fmt: str, *, max_virtual_size: int
    ) -> Observation:
        """Make the disk from the local image ``source`` declared as ``fmt``: copied, inspected
        (``diskledger.backends.staging``) and converted to the backend's format. An existing disk
        at ``location`` is observed and returned, never replaced."""
        ...

    def resize(self, location: str, fmt: str, size: int) -> Observation:
        """Grow the disk's virtual size to ``size``; a disk already that large is left alone.
        A backend with ``Capability.FIXED_SIZE`` raises ``Unsupported`` instead."""
        ...

    def snapshot_artifacts(
        self, location: str, snapshot: str, token: str
    ) -> tuple[Artifact, ...]: ...

    def snapshot(self, location: str, fmt: str, snapshot: str, token: str) -> Observation:
        """Take ``snapshot`` of the disk; the observation's ``size`` is the disk's size then."""
        ...

    def rollback_artifacts(
        self, location: str, snapshot: str, token: str
    ) -> tuple[Artifact, ...]: ...

    def rollback(
        self, location: str, fmt: str, snapshot: str, token: str, *, size: int
    ) -> Observation:
        """Revert the disk's data to ``snapshot``, then grow it back to ``size`` if smaller."""
        ...

    def remove_snapshot(self, location: str, fmt: str, snapshot: str) -> None:
        """Remove ``snapshot``; removing one that is already gone succeeds."""
        ...

    def delete(self, location: str, fmt: str, snapshots: Sequence[str]) -> None:
        """Remove the disk and its snapshots; deleting what is already gone succeeds."""
        ...

    def export_artifacts(self, target: str, token: str) -> tuple[Artifact, ...]: ...

    def export(
        self, location: str, fmt: str, target: str, target_format: str, token: str
    ) -> Observation:
        """Write a standalone copy (no backing file) of the disk to ``target``."""
        ...

    def disk_artifacts(self, location: str, snapshots: Sequence[str]) -> tuple[Artifact, ...]:
        """What a live disk with ``snapshots`` consists of: the disk first, then each snapshot."""
        ...

    def probe(self, artifacts: Sequence[Artifact]) -> tuple[Observation, ...]:
        """Observe each named artifact, without changing anything."""
        ...

    def remove(self, artifacts: Sequence[Artifact]) -> None:
        """Remove the named artifacts, idempotently: the one compensation path."""
        ...

    def close(self) -> None:
        """Let go of connections to storage (RBD's cluster connection); file backends hold none."""
        ...

    def inventory(self) -> tuple[Artifact, ...]:
        """Everything this backend keeps outside the root directory (which ``verify`` walks
        itself): for RBD, every image and snapshot in the pool. File backends return ``()``."""
        ...

    def disk_source(self, location: str, *, addresses: bool = True) -> DiskSource:
        """How a hypervisor on this host reaches the disk at ``location``. ``addresses=False``
        leaves out what must be looked up (a cluster's monitors): enough to recognise the disk
        in a domain's description, and it works while the cluster does not answer."""
        ...


@runtime_checkable
class ChecksCapacity(Protocol):
    """A backend whose storage has a fixed capacity it can check before an operation starts
    (an LVM volume group), so that a disk too large for it is refused before the intent is
    recorded, rather than failing in the effect."""

    def check_capacity(self, size: int, *, grow: str | None = None) -> None:
        """Raise ``InvalidSize`` (one line) when a new disk of ``size`` bytes, or the disk at
        ``grow`` grown to ``size``, cannot fit; ``InvalidInput`` when the storage is not
        there."""
        ...


@runtime_checkable
class ClonesInPlace(Protocol):
    """A backend that makes a disk from a template as a copy-on-write clone under the disk's
    final name, without a temporary name and a rename (RBD: one ``clone`` call instead of clone,
    rename and a fresh look). Nobody is given a disk's location before its ``completed`` event,
    so that event is what publishes the disk; what tells recovery a clone cut short from a whole
    one is the ``RBD_CLONE`` artifact the intent names beside the final image (see there)."""

    def clone_artifacts(
        self, location: str, token: str, template: TemplateSource
    ) -> tuple[Artifact, ...]:
        """The intent's artifacts of ``clone_template``: the clone (temporary), then the disk."""
        ...

    def clone_template(self, location: str, token: str, template: TemplateSource) -> Observation:
        """Clone ``template`` at its own size to ``location``; the observation comes from what
        was asked and answered, not from a fresh look. A whole clone of ``template`` already
        there (a retried call) is observed and returned; anything else there is an error."""
        ...


@runtime_checkable
class Flattens(Protocol):
    """A backend with ``Capability.FLATTEN``."""

    def flatten(self, location: str, fmt: str) -> Observation:
        """Copy what the disk shares with its parent into it; a flat disk is left alone."""
        ...


@runtime_checkable
class DirectSnapshots(Protocol):
    """A backend with ``Capability.DIRECT_SNAPSHOT``."""

    def direct_snapshot_url(self, image_id: str) -> str:
        """Where the copy ``image_id`` will be found (known before it exists)."""
        ...

    def direct_snapshot_artifacts(
        self, location: str, snapshot: str, image_id: str, token: str
    ) -> tuple[Artifact, ...]: ...

    def direct_snapshot(
        self, location: str, fmt: str, snapshot: str, image_id: str, token: str
    ) -> str:
        """Copy the disk's current data to a standalone image ``image_id``; return its URL."""
        ...


@runtime_checkable
class Fences(Protocol):
    """A backend on shared storage whose dead writers must be cut off before recovery acts.

    ``writer()`` names this process to the storage (recorded in every intent as
    ``params.writer``); ``fence(writer, artifacts)`` cuts that writer, and whatever it ran on the
    operation's temporary artifacts, off the storage the artifacts name, and returns what it
    fenced (never this process itself).
    """

    def writer(self) -> dict[str, Any]: ...

    def fence(
        self, writer: Mapping[str, Any] | None, artifacts: Sequence[Artifact]
    ) -> list[str]: ...


@runtime_checkable
class FencesMembers(Protocol):
    """A backend on shared storage that can fence a whole member (one engine incarnation of a
    shared ledger) before another member takes its pending operations over (RBD: Ceph's OSD
    blocklist).

    The member side: ``set_registrar`` puts the backend in member mode. Every storage client it
    opens from then on is handed to ``on_connect`` (its addresses) before it serves any request,
    so the ledger knows every client a fence must name; when ``on_connect`` raises, the client
    is shut down unused and the error reaches the caller. A client that finds itself fenced is
    never replaced: the call raises ``Fenced``, every later call too, and ``on_fenced`` is told
    once (the engine then stops all its effects and exits).

    The taker side: ``fence_member(clients)`` returns only once the storage refuses those
    clients: every request they make to an object after the fencer's first request to that
    object following ``fence_member`` is refused (RBD: the OSD serving it has the blocklisting
    OSD map by then, and never serves a fenced client again), so what the fencer probes, removes
    or finishes next cannot be overtaken by the fenced member. It returns
    ``{"blocklisted": [...], "osdmap_epoch": N}``, what the ledger records as ``member.fenced``.
    It is idempotent, refuses the caller's own clients, refuses addresses that name a whole host
    unless ``scope="host-ip"`` says so (that cuts off the host's VMs too), and raises ``Fenced``
    when the caller is itself fenced (a zombie fences nobody). ``unfence_member`` lifts a fence
    once the member's host is back with a new boot id (its old processes are gone).

    What it does not cover: clients that are not the backend's own (the tools it runs on the
    storage, ``qemu-img``): those are cut off as watchers of the operation's temporary images
    (``Fences.fence``); and writes the storage accepted before the fence.
    """

    def set_registrar(
        self,
        on_connect: Callable[[Sequence[str]], None],
        *,
        on_fenced: Callable[[str], None] | None = None,
    ) -> None: ...

    def client_addresses(self) -> list[str]:
        """This process's current client addresses (what ``on_connect`` was given)."""
        ...

    def fence_member(
        self,
        clients: Sequence[str],
        *,
        expire_seconds: int = 24 * 3600,
        scope: Literal["client", "host-ip"] = "client",
    ) -> dict[str, Any]: ...

    def unfence_member(
        self, clients: Sequence[str], *, scope: Literal["client", "host-ip"] = "client"
    ) -> dict[str, Any]: ...


@runtime_checkable
class SetsAside(Protocol):
    """A backend whose operations publish by renaming a temporary into place on a directory that
    several hosts share (files on NFS), where the storage has no fence of its own.

    ``set_aside(temporaries, tag)`` renames each temporary file among ``temporaries`` to
    ``<path>.fenced-<tag>`` (other artifacts are left alone) and returns the new names of those
    moved; a temporary not there yet gets a tombstone under that name. A member taking over an
    operation calls it before probing: from then on the fenced member's publishing rename fails
    (``StorageIOError`` ``ENOENT``: its temporary is gone) or is refused (``Fenced``: a
    tombstone), so the operation's final artifact appears only if it had already appeared when
    the taker probed. Idempotent. It covers operations that publish by rename (create, import,
    export, template fetch, copy snapshots), not those that change a file in place.
    """

    def set_aside(self, temporaries: Sequence[Artifact], tag: str) -> list[str]: ...


@runtime_checkable
class SetAsideVolumes(Protocol):
    """A backend whose operations keep storage under names their intents do not record (lvm: a
    disk renamed ``+.deleting`` to be cleared, a ``+.grow`` volume of extents being zeroed).
    ``verify`` asks it whom such a volume works for: while that disk has an operation pending,
    the volume is that operation's, not an orphan."""

    def set_aside_from(self, artifact: Artifact) -> str | None:
        """The location of the disk ``artifact`` (from ``inventory``) was set aside from or
        works for; None when it is no such thing."""
        ...


@runtime_checkable
class Authenticates(Protocol):
    """A backend whose hypervisor clients authenticate to its storage (RBD's cephx user)."""

    @property
    def client_user(self) -> str | None:
        """The user qemu authenticates as, known without reading its key (None as below)."""
        ...

    def client_credentials(self) -> tuple[str, bytes] | None:
        """(user, secret key bytes) that qemu must present, None when the backend authenticates
        as nobody in particular. Raises InvalidInput when the key cannot be read."""
        ...


@runtime_checkable
class TemplateStore(Protocol):
    """Where cached templates live: local files (``TemplateCache``) or images in a pool.

    Import follows the protocol: the intent names ``import_artifacts``, the import writes under
    them and publishes atomically; an already cached template is observed, not imported again.
    """

    root: str

    @property
    def scope(self) -> str | None:
        """The template streams' scope: None for this host, a cluster id for a shared pool."""
        ...

    def cached_format(self, declared: str) -> str:
        """The format a template declared as ``declared`` is kept in (RBD converts to raw)."""
        ...

    def location(self, template_id: str) -> str: ...

    def observe(self, template_id: str, fmt: str) -> Observation:
        """The cached template as the recorded format reads it (virtual size)."""
        ...

    def import_artifacts(self, template_id: str, token: str) -> tuple[Artifact, ...]: ...

    def import_file(
        self, source: str | ImageSource, fmt: str, template_id: str, token: str
    ) -> Observation:
        """Bring ``source`` (a local path, or an ``ImageSource``: a file or a URL), declared to
        be ``fmt``, into the store after the safety inspection of
        ``diskledger.backends.staging``, and observe the cached template."""
        ...

    def removal_artifacts(self, template_id: str, token: str) -> tuple[Artifact, Artifact]:
        """What a removal (``template gc``) names: the op-unique temporary name the cached
        template is moved aside to (removed afterwards), and the template's own name."""
        ...

    def set_aside(self, template_id: str, token: str) -> None:
        """Move the cached template to its removal temporary in one atomic rename, so that no
        new disk can be made from it; done already when only the temporary exists."""
        ...

    def restore(self, template_id: str, token: str) -> None:
        """Undo ``set_aside`` (a disk bound the template meanwhile); done already when the
        template is back at its name."""
        ...


@runtime_checkable
class ClonesTemplates(Protocol):
    """A template store that can make a template a copy-on-write clone of an image an image
    service keeps in the same storage, instead of downloading and importing its data: Nova's
    direct-clone fast path (RBD: Glance's rbd store, where each image is ``pool/<id>`` with the
    protected snapshot ``snap``, its location ``rbd://<fsid>/<pool>/<id>/snap``).

    The fetch asks ``clone_choice`` before it records its intent, and records the answer there:
    the location it clones from, or why it downloads although a location was offered. The
    template the clone makes is an ordinary cached template (the same name, the same protected
    snapshot disks are cloned from, the same refcounts); while it exists, the storage keeps the
    service's image from being deleted under it.
    """

    def clone_choice(self, locations: Sequence[str], fmt: str) -> tuple[str | None, str | None]:
        """Which of ``locations`` (URLs, in the service's order) a template declared as ``fmt``
        can be cloned from: ``(url, None)``; ``(None, why)`` when a location names this kind of
        storage but cannot be cloned (another cluster, a snapshot that is not protected or not
        there, a pool this client may not read, a format the store does not keep); ``(None,
        None)`` when none names this kind of storage. Reads storage, never writes it."""
        ...

    def clone_from(self, location: str, template_id: str, token: str) -> Observation:
        """Make the template a clone of ``location`` (a URL ``clone_choice`` chose) under the
        import's artifacts (``import_artifacts``): cloned under the temporary name, snapshotted
        and protected, renamed. The head of the image is first inspected as an import's copy is
        (a declared raw image that is something else is refused) and its size held to the
        store's ceiling. A template already cached is observed, not cloned again."""
        ...
