"""Safety inspection of an image not yet trusted, with oslo.utils' format inspector.

The inspector is the one Nova, Glance and Cinder use. It reads the image's own structures without
running qemu, detects its format, and refuses what refers to other files: a qcow2 backing file or
external data file, VMDK extents or a createType outside its allow-list, and more.
"""

from __future__ import annotations

from diskledger.errors import StorageIOError, UnsafeImage

__all__ = ["inspect_image"]


def inspect_image(path: str, declared: str, *, max_virtual_size: int) -> int:
    """The virtual size of the image at ``path`` if it is a safe ``declared`` image; otherwise
    ``UnsafeImage`` saying why."""
    # Imported here, not at the top: compiling oslo.utils' regular expressions costs tens of
    # milliseconds, which every command would pay, and only bringing an image in needs it.
    from oslo_utils.imageutils import format_inspector

    try:
        inspector = format_inspector.detect_file_format(path)
    except format_inspector.ImageFormatError as exc:
        raise UnsafeImage(f"the image cannot be inspected: {exc}") from exc
    except OSError as exc:
        # The copy went away under the inspector (a taker set it aside, or the disk failed).
        raise StorageIOError(
            f"cannot read {path} to inspect it: {exc.strerror}", errno=exc.errno
        ) from exc
    if inspector is None:
        raise UnsafeImage("the image's format is not one the inspector knows")
    detected = inspector.NAME
    if detected != declared:
        raise UnsafeImage(f"declared {declared}, but the image is {detected}")
    try:
        inspector.safety_check()
    except format_inspector.SafetyCheckFailed as exc:
        reasons = "; ".join(f"{name}: {why}" for name, why in exc.failures.items())
        raise UnsafeImage(f"the {detected} image fails the safety check ({reasons})") from exc
    except format_inspector.ImageFormatError as exc:
        raise UnsafeImage(f"the {detected} image cannot be checked: {exc}") from exc
    size = int(inspector.virtual_size)
    if size <= 0:
        raise UnsafeImage("the image is empty")
    if size > max_virtual_size:
        raise UnsafeImage(
            f"the image claims a virtual size of {size} bytes, above the {max_virtual_size} "
            "byte ceiling"
        )
    return size
