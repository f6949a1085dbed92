"""The docs site's inputs: pinned tools that agree, no reference to files outside the
repository, and a C++ entry header whose Contents the reference generator can follow.
(The site itself is built in strict mode by scripts/docs.sh, a stage of scripts/test.sh.)"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "docs"))
try:
    import cpp_reference
finally:
    sys.path.pop(0)


def test_the_docs_requirements_and_the_docs_extra_pin_the_same_versions():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    pins = [line.split("#")[0].strip()
            for line in (ROOT / "scripts" / "requirements-docs.txt").read_text().splitlines()]
    pins = sorted(p for p in pins if p)
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", p) for p in pins), pins
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["docs"]
    assert sorted(extra) == pins


OUTSIDE = re.compile(r"\.\./shared|\bshared/[A-Z_]+\.md|\bDESIGN\.md|\bMETHODS\.md|"
                     r"TEMPO_REFERENCE")


def test_nothing_refers_to_files_outside_the_repository():
    """The docs, the README, the docstrings and the CLI help explain things in the
    project's own words: no pointer to notes a user of the repository does not have."""
    files = [ROOT / "README.md", ROOT / "mkdocs.yml", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted((ROOT / "python" / "attnvar").rglob("*.py")),
             *sorted((ROOT / "cpp" / "include").rglob("*.h"))]
    hits = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}"
            for f in files
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
            if OUTSIDE.search(line)]
    assert not hits, "\n".join(hits)


def test_docs_pages_named_in_the_docs_exist():
    """`docs/NAME.md` named in prose (not only as links, which the strict build checks)
    is a page of the site."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted((ROOT / "python" / "attnvar").rglob("*.py"))]
    named = {m for f in files for m in re.findall(r"\bdocs/[a-z0-9_/-]+\.md\b", f.read_text())}
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"named but not in docs/: {missing}"


def test_the_entry_header_sections_and_contents_are_parsed():
    intro, sections = cpp_reference.parse_entry_header(
        cpp_reference.ENTRY.read_text(encoding="utf-8").splitlines())
    assert any("General rules" in line for line in intro)
    assert [s.number for s in sections] == list(range(1, len(sections) + 1))
    names = {n for s in sections for n in s.names}
    assert {"load_model", "generate", "replay", "GenerateOptions", "CaptureSpec",
            "bracketed_text", "Error"} <= names
    assert all(s.source for s in sections)


@pytest.mark.skipif(shutil.which("doxygen") is None, reason="Doxygen not installed "
                    "(bash scripts/setup.sh installs it)")
def test_the_cpp_reference_finds_every_name_the_entry_header_lists():
    page = cpp_reference.build_page()  # raises when Doxygen misses a listed name
    assert page.startswith("# C++ API reference")
    for name in ("struct GenerateOptions", "inline GenerationResult generate(",
                 "LoadedModel load_model(", "class Tokenizer", "enum class Encoding"):
        assert name in page, name
    assert "private:" not in page
