"""Strip outputs, execution counts and widget state from notebooks, in place.

Notebooks are committed without outputs (tests/python/test_notebooks.py checks it). After
running one in Jupyter, before committing::

    python tools/strip_notebook_outputs.py notebooks/*.ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def strip(path: Path) -> bool:
    """Strip one notebook in place; True if it changed."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after, encoding="utf-8")
    return after != before


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for name in argv:
        if strip(Path(name)):
            print(f"stripped {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
