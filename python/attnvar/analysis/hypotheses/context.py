"""H4 context and proportion: more parallel context, larger effect?"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics.profiles import MAX_STEPS_GRID
from .results import (
    HypothesisTables,
    StudyResults,
    contrast,
    effects,
    metric_label,
    ols,
    p_column,
    profile_label,
    profile_rows,
    summarize,
    test_row,
    tests_frame,
)


def steps_dose_effects(res: StudyResults) -> pd.DataFrame:
    """Per kept cell and max_steps T: the contrast of the queries of steps < T (generated
    minus the contrast replay), in the primary metric's M1 variant. A run shorter than T
    enters T with its whole length (it would have stopped there anyway); T runs up to the
    study's longest run."""
    tr = profile_rows(res, "truncated")
    out = contrast(tr, ["cell_id", "max_steps"], design=res.design,
                   encoding=res.contrast_encoding).dropna(subset=["effect"])
    if out.empty:
        return out.assign(prompt_id=pd.Series(dtype=object), mode=pd.Series(dtype=object))
    longest = int(out["max_steps"].max())
    grid = sorted({t for t in MAX_STEPS_GRID if t < longest} | {longest})
    rows = []
    for cell, sub in out.groupby("cell_id"):
        sub = sub.set_index("max_steps")["effect"].sort_index()
        for T in grid:
            at = sub[sub.index <= T]  # the longest truncation of this run within T
            if len(at):
                rows.append({"cell_id": cell, "max_steps": T, "effect": float(at.iloc[-1])})
    per = pd.DataFrame(rows, columns=["cell_id", "max_steps", "effect"])
    return res.kept_cells().merge(per, on="cell_id", how="inner")


def h4_context(res: StudyResults) -> HypothesisTables:
    """H4: does the effect depend on how much of the context is parallel?

    Tables: ``association`` (per mode and covariate — proportion of parallel steps,
    number of parallel steps, mean set width: OLS slope across prompts of the effect on
    the covariate), ``threshold_dose`` (per mode: per-prompt slope of the effect over θ
    when the study varies θ, summarised; the H4 test when present, else the association
    with the proportion of parallel steps is), ``by_threshold`` (per mode and θ),
    ``steps_dose`` (per mode and max_steps T: the contrast of the queries of steps < T,
    i.e. what runs of T steps give under deterministic selection;
    :func:`steps_dose_effects`). Effects are the primary metric throughout (the profile's
    M1 variant for ``steps_dose``). Facts:
    ``thresholds`` (how many θ values the study has).
    """
    eff = effects(res)
    assoc = []
    for mode, sub in eff.groupby("mode"):
        per = sub.groupby("prompt_id")[["effect", "proportion_parallel", "parallel_steps",
                                        "mean_width"]].mean()
        for cov in ("proportion_parallel", "parallel_steps", "mean_width"):
            assoc.append({"mode": mode, "covariate": cov,
                          **ols(per[cov].to_numpy(float), per["effect"].to_numpy(float))})
    assoc = pd.DataFrame(assoc, columns=["mode", "covariate", "slope", "ci_low", "ci_high",
                                         "p", "n"])
    thresholds = sorted(eff["threshold"].unique())
    dose_rows = []
    if len(thresholds) >= 2:
        for (prompt, mode), sub in eff.groupby(["prompt_id", "mode"]):
            per = sub.groupby("threshold")["effect"].mean()
            if len(per) >= 2:
                slope = np.polyfit(per.index.to_numpy(float), per.to_numpy(), 1)[0]
                dose_rows.append({"prompt_id": prompt, "mode": mode, "slope": slope})
    dose = pd.DataFrame(dose_rows, columns=["prompt_id", "mode", "slope"])
    threshold_dose = summarize(dose, ["mode"], res, effect="slope", correction="holm",
                               equivalence=False)
    by_theta = summarize(eff, ["mode", "threshold"], res) if len(thresholds) >= 1 \
        else pd.DataFrame()
    sd = steps_dose_effects(res)
    steps_dose = (summarize(sd, ["mode", "max_steps"], res, equivalence=False)
                  if len(sd) else pd.DataFrame())
    tests = []
    if len(threshold_dose):
        pcol = p_column(res)
        for s in threshold_dose.to_dict("records"):
            tests.append(test_row("H4", s["mode"], "slope of the effect over θ (per prompt, t)",
                                  s["mean"], s["ci_low"], s["ci_high"], s[pcol], s["n"],
                                  unit="log units per unit θ", metric=metric_label(res),
                                  sd=s["sd"], alpha=res.alpha))
    else:
        for s in assoc[assoc["covariate"] == "proportion_parallel"].to_dict("records"):
            tests.append(test_row("H4", s["mode"],
                                  "OLS slope on the proportion of parallel steps",
                                  s["slope"], s["ci_low"], s["ci_high"], s["p"], s["n"],
                                  unit="log units per unit proportion",
                                  metric=metric_label(res)))
    return HypothesisTables("H4", {"association": assoc, "threshold_dose": threshold_dose,
                                   "by_threshold": by_theta, "steps_dose": steps_dose},
                            tests_frame(tests), facts={"thresholds": len(thresholds)},
                            metric=metric_label(res),
                            table_metrics={"steps_dose": profile_label(res)})


__all__ = ["h4_context", "steps_dose_effects"]
