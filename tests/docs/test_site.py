"""The documentation site: it builds with ``mkdocs build --strict``, its links resolve, and the
API reference covers the public API with docstrings."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import diskledger
from diskledger import Engine
from tests.docs.blocks import DOCS, REPO

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_ID = re.compile(r"""\bid=["']([^"']+)["']""")


class Site:
    """A built site: its directory and what the build printed."""

    def __init__(self, directory: Path, output: str) -> None:
        self.directory = directory
        self.output = output

    def page(self, source: str) -> Path:
        """The HTML page built from ``docs/<source>`` (``use_directory_urls``)."""
        stem = source.removesuffix(".md")
        if stem == "index" or stem.endswith("/index"):
            return self.directory / f"{stem}.html"
        return self.directory / stem / "index.html"

    def ids(self, pages: str = "**/*.html") -> set[str]:
        return {
            found
            for html in self.directory.glob(pages)
            for found in _ID.findall(html.read_text(encoding="utf-8"))
        }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(directory)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = build.stdout + build.stderr
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    yield Site(directory, output)


def test_the_site_builds_without_a_warning(site: Site) -> None:
    warnings = [line for line in site.output.splitlines() if "WARNING" in line or "ERROR" in line]
    assert warnings == []
    for page in ("index.md", "api/index.md", "api/engine.md", "states.md", "backends/rbd.md"):
        assert site.page(page).is_file(), page


def test_every_page_is_in_the_navigation() -> None:
    """A page left out of ``nav`` would be built but found by no one."""
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    listed = set(re.findall(r":\s*(\S+\.md)\s*$", config, flags=re.MULTILINE))
    assert pages - listed == set(), "pages missing from mkdocs.yml's nav"
    assert listed - pages == set(), "nav entries without a page"


def _links(markdown: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [match["target"] for match in _LINK.finditer(text)]


def test_the_readmes_links_point_at_files_that_exist(site: Site) -> None:
    """README.md is read on GitHub: each relative link must name a file of the repository, and
    a ``#fragment`` into docs/ must name a heading the site has."""
    broken: list[str] = []
    links = [link for link in _links(REPO / "README.md") if not re.match(r"[a-z]+:", link)]
    assert links, "README.md links to no file at all: the pattern no longer finds its links"
    for link in links:
        path, _, fragment = link.partition("#")
        target = (REPO / path).resolve() if path else REPO / "README.md"
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment and target.suffix == ".md" and target.is_relative_to(DOCS):
            page = site.page(str(target.relative_to(DOCS)))
            if fragment not in site.ids(str(page.relative_to(site.directory))):
                broken.append(f"{link}: {target.name} has no heading #{fragment}")
    assert broken == []


def test_the_docs_link_only_to_pages_of_the_site() -> None:
    """Under --strict mkdocs refuses a link to a missing page; a link out of docs/ (to a source
    file) would be one on the site, so it is caught here too, with the page it is on."""
    outside = [
        f"{page.relative_to(REPO)}: {link}"
        for page in DOCS.rglob("*.md")
        for link in _links(page)
        if not re.match(r"[a-z]+:", link)
        and link.partition("#")[0]
        and not (page.parent / link.partition("#")[0]).resolve().is_relative_to(DOCS)
    ]
    assert outside == []


def _docstring(obj: Any) -> str | None:
    """The docstring written in the source: not one inherited, nor the signature a dataclass
    makes up for itself."""
    source = textwrap.dedent(inspect.getsource(obj))
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    return ast.get_docstring(node)


def _engine_methods() -> dict[str, str | None]:
    """Every public method and property of ``Engine``, with its docstring (an overloaded one's
    from whichever definition has one)."""
    source = textwrap.dedent(inspect.getsource(Engine))
    cls = ast.parse(source).body[0]
    assert isinstance(cls, ast.ClassDef)
    methods: dict[str, str | None] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith(
            "_"
        ):
            methods[node.name] = methods.get(node.name) or ast.get_docstring(node)
    return methods


def test_every_public_name_has_a_docstring() -> None:
    missing = [name for name in diskledger.__all__ if not _docstring(getattr(diskledger, name))]
    assert missing == [], "names in diskledger.__all__ without a docstring"


def test_every_public_method_of_the_engine_has_a_docstring() -> None:
    methods = _engine_methods()
    assert {"open", "create", "resize", "snapshot", "history"} <= methods.keys()
    missing = sorted(name for name, doc in methods.items() if not doc)
    assert missing == [], (
        f"Engine methods without a docstring (diskledger/engine/engine.py): {', '.join(missing)}"
    )


def test_every_public_name_is_in_the_api_reference(site: Site) -> None:
    ids = site.ids("api/**/*.html")
    missing = [
        name
        for name in diskledger.__all__
        if f"diskledger.{name}" not in ids
        and f"{getattr(diskledger, name).__module__}.{name}" not in ids
    ]
    assert missing == [], "names in diskledger.__all__ missing from docs/api/ (add a ::: line)"


def test_every_public_method_of_the_engine_is_in_the_api_reference(site: Site) -> None:
    ids = site.ids("api/**/*.html")
    missing = sorted(name for name in _engine_methods() if f"diskledger.Engine.{name}" not in ids)
    assert missing == [], (
        "Engine methods missing from the API reference (mkdocstrings leaves out what has no "
        f"docstring): {', '.join(missing)}"
    )
