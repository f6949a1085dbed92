"""H1 temporal: does the effect change over the generation?"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import stats
from ..metrics.profiles import PHASES
from .results import (
    HypothesisTables,
    StudyResults,
    contrast,
    p_column,
    profile_label,
    profile_rows,
    summarize,
    test_row,
    tests_frame,
)


def step_effects(res: StudyResults) -> pd.DataFrame:
    """Per kept cell, key phase and query step: the per-step contrast (generated run
    minus the contrast replay, or the generated run alone in the observational design),
    in the M1 variant of the primary metric (results.profile_variant)."""
    st = profile_rows(res, "steps")
    out = contrast(st, ["cell_id", "key_phase", "query_step", "query_phase"],
                   design=res.design, encoding=res.contrast_encoding)
    return res.kept_cells().merge(out, on="cell_id", how="inner")


RANDOM_SLOPE = "random intercept and slope for query_step by prompt"
RANDOM_INTERCEPT = "random intercept by prompt (the random-slope model did not converge)"


def mixed_sensitivity(mode: str, sub: pd.DataFrame) -> dict:
    """H1's sensitivity analysis (never its verdict, which is the per-prompt slope t test):
    MixedLM ``effect ~ query_step`` with a random intercept *and slope* for the step by
    prompt, so that steps of one prompt are not treated as independent evidence about the
    slope; when it does not converge, the random-intercept model, and the row says so."""
    row = {"mode": mode}
    for model, re_formula in ((RANDOM_SLOPE, "~query_step"), (RANDOM_INTERCEPT, None)):
        try:
            mm = stats.mixed_model(sub, "effect ~ query_step", groups="prompt_id",
                                   re_formula=re_formula)
        except (ValueError, np.linalg.LinAlgError) as e:
            row["note"] = f"{model}: failed ({e})"
            continue
        if not mm.attrs["converged"] and re_formula is not None:
            row["note"] = "the random-slope model did not converge"
            continue
        r = mm[mm["term"] == "query_step"].iloc[0]
        row.update(model=model, term="query_step", estimate=r["estimate"], se=r["se"],
                   p=r["p"], ci_low=r["ci_low"], ci_high=r["ci_high"],
                   converged=mm.attrs["converged"], n_prompts=mm.attrs["n_groups"],
                   n_obs=mm.attrs["n_obs"])
        return row
    return row


def in_phase_order(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows by mode, then phase in time order (early, middle, late), not alphabetically."""
    if table.empty or column not in table:
        return table
    rank = table[column].map({p: i for i, p in enumerate(PHASES)}).fillna(len(PHASES))
    keys = [k for k in ("mode",) if k in table]
    return (table.assign(_rank=rank).sort_values([*keys, "_rank"], kind="stable")
            .drop(columns="_rank").reset_index(drop=True))


def h1_temporal(res: StudyResults) -> HypothesisTables:
    """H1: does the effect change over the generation?

    Every table reads the per-step contrast in the primary metric's M1 variant
    (distance-matched by default: one parallel coefficient per query step, the distance
    effects shared by the run's queries). Tables: ``by_query_phase`` and ``by_key_phase``
    (summaries per mode and tercile),
    ``slopes`` (per cell: OLS slope of the per-step effect on the query step),
    ``slope_summary`` (per mode: test of the mean slope; this is the H1 test),
    ``mixed`` (per mode: the sensitivity analysis of :func:`mixed_sensitivity` — MixedLM
    effect ~ query_step with a random intercept and slope by prompt; never the verdict),
    ``reversals`` (per cell: early and late effects with 95 % CIs and whether they
    exclude 0 with opposite signs), ``profile`` (per mode and query step: mean effect
    over prompts with a 95 % CI, in log units and %). Facts: ``reversals`` (runs whose
    early and late effects exclude 0 with opposite signs), ``runs``.
    """
    se = step_effects(res)
    allk = se[se["key_phase"] == "all"]
    by_q = in_phase_order(summarize(allk, ["mode", "query_phase"], res), "query_phase")
    by_k = in_phase_order(summarize(se[se["key_phase"] != "all"], ["mode", "key_phase"], res),
                          "key_phase")
    slopes = []
    for (cell, prompt, mode), sub in allk.groupby(["cell_id", "prompt_id", "mode"]):
        if sub["query_step"].nunique() >= 3:
            b = np.polyfit(sub["query_step"].to_numpy(float), sub["effect"].to_numpy(float), 1)[0]
            slopes.append({"cell_id": cell, "prompt_id": prompt, "mode": mode, "slope": b})
    slopes = pd.DataFrame(slopes, columns=["cell_id", "prompt_id", "mode", "slope"])
    slope_summary = summarize(slopes, ["mode"], res, effect="slope", correction="holm",
                              equivalence=False)
    mixed = pd.DataFrame([mixed_sensitivity(mode, sub) for mode, sub in allk.groupby("mode")
                          if sub["prompt_id"].nunique() >= 3],
                         columns=["mode", "model", "term", "estimate", "se", "p", "ci_low",
                                  "ci_high", "converged", "n_prompts", "n_obs", "note"])
    rev = []
    for (cell, prompt, mode), sub in allk.groupby(["cell_id", "prompt_id", "mode"]):
        row = {"cell_id": cell, "prompt_id": prompt, "mode": mode}
        for ph in ("early", "late"):
            v = sub.loc[sub["query_phase"] == ph, "effect"].to_numpy(float)
            m = v.mean() if v.size else math.nan
            h = 1.96 * v.std(ddof=1) / math.sqrt(v.size) if v.size >= 2 else math.nan
            row.update({f"{ph}": m, f"{ph}_low": m - h, f"{ph}_high": m + h})
        row["reversal"] = bool((row["early_low"] > 0 and row["late_high"] < 0)
                               or (row["early_high"] < 0 and row["late_low"] > 0))
        rev.append(row)
    rev = pd.DataFrame(rev, columns=["cell_id", "prompt_id", "mode", "early", "early_low",
                                     "early_high", "late", "late_low", "late_high", "reversal"])
    prof = (allk.groupby(["mode", "query_step"])["effect"]
            .agg(["mean", "std", "count"]).reset_index())
    half = 1.96 * prof["std"] / np.sqrt(prof["count"].clip(lower=1))
    prof["mean_pct"] = stats.pct_from_log(prof["mean"])
    prof["low_pct"] = stats.pct_from_log(prof["mean"] + half)
    prof["high_pct"] = stats.pct_from_log(prof["mean"] - half)
    pcol = p_column(res)
    label = profile_label(res)
    tests = [test_row("H1", s["mode"], "slope over steps (per-prompt OLS, t)", s["mean"],
                      s["ci_low"], s["ci_high"], s[pcol], s["n"], unit="log units per step",
                      metric=label, sd=s["sd"], alpha=res.alpha)
             for s in slope_summary.to_dict("records")]
    return HypothesisTables("H1", {"by_query_phase": by_q, "by_key_phase": by_k,
                                   "slopes": slopes, "slope_summary": slope_summary,
                                   "mixed": mixed, "reversals": rev, "profile": prof},
                            tests_frame(tests),
                            facts={"reversals": int(rev["reversal"].sum()) if len(rev) else 0,
                                   "runs": len(rev)}, metric=label)


__all__ = ["h1_temporal", "step_effects"]
