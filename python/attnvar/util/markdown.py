"""Markdown tables for the study summary and the hypothesis report."""

from __future__ import annotations

import numpy as np


def format_cell(v) -> str:
    """One table cell: floats to 3 significant digits (tiny ones in e-notation), missing
    values as "–", booleans as yes / no."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def markdown_table(frame) -> str:
    """A pandas frame as a Markdown table (cells by :func:`format_cell`, "|" escaped)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(format_cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


__all__ = ["format_cell", "markdown_table"]
