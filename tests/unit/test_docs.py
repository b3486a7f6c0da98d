"""Every relative link in README.md and docs/*.md points to a file that exists (and to a heading that exists)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "deploy" / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Written by other helpers on their own branches this round; allowed to be missing ONLY until the branches
# are merged. The integrator empties this set (and deletes it) at merge time.

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page."""
    return {_slug(m.group(1)) for line in _prose(page.read_text()) if (m := HEADING.match(line))}


def _links(page: Path) -> list[str]:
    """Relative link targets of a page (web links and mail addresses left out)."""
    targets = [m.group(1) for line in _prose(page.read_text()) for m in LINK.finditer(line)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_pages_exist() -> None:
    """The README and the docs pages it is built around are there."""
    assert (REPO / "README.md").is_file()
    assert len(PAGES) > 3


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    """Each relative link names an existing file, and each #anchor an existing heading of that page."""
    broken = []
    for target in _links(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_readme_links_every_docs_page() -> None:
    """A newcomer finds every docs page from the README."""
    readme_targets = {(REPO / t.partition("#")[0]).resolve() for t in _links(REPO / "README.md")}
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in readme_targets]
    assert not missing, f"README.md does not link {missing}"
