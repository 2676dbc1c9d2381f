"""The README and the docs/ pages: relative links resolve, and the README stays short."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text(encoding="utf-8"))
               if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name}: links to missing files {missing}"


def test_readme_is_short_and_links_every_docs_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 80 and max(map(len, text.splitlines())) <= 200
    assert "make start" in text and "make test" in text
    for page in PAGES[1:]:
        assert f"(docs/{page.name}" in text, f"README does not link docs/{page.name}"
