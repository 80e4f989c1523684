"""README and docs/: every relative link names a file that exists, every #anchor a heading in it
(as GitHub makes anchors from headings)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower-case, punctuation dropped, spaces as hyphens."""
    found = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#{1,6} (.*)", line)):
            text = heading.group(1).strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page: Path) -> None:
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target}"


def test_each_docs_page_has_one_title() -> None:
    for page in PAGES[1:]:
        prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        titles = [line for line in prose.splitlines() if line.startswith("# ")]
        assert len(titles) == 1, page.name


def test_each_docs_page_says_its_job_and_links_back() -> None:
    """The line under the title says what the page is for and links to the README."""
    for page in PAGES[1:]:
        lines = page.read_text().splitlines()
        assert lines[1] == "", page.name
        assert "](../README.md)" in lines[2], page.name


def test_readme_lists_every_docs_page() -> None:
    readme = PAGES[0].read_text()
    listed = readme.split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in listed, page.name
