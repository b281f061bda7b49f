"""The manual: the site builds strictly (a broken link or a page left out of the navigation fails the build),
every name ``import moco`` exports has a docstring and a place in the API reference, and the README's links lead
to files that exist."""

import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import moco

ROOT = Path(__file__).resolve().parents[1]


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    # not -q: mkdocs then stops counting warnings, and --strict passes a broken link
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=root,
                          capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})


def test_the_site_builds_strictly(tmp_path):
    r = _build(ROOT, tmp_path / "site")
    assert r.returncode == 0, r.stderr[-3000:]
    api = (tmp_path / "site" / "python-api" / "index.html").read_text()
    assert 'id="moco.MoCo.from_backbone"' in api and 'id="moco.evaluate"' in api  # the reference is generated


def test_a_broken_link_or_a_page_left_out_fails_the_build(tmp_path):
    for broken in ("[the settings](settings-that-moved.md)", "[the run folder](getting-started.md#no-such-heading)"):
        tree = tmp_path / str(len(list(tmp_path.iterdir())))
        shutil.copytree(ROOT / "docs", tree / "docs")
        shutil.copy(ROOT / "mkdocs.yml", tree)
        (tree / "moco").symlink_to(ROOT / "moco")  # the API reference reads the package
        page = tree / "docs" / "results.md"
        page.write_text(page.read_text() + f"\nSee {broken}.\n")
        r = _build(tree, tree / "site")
        assert r.returncode == 1 and broken.split("(")[1].split("#")[0].rstrip(")") in r.stderr, r.stderr[-2000:]
    (tree / "docs" / "orphan.md").write_text("# A page no one links to\n")
    page.write_text(page.read_text().replace(f"\nSee {broken}.\n", ""))
    r = _build(tree, tree / "site")
    assert r.returncode == 1 and "orphan.md" in r.stderr, r.stderr[-2000:]


def test_every_exported_name_has_a_docstring_and_a_place_in_the_reference():
    page = (ROOT / "docs" / "python-api.md").read_text()
    listed = set(re.findall(r"^::: moco\.(\w+)$", page, re.M))
    exported = set(moco.__all__) - {"__version__"}
    assert listed == exported
    undocumented = [n for n in sorted(exported) if not (inspect.getdoc(getattr(moco, n)) or "").strip()]
    assert not undocumented


def test_the_readme_is_a_front_door_whose_links_lead_somewhere():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) < 12_000
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme) if not t.startswith("http")]
    assert targets and all((ROOT / t).exists() for t in targets), [t for t in targets if not (ROOT / t).exists()]
    docs = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert docs <= {Path(t).name for t in targets}  # every page of the manual is reachable from the README


def test_the_settings_reference_is_the_schema():
    """docs/settings.md is what the schema renders (regenerate it: python scripts/settings_doc.py), and every
    setting there says what it means."""
    import dataclasses

    from moco.config import Config, all_keys
    from moco.presets.reference import field_comments, render

    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == render(), "run: python scripts/settings_doc.py > docs/settings.md"
    assert all(f"| `{k}` |" in page for k in all_keys())
    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        blank = [f.name for f in dataclasses.fields(cls) if not field_comments(cls).get(f.name)]
        assert not blank, f"{section.name}: {blank} have no comment in moco/schema.py"
