"""The prototype whose claims this project tests: its published figures, and its way of
reporting the legacy metric (M0) over prompts.

The published figures come from the prototype's research notes: M0 legacy, θ = 0.15,
30 steps, on a 3B Llama derivative, with the prototype's own mechanism. They are facts to
put beside this project's numbers, labelled with the model and mechanism that produced
each, never a like-for-like comparison.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

PUBLISHED_MODEL = "deepcogito/cogito-v1-preview-llama-3B (a Llama-3.2-3B derivative)"
PUBLISHED_MECHANISM = ("the prototype's: one member per set fed, sequential positions, "
                       "misplaced isolation mask, cache/printed index mismatch in the metric")
OUR_COMPAT = "the compat preset tempo-2025 (the prototype's bookkeeping)"
OUR_MECHANISM = "the mechanism as described (every member at one shared position)"
# The prototype's research notes (published figures, M0 legacy, θ = 0.15, 30 steps).
PUBLISHED = pd.DataFrame([
    {"claim": "13-prompt suite", "prompts": 12, "mean_pct": -12.1, "sd_pct": 24.1,
     "median_pct": -11.3, "min_pct": -60.9, "max_pct": 30.1, "t": -1.52, "p": 0.156},
    {"claim": "48-prompt suite", "prompts": 48, "mean_pct": -2.8, "sd_pct": 27.1,
     "median_pct": math.nan, "min_pct": -71.3, "max_pct": 78.1, "t": math.nan, "p": 0.505},
])
PUBLISHED_PER_PROMPT = {
    "narrative_2": -60.9, "factual_3": -38.3, "factual_1": -27.9, "simple_1": -24.8,
    "simple_2": -21.8, "conversational_1": -13.5, "conversational_2": -9.1,
    "factual_2": -8.5, "complex_1": 0.9, "narrative_3": 9.9, "narrative_1": 18.5,
    "technical_2": 30.1,
}


def prototype_summary(per_prompt: pd.DataFrame, mechanism: str = OUR_COMPAT,
                      by: tuple[str, ...] = ("mode", "leak")) -> pd.DataFrame:
    """Per condition (``by``), M0 as the prototype reported it: mean ± population SD,
    median, range, and the paired t test of the raw means (non-parallel vs parallel)
    over prompts; beside it the means of M0 corrected and the primary metric."""
    rows = []
    for key, g in per_prompt.groupby(list(by), sort=False):
        v = g["m0_legacy_pct"].to_numpy(float)
        ok = np.isfinite(v)
        n_, p_ = g["mean_nonparallel"].to_numpy(float)[ok], g["mean_parallel"].to_numpy(float)[ok]
        t, p = sps.ttest_rel(n_, p_) if ok.sum() >= 2 else (math.nan, math.nan)
        rows.append({
            **dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
            "prompts": int(ok.sum()),
            "mean_pct": float(v[ok].mean()) if ok.any() else math.nan,
            "sd_pct": float(v[ok].std(ddof=0)) if ok.any() else math.nan,
            "median_pct": float(np.median(v[ok])) if ok.any() else math.nan,
            "min_pct": float(v[ok].min()) if ok.any() else math.nan,
            "max_pct": float(v[ok].max()) if ok.any() else math.nan,
            "t": float(t), "p": float(p),
            "m0_corrected_mean_pct": float(np.nanmean(g["m0_corrected_pct"]))
            if g["m0_corrected_pct"].notna().any() else math.nan,
            "primary_mean_pct": float(np.nanmean(g["primary_pct"]))
            if g["primary_pct"].notna().any() else math.nan,
            "model": "", "mechanism": mechanism,
        })
    return pd.DataFrame(rows)



__all__ = ["OUR_COMPAT", "OUR_MECHANISM", "PUBLISHED", "PUBLISHED_MECHANISM", "PUBLISHED_MODEL",
           "PUBLISHED_PER_PROMPT", "prototype_summary"]
