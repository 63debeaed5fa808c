"""The local template cache: each template is one file at ``<root>/templates/<template_id>``."""

from __future__ import annotations

import os

from diskledger.backends import files, qemu
from diskledger.backends.contract import Artifact, ArtifactKind, Observation
from diskledger.backends.files import check_component, temporary_path
from diskledger.backends.sources import ImageSource
from diskledger.backends.staging import stage

__all__ = ["DEFAULT_MAX_VIRTUAL_SIZE", "TemplateCache"]

FILE = ArtifactKind.FILE


DEFAULT_MAX_VIRTUAL_SIZE = 16 << 40
"""16 TiB: no template is larger, and a tiny file claiming exabytes is refused."""


class TemplateCache:
    """Templates kept as files in the format they were declared as (a ``TemplateStore``)."""

    def __init__(self, root: str, *, max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE) -> None:
        self.root = os.path.abspath(root)
        self.max_virtual_size = max_virtual_size
        self._dir = os.path.join(self.root, "templates")

    @property
    def scope(self) -> str | None:
        return None  # this host's cache

    def cached_format(self, declared: str) -> str:
        return declared

    def location(self, template_id: str) -> str:
        return os.path.join(self._dir, check_component(template_id, "template"))

    def observe(self, template_id: str, fmt: str) -> Observation:
        return qemu.observe(Artifact(FILE, self.location(template_id)), fmt)

    def import_artifacts(self, template_id: str, token: str) -> tuple[Artifact, ...]:
        final = self.location(template_id)
        return (
            Artifact(FILE, temporary_path(final, token), temporary=True),
            Artifact(FILE, final),
        )

    def import_file(
        self, source: str | ImageSource, fmt: str, template_id: str, token: str
    ) -> Observation:
        final = self.location(template_id)
        artifact = Artifact(FILE, final)
        if files.stat(final) is not None:
            return qemu.observe(artifact, fmt)
        files.ensure_dir_under(self.root, self._dir, files.IMAGE_DIR_MODE)
        temp = temporary_path(final, token)
        size = stage(source, fmt, temp, op="fetch", max_virtual_size=self.max_virtual_size)
        files.publish(temp, final)
        st = files.stat(final)
        allocated = st.st_blocks * 512 if st is not None else None
        return Observation(artifact, exists=True, format=fmt, size=size, allocated=allocated)

    def removal_artifacts(self, template_id: str, token: str) -> tuple[Artifact, Artifact]:
        final = self.location(template_id)
        return Artifact(FILE, temporary_path(final, token), temporary=True), Artifact(FILE, final)

    def set_aside(self, template_id: str, token: str) -> None:
        final = self.location(template_id)
        aside = temporary_path(final, token)
        if files.stat(final) is None and files.stat(aside) is not None:
            return
        files.publish(final, aside)

    def restore(self, template_id: str, token: str) -> None:
        final = self.location(template_id)
        aside = temporary_path(final, token)
        if files.stat(aside) is None and files.stat(final) is not None:
            return
        files.publish(aside, final)
