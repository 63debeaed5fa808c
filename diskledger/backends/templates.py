"""The local template cache: each template is one file at ``<root>/templates/<template_id>``."""

from __future__ import annotations

import os
import stat
from typing import Any

from diskledger import faults
from diskledger.backends import files, qemu
from diskledger.backends.contract import Artifact, ArtifactKind, Observation
from diskledger.backends.files import check_component, temporary_path
from diskledger.backends.inspection import inspect_image
from diskledger.errors import BackendError, InvalidSource

__all__ = ["TemplateCache"]

FILE = ArtifactKind.FILE


DEFAULT_MAX_VIRTUAL_SIZE = 16 << 40
"""16 TiB: no template is larger, and a tiny file claiming exabytes is refused."""


class TemplateCache:
    def __init__(self, root: str, *, max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE) -> None:
        self.root = os.path.abspath(root)
        self.max_virtual_size = max_virtual_size
        self._dir = os.path.join(self.root, "templates")

    def location(self, template_id: str) -> str:
        return os.path.join(self._dir, check_component(template_id, "template"))

    def observe(self, template_id: str, fmt: str) -> Observation:
        """The cached template as the format recorded for it reads it (virtual size)."""
        return qemu.observe(Artifact(FILE, self.location(template_id)), fmt)

    def import_artifacts(self, template_id: str, token: str) -> tuple[Artifact, ...]:
        final = self.location(template_id)
        return (
            Artifact(FILE, temporary_path(final, token), temporary=True),
            Artifact(FILE, final),
        )

    def import_file(self, source: str, fmt: str, template_id: str, token: str) -> Observation:
        """Copy ``source``, declared to be ``fmt``, into the cache and observe it.

        The source must be a regular file, not a symlink. The copy — what will be kept, so what
        is checked cannot change afterwards — passes oslo.utils' safety inspection (detected
        format == declared, no reference to another file, a virtual size under the ceiling) and
        then ``qemu-img info`` with the format pinned, under resource limits. An already cached
        template is observed, not copied again.
        """
        final = self.location(template_id)
        artifact = Artifact(FILE, final)
        if files.stat(final) is not None:
            return qemu.observe(artifact, fmt)
        try:
            mode = os.lstat(source).st_mode
        except OSError as exc:
            raise InvalidSource(f"template source {source}: {exc.strerror}") from exc
        if stat.S_ISLNK(mode):
            raise InvalidSource(f"template source {source} is a symbolic link")
        if not stat.S_ISREG(mode):
            raise InvalidSource(f"template source {source} is not a regular file")
        files.ensure_dir_under(self.root, self._dir, files.IMAGE_DIR_MODE)
        temp = temporary_path(final, token)
        # A failure leaves the temporary copy for the caller's compensation (or recovery) to
        # remove: it is named in the intent, and there is one cleanup path.
        files.sparse_copy(source, temp)
        faults.reach("mid-effect", "fetch")
        inspect_image(temp, fmt, max_virtual_size=self.max_virtual_size)
        data = qemu.info(temp, fmt, timeout=60.0, untrusted=True)
        _check_standalone(data, temp)
        files.publish(temp, final)
        return Observation(
            artifact,
            exists=True,
            format=fmt,
            size=int(data["virtual-size"]),
            allocated=data.get("actual-size"),
        )


def _check_standalone(data: dict[str, Any], path: str) -> None:
    if "backing-filename" in data:
        raise BackendError(f"template has a backing file ({data['backing-filename']})")
    specific = data.get("format-specific", {}).get("data", {})
    if "data-file" in specific:
        raise BackendError(f"template has an external data file ({specific['data-file']})")
    for extent in specific.get("extents", ()):
        if os.path.abspath(extent.get("filename", path)) != os.path.abspath(path):
            raise BackendError(f"template refers to another file ({extent.get('filename')})")
