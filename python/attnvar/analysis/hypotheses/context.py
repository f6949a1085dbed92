"""H4 context and proportion: more parallel context, larger effect?"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .results import (
    HypothesisTables,
    StudyResults,
    effects,
    ols,
    p_column,
    summarize,
    test_row,
    tests_frame,
)
from .temporal import step_effects

MAX_STEPS_GRID = (2, 5, 10, 15, 20, 30, 40, 60)


def h4_context(res: StudyResults) -> HypothesisTables:
    """H4: does the effect depend on how much of the context is parallel?

    Tables: ``association`` (per mode and covariate — proportion of parallel steps,
    number of parallel steps, mean set width: OLS slope across prompts of the effect on
    the covariate), ``threshold_dose`` (per mode: per-prompt slope of the effect over θ
    when the study varies θ, summarised; the H4 test when present, else the association
    with the proportion of parallel steps is), ``by_threshold`` (per mode and θ),
    ``steps_dose`` (per mode and max_steps T: the per-step contrast averaged over steps
    ≤ T, i.e. what runs of T steps give under deterministic selection). Facts:
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
    st = step_effects(res)
    st = st[st["key_phase"] == "all"].sort_values("query_step")
    max_t = int(st["query_step"].max()) if len(st) else 0
    grid = sorted({t for t in (*MAX_STEPS_GRID, max_t) if 1 <= t <= max_t})
    sd_rows = []
    for T in grid:
        cut = st[st["query_step"] < T].groupby(["cell_id", "prompt_id", "mode"])["effect"] \
            .mean().reset_index()
        cut["max_steps"] = T
        sd_rows.append(cut)
    steps_dose = (summarize(pd.concat(sd_rows), ["mode", "max_steps"], res)
                  if sd_rows else pd.DataFrame())
    tests = []
    if len(threshold_dose):
        pcol = p_column(res)
        for s in threshold_dose.to_dict("records"):
            tests.append(test_row("H4", s["mode"], "slope of the effect over θ (per prompt, t)",
                                  s["mean"], s["ci_low"], s["ci_high"], s[pcol], s["n"],
                                  unit="log units per unit θ"))
    else:
        for s in assoc[assoc["covariate"] == "proportion_parallel"].to_dict("records"):
            tests.append(test_row("H4", s["mode"],
                                  "OLS slope on the proportion of parallel steps",
                                  s["slope"], s["ci_low"], s["ci_high"], s["p"], s["n"],
                                  unit="log units per unit proportion"))
    return HypothesisTables("H4", {"association": assoc, "threshold_dose": threshold_dose,
                                   "by_threshold": by_theta, "steps_dose": steps_dose},
                            tests_frame(tests), facts={"thresholds": len(thresholds)})


__all__ = ["h4_context"]
