"""The README and the records under docs/ point at files that exist.

Most of the measurements live in docs/ (the README sums them up and names the folder or file each one is in), so a
moved or renamed file must not leave the README pointing at nothing.
"""

import glob
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
DOCS_PATH = re.compile(r"`(docs/[^`\s]+)`")  # a repository path in backticks


def _exists(pattern: str) -> bool:
    return bool(glob.glob(pattern)) if any(c in pattern for c in "*?[") else Path(pattern).exists()


def broken_paths(page: Path) -> list[str]:
    """Relative link targets (resolved from the page's folder) and backticked `docs/...` paths (from the repository
    root) in `page` that name nothing."""
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not _exists(str(page.parent / target.split("#")[0])):
            broken.append(target)
    broken += [p for p in DOCS_PATH.findall(text) if not _exists(str(ROOT / p))]
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_docs_path_resolves(page):
    assert broken_paths(page) == []


def test_a_missing_target_is_reported(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("![plot](nowhere.png) [ok](page.md) [web](https://example.org) `docs/no/such/file.json`")
    assert broken_paths(page) == ["nowhere.png", "docs/no/such/file.json"]
