"""Hypothesis tests H1–H4, the primary effect and the checks beside them, as tables.

Every function takes a :class:`StudyResults` (``load(results_dir)``) and returns a
:class:`HypothesisTables`: named pandas tables, the rows it enters into the H1–H4 family
and the counts its answer quotes. Nothing here draws or writes prose; the report
(:mod:`attnvar.report`) turns these tables into figures and answers.

The unit of analysis is the prompt: one effect per prompt and condition (mode, θ,
policy). The **primary design** is the replay contrast: the within-query contrast of the
generated run (parallel sets at shared positions) minus the same contrast on the replay
of the same tree under the preregistered ``contrast_encoding`` (``serial`` by default:
every member at its own position), so the text is held fixed and only the encoding
differs. Effects are on the log scale δ (negative = parallel tokens receive less
attention) and in % as reductions, 100·(1 − e^δ) (positive = less).
"""

from __future__ import annotations

from .checks import (
    SPECIFICATIONS,
    dataset,
    degeneracy,
    heads,
    predictability,
    prototype,
    robustness,
)
from .context import h4_context
from .controls import controls
from .primary import distance_table, primary
from .results import (
    CELL_COLUMNS,
    CONDITION,
    HypothesisTables,
    StudyResults,
    condition_label,
    contrast,
    effects,
    load,
    summarize,
)
from .semantics import h3_semantics
from .structure import h2_structure
from .suite import HYPOTHESES, compute_all, family
from .temporal import h1_temporal, step_effects

__all__ = ["CELL_COLUMNS", "CONDITION", "HYPOTHESES", "SPECIFICATIONS", "HypothesisTables",
           "StudyResults", "compute_all", "condition_label", "contrast", "controls", "dataset",
           "degeneracy", "distance_table", "effects", "family", "h1_temporal", "h2_structure",
           "h3_semantics", "h4_context", "heads", "load", "predictability", "primary", "prototype",
           "robustness", "step_effects", "summarize"]
