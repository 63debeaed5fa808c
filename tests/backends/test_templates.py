from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from diskledger.backends import Backend, TemplateCache, backend_for
from diskledger.errors import InvalidInput, InvalidSource, UnsafeImage
from tests.backends.helpers import MiB, make_image, temporaries


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_import_copies_and_observes(tmp_path: Path, fmt: str) -> None:
    source = tmp_path / f"source.{fmt}"
    make_image(source, fmt, 3 * MiB, pattern=0x77)
    cache = TemplateCache(str(tmp_path / "root"))
    temp, final = cache.import_artifacts("t1", "op")
    assert temp.temporary and final.location == cache.location("t1")

    seen = cache.import_file(str(source), fmt, "t1", "op")

    assert seen.artifact == final and seen.exists
    assert seen.format == fmt and seen.size == 3 * MiB
    assert os.path.isfile(final.location) and not os.path.exists(temp.location)


def test_a_cached_template_is_not_copied_again(tmp_path: Path) -> None:
    source = tmp_path / "source.raw"
    make_image(source, "raw", MiB)
    cache = TemplateCache(str(tmp_path))
    cache.import_file(str(source), "raw", "t1", "op1")
    Path(cache.location("t1")).write_bytes(b"cached")

    seen = cache.import_file(str(source), "raw", "t1", "op2")

    assert seen.size == len(b"cached")
    assert Path(cache.location("t1")).read_bytes() == b"cached"


def assert_compensation_leaves_nothing(cache: TemplateCache, root: Path) -> None:
    """A refused import leaves its temporary copy, named in the intent, for the caller's one
    compensation path to remove; nothing else remains."""
    artifacts = cache.import_artifacts("t1", "op")
    assert [str(p) for p in temporaries(root)] == [a.location for a in artifacts if a.temporary]
    backend_for("raw", str(root)).remove(artifacts)
    assert temporaries(root) == []


def test_a_template_with_a_backing_file_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    make_image(base, "raw", MiB)
    source = tmp_path / "overlay.qcow2"
    make_image(source, "qcow2", MiB)
    rebase = ["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", str(base), str(source)]
    subprocess.run(rebase, check=True)
    cache = TemplateCache(str(tmp_path))

    with pytest.raises(UnsafeImage, match="backing_file: Image has a backing file"):
        cache.import_file(str(source), "qcow2", "t1", "op")

    assert not os.path.exists(cache.location("t1"))
    assert_compensation_leaves_nothing(cache, tmp_path)


def test_a_file_that_is_not_the_declared_format_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "really.raw"
    make_image(source, "raw", MiB)
    cache = TemplateCache(str(tmp_path))
    with pytest.raises(UnsafeImage, match="declared qcow2, but the image is raw"):
        cache.import_file(str(source), "qcow2", "t1", "op")
    assert_compensation_leaves_nothing(cache, tmp_path)


def test_a_missing_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidSource):
        TemplateCache(str(tmp_path)).import_file(str(tmp_path / "nope"), "raw", "t1", "op")
    with pytest.raises(InvalidSource):
        TemplateCache(str(tmp_path)).import_file(str(tmp_path), "raw", "t1", "op")


def test_backend_for(tmp_path: Path) -> None:
    for name in ["raw", "qcow2"]:
        backend = backend_for(name, str(tmp_path))
        assert isinstance(backend, Backend) and backend.name == name
    with pytest.raises(InvalidInput, match="raw, qcow2"):
        backend_for("ploop", str(tmp_path))
