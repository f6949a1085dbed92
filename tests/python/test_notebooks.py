"""Every notebook in notebooks/ runs top to bottom on the bundled model in its small
setting (ATTNVAR_NOTEBOOK_SMALL=1, as CI runs it) and is committed without outputs.

The kernel is nbclient's ``python3``: with ipykernel importable, jupyter_client builds
that spec from the running interpreter (no ``ipykernel install`` needed). The kernel gets
this process's environment with PYTHONPATH pointing at the attnvar being tested, and a
final injected cell checks it imported that same package."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

import attnvar  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
STRIP_HINT = "strip outputs with: python tools/strip_notebook_outputs.py notebooks/*.ipynb"


def test_the_documented_notebooks_are_present():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_quickstart", "02_parallel_set_anatomy", "03_hypotheses",
            "04_rope_or_key_content"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs; {STRIP_HINT}"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata, f"{path.name} stores widget state; {STRIP_HINT}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, bundled_path, tmp_path, monkeypatch):
    # The package dir as imported (not symlink-resolved: the dev package links its files).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(attnvar.__file__)))
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [package_root, inherited])))
    monkeypatch.setenv("ATTNVAR_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import attnvar\nprint(attnvar.__file__)"))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell on any error
    elapsed = time.perf_counter() - start

    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    assert printed.strip() == os.path.abspath(attnvar.__file__)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    print(f"{path.name}: {elapsed:.1f} s")
