"""The README stays a newcomer's page: short, every doc linked, every relative link alive."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
LINKS = re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", README)


def test_readme_is_at_most_12000_characters():
    assert len(README) <= 12_000, f"README.md has {len(README)} characters: move detail into docs/"


def test_readme_links_every_doc():
    docs = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}
    missing = docs - set(LINKS)
    assert not missing, f"docs the README does not link: {sorted(missing)}"


def test_relative_links_of_readme_and_docs_exist():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)
