"""Parallels disks: images in qemu's ``parallels`` format, made and read by ``qemu-img`` alone.

Nova's ploop backend drives Virtuozzo's ploop tools, which need Virtuozzo's kernel module; without
it they cannot run (on these machines they crash). What qemu's own ``parallels`` driver does —
create an image, convert into and out of it, read and write it — is this backend; what it does
not do is refused:

- **resize**: qemu's parallels driver does not implement it (``qemu-img resize -f parallels``
  says ``Image format driver does not support resize``), so the backend declares
  ``Capability.FIXED_SIZE``: the engine refuses a resize before it records anything, and
  ``resize`` here raises ``Unsupported``. A disk made from a template larger than the template
  is made at that size at once: a blank image of the size, the template's data converted into it
  (``qemu-img convert -n``).
- **internal snapshots**: the driver has none (``qemu-img snapshot -c`` fails with ``Operation
  not supported``). Snapshots are full sparse copies beside the disk, as the raw backend's are.
- **preallocation**: the driver truncates the file to its data end whenever an image it had
  open for writing is closed, dropping space reserved beyond it, and its ``preallocation``
  create option reserves nothing. ``DISKLEDGER_PREALLOCATE=space`` is accepted (a ledger can
  hold disks of several backends) but parallels disks are recorded as not preallocated.

Untrusted parallels images are not imported: oslo.utils' format inspector does not know the
format, so the safety inspection refuses one declared as ``parallels`` (templates and imports
come as raw or qcow2 and are converted). Every ``qemu-img`` call pins ``-f parallels``.
"""

from __future__ import annotations

import os

from diskledger.backends import files, qemu
from diskledger.backends.contract import Capability, Observation, TemplateSource
from diskledger.backends.file_backend import CopySnapshots, file_spec
from diskledger.errors import Unsupported

__all__ = ["NO_RESIZE", "SPEC", "ParallelsBackend"]

FORMAT = "parallels"

NO_RESIZE = "qemu's parallels driver does not implement resize"
"""Why a parallels disk keeps the size it was made with."""


class ParallelsBackend(CopySnapshots):
    """Disks at ``<root>/disks/<instance>/<disk>`` in qemu's parallels format, snapshots as full
    copies in ``<disk>.snapshots/``; a disk keeps the size it was made with."""

    name = "parallels"
    disk_format = FORMAT
    capabilities: frozenset[Capability] = frozenset({Capability.FIXED_SIZE})

    def __init__(self, root: str, *, preallocate: bool = False) -> None:
        # qemu's parallels driver gives reserved space back when it closes the image: see the
        # module's docstring. The ledger records what is true: not preallocated.
        super().__init__(root, preallocate=False)

    def resize(self, location: str, fmt: str, size: int) -> Observation:
        self._check_format(fmt)
        seen = self._observe(location)
        if seen.size is not None and seen.size >= size:
            return seen  # already that large: left alone, as the contract says
        raise Unsupported(location, self.name, "resize", NO_RESIZE)

    def _restore(self, snapshot: str, temp: str, size: int) -> None:
        if self._virtual_size(snapshot) < size:
            # No resize: a blank image of the size, the snapshot's data converted into it.
            _grown_copy(snapshot, temp, size)
        else:
            files.sparse_copy(snapshot, temp)

    def _write_new(self, temp: str, size: int | None, template: TemplateSource | None) -> None:
        if template is None:
            qemu.create(temp, FORMAT, size)
        elif size is not None and size > template.virtual_size:
            _grown_copy(template.location, temp, size, source_format=template.format)
        else:
            qemu.convert(template.location, template.format, temp, FORMAT)

    def _virtual_size(self, location: str) -> int:
        return int(qemu.info(location, FORMAT)["virtual-size"])


SPEC = file_spec(ParallelsBackend)
"""The ``parallels`` backend, as the registry finds it."""


def _grown_copy(source: str, target: str, size: int, *, source_format: str = FORMAT) -> None:
    """A new parallels image of ``size`` at ``target`` holding ``source``'s data (smaller)."""
    qemu.create(target, FORMAT, size)
    qemu.convert_spec(
        os.path.abspath(source),
        source_format,
        os.path.abspath(target),
        FORMAT,
        target_exists=True,
        target_is_zero=True,  # a new image reads as zeroes: nothing is written for them
    )
