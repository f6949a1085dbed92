"""The study layer: a grid of runs over prompt suites, its preregistered analysis plan
and exclusion rule, and the runner that executes it into a results directory.

Depends on the engine (and ``attnvar.util``); the analysis and report build on it.
"""

from __future__ import annotations

from . import degeneracy, preregistration, prompts
from .grid import Study
from .preregistration import Preregistration
from .runner import format_summary, run_cell, run_study, runs_table, write_tables
from .store import RUNS, STUDY_FILE, SUMMARY_FILE, TABLES, Cell, iter_completed, replay_key

__all__ = ["RUNS", "STUDY_FILE", "SUMMARY_FILE", "TABLES", "Cell", "Preregistration", "Study",
           "degeneracy", "format_summary", "iter_completed", "preregistration", "prompts",
           "replay_key", "run_cell", "run_study", "runs_table", "write_tables"]
