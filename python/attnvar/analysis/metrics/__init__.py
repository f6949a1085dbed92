"""Attention metrics for parallel tokens (docs/metrics.md).

Typical use::

    run = model.generate(prompt, capture=attnvar.Capture(scores=True))
    top = model.replay(run.tree, "top_only", capture=attnvar.Capture())
    sinks = attnvar.metrics.find_sinks(top)          # fixed before labels are read
    table = attnvar.metrics.analyze(run, sinks=sinks, prompt="simple_1")

Every table follows frames.COLUMNS and the sign convention: ``effect_pct`` positive =
parallel tokens receive less attention; log-scale estimates keep their natural sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .contrast import contrast_estimates, mass_ratio, position_contrast, score_contrast
from .counting import (
    CaptureView,
    CountedPairs,
    Sinks,
    as_view,
    count_pairs,
    find_sinks,
    placebo_labels,
)
from .covariates import CLOSED_CLASS_WORDS, PIECE_TYPES, piece_type, token_covariates
from .fixed_effects import fit_within_query
from .frames import COLUMNS, effect_pct, frame
from .knockout import KnockoutReplay, knockout, knockout_replay, match_keys, next_token_effects
from .legacy import corrected_rows, legacy_reduction
from .regression import logit_regression, natural_spline_basis, regression_fit
from .rollout import rollout, rollout_contrast, rollout_masses
from .value_weighted import value_weighted

METRICS = ("M0", "M1", "M1m", "M1p", "M2", "M3", "M4")


def analyze(
    run: Any,
    sinks: Sinks | None = None,
    metrics: Sequence[str] | None = None,
    exclude_sinks: Sequence[bool] = (True, False),
    prompt: str | None = None,
    by_head_m0: bool = False,
    labels=None,
    top_only: Any = None,
):
    """Every metric of one run in one tidy table.

    Parameters
    ----------
    run : a Run (or CaptureView) with scores captured (and attention for M0)
    sinks : from :func:`find_sinks` on the ``top_only`` replay of the same tree; None
        means the first slot only
    metrics : any of "M0", "M1", "M1m", "M1p", "M2", "M3", "M4". None (default): M0–M2,
        plus M3 when the run captured value norms, plus M4 when ``top_only`` is given.
        Asking for M3 without value norms, or M4 without ``top_only``, raises. M5
        (knockout) runs the model and is called on its own (:func:`knockout`).
    exclude_sinks : report with (True) and/or without (False) the sink exclusion
    prompt : the prompt id written into the table
    by_head_m0 : add per-head M0 rows
    labels : [N] bool placebo labels (not applied to M0 legacy, which has its own)
    top_only : the ``top_only`` replay of the run's tree, attention captured in every
        layer and head (M4)

    Returns
    -------
    pandas.DataFrame (frames.COLUMNS, then metric-specific columns).
    """
    import pandas as pd

    view = as_view(run)
    if metrics is None:
        metrics = [m for m in METRICS
                   if (m != "M3" or view.value_norms is not None)
                   and (m != "M4" or top_only is not None)]
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    if "M3" in metrics and view.value_norms is None:
        raise ValueError("M3 needs value-contribution norms, which this run did not "
                         "capture: pass capture=attnvar.Capture(value_norms=True)")
    if "M4" in metrics and top_only is None:
        raise ValueError("M4 compares the run's rollout with its top_only replay: pass "
                         "top_only=model.replay(run.tree, 'top_only', capture=Capture())")
    parts = []
    if "M0" in metrics:
        parts.append(legacy_reduction(view, by_head=by_head_m0, prompt=prompt))
    for excl in exclude_sinks:
        pairs = count_pairs(view, sinks=sinks, exclude_sinks=excl, labels=labels)
        if "M0" in metrics:
            parts.append(frame(corrected_rows(pairs, by_head_m0), prompt=prompt,
                               kind=view.kind, encoding=view.encoding, sinks_excluded=excl))
        if "M1" in metrics:
            parts.append(score_contrast(pairs, prompt=prompt))
            parts.append(score_contrast(pairs, distance_matched=True, prompt=prompt))
        if "M1m" in metrics:
            parts.append(mass_ratio(pairs, prompt=prompt))
        if "M1p" in metrics:
            parts.append(position_contrast(pairs, prompt=prompt))
        if "M2" in metrics:
            parts.append(logit_regression(pairs, prompt=prompt))
        if "M3" in metrics:
            parts.append(value_weighted(pairs, prompt=prompt))
        if "M4" in metrics:
            parts.append(rollout_contrast(run, top_only, sinks=sinks, exclude_sinks=excl,
                                          labels=labels, prompt=prompt))
    return pd.concat(parts, ignore_index=True)


__all__ = [
    "CLOSED_CLASS_WORDS",
    "COLUMNS",
    "METRICS",
    "PIECE_TYPES",
    "CaptureView",
    "CountedPairs",
    "KnockoutReplay",
    "Sinks",
    "analyze",
    "as_view",
    "contrast_estimates",
    "count_pairs",
    "effect_pct",
    "find_sinks",
    "fit_within_query",
    "knockout",
    "knockout_replay",
    "legacy_reduction",
    "logit_regression",
    "mass_ratio",
    "match_keys",
    "natural_spline_basis",
    "next_token_effects",
    "piece_type",
    "placebo_labels",
    "position_contrast",
    "regression_fit",
    "rollout",
    "rollout_contrast",
    "rollout_masses",
    "score_contrast",
    "token_covariates",
    "value_weighted",
]
