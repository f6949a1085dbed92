"""The report layer: figures, prose and the Markdown/HTML hypothesis report, read from
the analysis layer's tables; plots of single runs for notebooks.

Nothing here computes a number the report prints: :mod:`.findings` pairs each
hypothesis function's tables with :mod:`.figures` and :mod:`.prose`, and
:mod:`.document` lays them out.
"""

from __future__ import annotations

from . import document, figures, findings, plots, prose
from .document import REPORT_DIR, build_blocks, compliance, summary_table, write_report
from .findings import Finding, run_all

__all__ = ["REPORT_DIR", "Finding", "build_blocks", "compliance", "document", "figures",
           "findings", "plots", "prose", "run_all", "summary_table", "write_report"]
