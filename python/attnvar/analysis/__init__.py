"""The analysis layer: attention metrics, statistics, per-cell analysis of a study's runs
and the hypothesis tests H1–H4 — numbers and tables only.

Depends on the study and engine layers; the report builds on it.
"""

from __future__ import annotations

from . import hypotheses, metrics, predictability, stats
from .per_cell import (
    ANALYSIS_VERSION,
    TABLE_NAMES,
    CellAnalysis,
    analyze_cell,
    analyze_cells,
    analyze_study,
    load_tables,
    read_study,
    write_analysis_tables,
)

__all__ = ["ANALYSIS_VERSION", "TABLE_NAMES", "CellAnalysis", "analyze_cell", "analyze_cells",
           "analyze_study", "hypotheses",
           "load_tables", "metrics", "predictability", "read_study", "stats",
           "write_analysis_tables"]
