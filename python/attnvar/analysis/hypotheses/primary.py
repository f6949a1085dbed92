"""The preregistered primary effect, and the distance profile beside it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import stats
from .results import (
    CONDITION,
    HypothesisTables,
    StudyResults,
    effects,
    metric_label,
    p_column,
    summarize,
    test_row,
    tests_frame,
)


def primary(res: StudyResults) -> HypothesisTables:
    """The preregistered effect per condition: does a parallel token receive less
    attention because it shares its position?

    Tables: ``effects`` (per cell: generated, replayed, effect, effect_se, effect_pct,
    effect_pct_low/high), ``summary`` (per condition: stats.summarize_family columns,
    Holm across conditions, and ``mde_pct``: the smallest reduction, in %, detectable
    with 80 % power at this n and the observed SD), ``meta`` (per condition:
    random-effects meta-analysis with the HKSJ interval and p — the normal-theory ones
    beside them as ``z_*`` — τ², I², prediction interval, in log units and %),
    ``distance`` (:func:`distance_table`).
    """
    eff = effects(res)
    eff["effect_pct_low"] = stats.pct_from_log(eff["effect"] + 1.96 * eff["effect_se"])
    eff["effect_pct_high"] = stats.pct_from_log(eff["effect"] - 1.96 * eff["effect_se"])
    summary = summarize(eff, CONDITION, res, correction="holm")
    # How sure: the smallest reduction this many prompts detect with 80 % power at the
    # observed spread (log scale, then in % either way).
    if len(summary):
        mde = [stats.mde_paired(int(n), float(sd), 0.8, res.alpha) if n >= 2 and sd > 0
               else np.nan for n, sd in zip(summary["n"], summary["sd"], strict=True)]
        summary["mde_pct"] = stats.pct_from_log(-np.abs(np.asarray(mde, dtype=float)))
    # The meta-analysis needs each prompt's sampling variance: the preregistered metric's
    # prompt SE when it has one (M1 plain, M1m, M1p, M2 pooled), else M1 plain's (the
    # distance-matched fit and the per-head means have none), named in the table.
    meta_eff, meta_metric = eff, f"{res.metric} {res.variant}"
    if not np.isfinite(eff["effect_se"]).any():
        meta_eff, meta_metric = effects(res, "M1", "plain"), "M1 plain"
    metas = []
    for key, sub in meta_eff.groupby(CONDITION):
        row = dict(zip(CONDITION, key, strict=True), metric=meta_metric)
        try:
            m = stats.meta_analysis(sub["effect"], sub["effect_se"] ** 2)
        except ValueError as e:
            row.update(note=str(e))
        else:
            # The interval and p are HKSJ (t, k − 1 df, never narrower than the normal
            # one); the normal-theory ones stay beside them as z_*.
            row.update(k=m["k"], mu=m["mu"], ci_low=m["hk_ci_low"], ci_high=m["hk_ci_high"],
                       p=m["hk_p"], interval="HKSJ (t, k − 1 df)", z_ci_low=m["ci_low"],
                       z_ci_high=m["ci_high"], z_p=m["p"], tau2=m["tau2"], I2=m["I2"],
                       pi_low=m["pi_low"], pi_high=m["pi_high"])
            row.update(mu_pct=stats.pct_from_log(m["mu"]),
                       ci_pct_low=stats.pct_from_log(m["hk_ci_high"]),
                       ci_pct_high=stats.pct_from_log(m["hk_ci_low"]),
                       pi_pct_low=stats.pct_from_log(m["pi_high"]),
                       pi_pct_high=stats.pct_from_log(m["pi_low"]))
        metas.append(row)
    meta = pd.DataFrame(metas) if metas else pd.DataFrame(columns=CONDITION + ["metric"])
    pcol = p_column(res)
    tests = [test_row("primary", d["mode"], res.plan["primary_test"], d["mean_pct"],
                      d["ci_pct_low"], d["ci_pct_high"], d[pcol], d["n"],
                      metric=metric_label(res), sd=d["sd"], alpha=res.alpha)
             for d in summary.to_dict("records")]
    return HypothesisTables("primary", {"effects": eff, "summary": summary, "meta": meta,
                                        "distance": distance_table(res)}, tests_frame(tests),
                            metric=metric_label(res),
                            table_metrics={"distance": DISTANCE_METRIC})


DISTANCE_METRIC = ("query-demeaned scores by logical distance (sinks excluded), generated "
                   "run and replays side by side")


def distance_table(res: StudyResults, max_distance: float = 40.0) -> pd.DataFrame:
    """The distance profile: per mode, source (generated run or a replay), key set
    (parallel / non_parallel) and logical distance, the mean query-demeaned score over
    the kept cells' counted pairs (pair-weighted), with the number of pairs."""
    d = res.tables["distance"]
    if d.empty:
        return pd.DataFrame(columns=["mode", "source", "set", "distance", "mean_score", "n_pairs"])
    d = d[d["distance"] <= max_distance].merge(res.kept_cells()[["cell_id", "mode"]], on="cell_id")
    d = d.assign(weighted=d["mean_score"] * d["n_pairs"])
    g = (d.groupby(["mode", "source", "set", "distance"])[["weighted", "n_pairs"]].sum()
         .reset_index())
    g["mean_score"] = g["weighted"] / g["n_pairs"]
    return g.drop(columns="weighted")


__all__ = ["distance_table", "primary"]
