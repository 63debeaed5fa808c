"""Bringing an untrusted image file in: copy it first, then inspect the copy.

What is inspected is what is kept, so the checks cannot be outrun by a source that changes
afterwards (a time-of-check/time-of-use race). The copy passes oslo.utils' format inspector
(detected format == declared, no reference to another file, a virtual size under the ceiling) and
then ``qemu-img info`` with the format pinned, under resource limits.
"""

from __future__ import annotations

import os
from typing import Any

from diskledger.backends import qemu
from diskledger.backends.inspection import inspect_image
from diskledger.backends.sources import ImageSource, LocalFile, check_source
from diskledger.errors import BackendError

__all__ = ["check_source", "stage"]


def stage(source: str | ImageSource, fmt: str, copy: str, *, op: str, max_virtual_size: int) -> int:
    """Copy ``source`` (a local path, or any ``ImageSource``: a URL is downloaded and its
    checksum verified), declared to be ``fmt``, to ``copy`` and inspect the copy; return its
    virtual size. A failure leaves the copy for the caller's compensation to remove (it is a
    named artifact of the operation). The source reaches ``op``'s ``mid-effect`` fault point
    once data is in the copy."""
    if isinstance(source, str):
        source = LocalFile(source)
    source.copy_to(copy, limit=max_virtual_size, op=op)
    inspect_image(copy, fmt, max_virtual_size=max_virtual_size)
    data = qemu.info(copy, fmt, timeout=60.0, untrusted=True)
    _check_standalone(data, copy)
    return int(data["virtual-size"])


def _check_standalone(data: dict[str, Any], path: str) -> None:
    if "backing-filename" in data:
        raise BackendError(f"image has a backing file ({data['backing-filename']})")
    specific = data.get("format-specific", {}).get("data", {})
    if "data-file" in specific:
        raise BackendError(f"image has an external data file ({specific['data-file']})")
    for extent in specific.get("extents", ()):
        if os.path.abspath(extent.get("filename", path)) != os.path.abspath(path):
            raise BackendError(f"image refers to another file ({extent.get('filename')})")
