"""README.md stays short and complete: a table of contents, the required sections in order, links that
resolve, a Layout that names every module, the CI test-command block, and result tables that match
``results/`` (filled by ``python -m experiments.readme`` into docs/results.md and README.md)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from experiments import readme

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTIONS = ["Quickstart", "Search", "Evaluate", "Use a discovered proxy", "From Python", "Results", "Layout"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _headings(text: str) -> list[str]:
    out, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            out.append(line.lstrip("#").strip())
    return out


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_readme_is_short_with_contents_and_sections_in_order():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    level2 = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert level2 == ["Contents", *SECTIONS]
    contents = _section(text, "Contents")
    assert [f"#{_slug(s)}" for s in SECTIONS] == re.findall(r"\]\((#[^)]+)\)", contents)


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to missing {target}"
        if anchor and file.suffix == ".md":
            assert anchor in {_slug(h) for h in _headings(file.read_text())}, f"{page.name}: no anchor {target}"


def test_readme_links_every_docs_page():
    linked = {Path(t).name for t in LINK.findall(README.read_text()) if t.startswith("docs/")}
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= linked


def _layout_sections() -> dict[str, set[str]]:
    """Layout's '### `pkg/`' subsections -> the backticked names in each."""
    layout = _section(README.read_text(), "Layout")
    parts = re.split(r"^### `([\w-]+)/`.*$", layout, flags=re.M)
    return {parts[i]: set(re.findall(r"`([^`]+)`", parts[i + 1])) for i in range(1, len(parts), 2)}


def test_layout_names_every_package_and_module():
    sections = _layout_sections()
    assert set(sections) == {"evoproxy", "primitives", "mqbench", "experiments", "examples"}
    missing = []
    for top, names in sections.items():
        for file in sorted((ROOT / top).rglob("*")):
            if not file.is_file() or "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            rel = file.relative_to(ROOT / top)
            folders = {f"{p.as_posix()}/" for p in rel.parents if p != Path(".")}
            if file.suffix == ".py" and (rel.as_posix() in names or (rel.name == "__init__.py" and folders & names)):
                continue
            if file.suffix != ".py" and (rel.as_posix() in names or folders & names):
                continue
            missing.append(f"{top}/{rel.as_posix()}")
    assert not missing, f"README's Layout does not name: {missing}"


def test_layout_check_bites():
    names = _layout_sections()["evoproxy"]
    assert "api.py" in names and "allocation/optimise.py" in names and "allocation/" in names
    assert "optimise.py" not in names  # a subpackage's module is named with its folder


def test_ci_test_command_block():
    """`.ci/run` takes the 2nd line after the marker (awk: getline; getline)."""
    lines = README.read_text().splitlines()
    at = lines.index("<!-- test-command -->")
    assert lines[at + 1] == "```" and lines[at + 3] == "```"
    assert lines[at + 2] == 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q'
    assert 'awk \'/<!-- test-command -->/{getline; getline; print; exit}\' README.md' in (ROOT / ".ci" / "run").read_text()


def test_result_blocks_match_the_committed_results(capsys):
    assert readme.main(["--check"]) == 0, capsys.readouterr().out
    results = readme.BLOCK.findall((ROOT / "docs" / "results.md").read_text())
    headline = readme.BLOCK.findall(README.read_text())
    assert len(headline) == 1 and headline[0][1] in {m[1] for m in results}
    assert "not generated yet" not in (ROOT / "docs" / "results.md").read_text()


def test_readme_script_fills_both_targets(tmp_path, monkeypatch, capsys):
    (tmp_path / "results" / "x").mkdir(parents=True)
    (tmp_path / "results" / "x" / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    (tmp_path / "docs").mkdir()
    block = "<!-- results:x/t.md -->\nold\n<!-- /results -->"
    (tmp_path / "docs" / "results.md").write_text(f"# R\n\n{block}\n\n<!-- results:y/u.md -->\n<!-- /results -->\n")
    (tmp_path / "README.md").write_text(f"intro\n\n{block}\n\nend\n")
    monkeypatch.setattr(readme, "REPO", tmp_path)
    monkeypatch.setattr(readme, "RESULTS", tmp_path / "results")

    assert readme.main(["--check"]) == 1
    assert "old" in (tmp_path / "README.md").read_text()  # --check writes nothing
    assert readme.main([]) == 0
    assert (tmp_path / "README.md").read_text() == "intro\n\n<!-- results:x/t.md -->\n| a |\n|---|\n| 1 |\n<!-- /results -->\n\nend\n"
    docs = (tmp_path / "docs" / "results.md").read_text()
    assert "| 1 |" in docs and "(not generated yet: results/y/u.md)" in docs
    assert readme.main(["--check"]) == 0
    assert "already up to date" in capsys.readouterr().out


def test_plot_module_as_the_readme_names_it():
    from evoproxy import plot

    assert all(callable(getattr(plot, name)) for name in ("run_progress", "scatter", "ablation"))
    assert "`from evoproxy import plot`" in README.read_text()
