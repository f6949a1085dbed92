"""Findings: each hypothesis function's tables (from :mod:`attnvar.analysis.hypotheses`)
together with the report's figures and answer for them.

This is the interface notebooks and the report use (``attnvar.hypotheses`` names this
module): ``primary(res)`` and the others return a :class:`Finding` whose ``tables`` and
``tests`` are exactly the analysis functions' numbers, plus ``figures`` (matplotlib) and
``answer`` (one paragraph), drawn and written from those numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..analysis import hypotheses as compute
from ..analysis.hypotheses import (
    StudyResults,
    contrast,
    distance_table,
    effects,
    load,
)
from ..analysis.hypotheses.results import reading_tables
from ..analysis.hypotheses.suite import DATA_ERRORS, NOT_COMPUTED
from . import figures, prose


@dataclass
class Finding:
    """The result of one hypothesis function, as the report shows it.

    Attributes
    ----------
    name : "primary", "H1", … , "predictability", "robustness", "heads", "degeneracy"
    title : what is tested, in words
    tables : named DataFrames (documented per function in attnvar.analysis.hypotheses)
    figures : named matplotlib Figures
    tests : rows entering the H1–H4 family (hypothesis, mode, test, estimate, p, …)
    answer : the answer in words, generated from the tables
    facts : the counts the answer quotes
    metric, table_metrics : the metric behind the tables (see :meth:`metric_of`)
    """

    name: str
    title: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    answer: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    metric: str = ""
    table_metrics: dict[str, str] = field(default_factory=dict)

    def metric_of(self, table: str) -> str:
        """The metric label of one of the tables ("" when it holds no metric)."""
        return self.table_metrics.get(table, self.metric)


def present(t: compute.HypothesisTables, res: StudyResults) -> Finding:
    """The finding of computed tables ``t``: title, figures and answer added (or, for an
    analysis the study's data did not allow, the reason)."""
    if NOT_COMPUTED in t.facts:
        return Finding(t.name, prose.title(t.name, res), {}, {}, t.tests,
                       f"Not computed for this study: {t.facts[NOT_COMPUTED]}.", t.facts)
    try:
        drawn = figures.FIGURES[t.name](t, res)
        note = ""
    except DATA_ERRORS as e:  # a table too small to draw: say so, keep the numbers
        drawn, note = {}, f" (Figures not drawn for this study: {type(e).__name__}: {e}.)"
    return Finding(t.name, prose.title(t.name, res), t.tables, drawn, t.tests,
                   prose.ANSWERS[t.name](t, res) + note, t.facts, t.metric, t.table_metrics)


def _presented(fn: Callable[..., compute.HypothesisTables]) -> Callable[..., Finding]:
    def finding(res: StudyResults, *args, **kwargs) -> Finding:
        return present(fn(res, *args, **kwargs), res)

    finding.__name__ = finding.__qualname__ = fn.__name__
    finding.__doc__ = (f"The finding of :func:`attnvar.analysis.hypotheses.{fn.__name__}`"
                       " (its tables, with figures and an answer).")
    return finding


dataset = _presented(compute.dataset)
controls = _presented(compute.controls)
primary = _presented(compute.primary)
h1_temporal = _presented(compute.h1_temporal)
h2_structure = _presented(compute.h2_structure)
h3_semantics = _presented(compute.h3_semantics)
h4_context = _presented(compute.h4_context)
predictability = _presented(compute.predictability)
robustness = _presented(compute.robustness)
prototype = _presented(compute.prototype)
heads = _presented(compute.heads)
degeneracy_report = _presented(compute.degeneracy)


def family(findings: dict, res: StudyResults) -> pd.DataFrame:
    """The H1–H4 tests with the plan's family-wise correction (Holm by default)."""
    return compute.family(findings, res)


def run_all(res: StudyResults, predict: bool = True, n_permutations: int = 200,
            workers: int = 1) -> dict[str, Finding]:
    """Every finding of the report, in report order, plus ``family`` (a Finding whose
    table ``family`` holds the corrected H1–H4 tests). ``workers``: processes computing
    the tables (:func:`attnvar.analysis.hypotheses.compute_all`; the same numbers)."""
    with reading_tables():
        return {name: present(t, res) for name, t in
                compute.compute_all(res, predict=predict, n_permutations=n_permutations,
                                    workers=workers).items()}


__all__ = ["Finding", "StudyResults", "contrast", "controls", "dataset", "degeneracy_report",
           "distance_table", "effects", "family", "h1_temporal", "h2_structure",
           "h3_semantics", "h4_context", "heads", "load", "predictability", "present",
           "primary", "prototype", "robustness", "run_all"]
