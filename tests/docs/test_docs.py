"""The documentation: a README that fits on a few screens, links that resolve, and generated parts
(configuration reference, API routes, every table of figures) that match their sources."""
import json
import re
import shutil
from pathlib import Path

import pytest

from docs import generate

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", page.read_text(), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_the_readme_fits_in_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: {target}: no such heading"


def test_generated_parts_match_their_sources():
    stale = generate.stale(write=False)
    assert not stale, "stale (run python -m docs.generate): " + "; ".join(stale)


def test_a_changed_result_or_default_makes_its_page_stale(tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(generate.RESULTS, results)
    notebook = json.loads((results / "notebook.json").read_text())
    notebook["kinds"][0]["speedup_per_caption"] += 1
    (results / "notebook.json").write_text(json.dumps(notebook))
    monkeypatch.setattr(generate, "RESULTS", results)
    stale = generate.stale(write=False)
    assert "docs/performance.md: results-notebook" in stale
    assert any(line.startswith("benchmarks/results/notebook.md") for line in stale)

    from server import config

    field = next(f for f in config.fields(config.Config) if f.name == "max_images")
    monkeypatch.setattr(field, "default", 17)
    assert "docs/operating.md: config" in generate.stale(write=False)
