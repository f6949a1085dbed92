"""The report's figures, drawn from the hypothesis tables (nothing is computed here but
what a figure needs to place its marks)."""

from __future__ import annotations

from typing import Any

from ..analysis.hypotheses import CONDITION, HypothesisTables, StudyResults, condition_label
from ..analysis.hypotheses.checks import heads_metric
from . import plots


def primary(t: HypothesisTables, res: StudyResults) -> dict[str, Any]:
    eff, summary, dist = t.tables["effects"], t.tables["summary"], t.tables["distance"]
    figures = {}
    for key, sub in eff.groupby(CONDITION):
        srow = summary
        for c, v in zip(CONDITION, key, strict=True):
            srow = srow[srow[c] == v] if c in srow else srow
        pooled = None
        if len(srow):
            s = srow.iloc[0]
            pooled = {"effect_pct": s["mean_pct"], "effect_pct_low": s["ci_pct_low"],
                      "effect_pct_high": s["ci_pct_high"], "prompt_id": "mean over prompts"}
        label = condition_label(dict(zip(CONDITION, key, strict=True)))
        figures[f"forest {label}"] = plots.forest_plot(
            sub.sort_values("effect_pct"), "effect_pct", "effect_pct_low", "effect_pct_high",
            "prompt_id", pooled=pooled, xlabel="reduction in % (positive = less attention)",
            title=f"{label}\n{t.metric}", clip=True)
    if len(dist):
        figures["distance profile"] = plots.distance_plot(dist)
    return figures


def h1(t: HypothesisTables, res: StudyResults) -> dict[str, Any]:
    return {"step profile": plots.profile_plot(
        t.tables["profile"], "query_step", "mean_pct", "low_pct", "high_pct", group="mode",
        xlabel="query step", ylabel="reduction in % (positive = less)",
        title=f"H1: effect by query step (mean over prompts, 95 % CI)\n{t.metric}")}


def h2(t: HypothesisTables, res: StudyResults) -> dict[str, Any]:
    pairs = t.tables["pairs"]
    if not len(pairs):
        return {}
    # One panel per mode and θ, so each pair is one line in each panel.
    pairs = pairs.assign(condition=[f"{m} θ={t:g}" for m, t in
                                    zip(pairs["mode"], pairs["threshold"], strict=True)])
    return {"matched pairs": plots.paired_plot(
        pairs, "incomplete", "complete", group="condition",
        ylabel="effect (log scale; negative = less)",
        title=f"H2: the same content, incomplete vs complete\n{t.metric}")}


def h3(t: HypothesisTables, res: StudyResults) -> dict[str, Any]:
    return {f"token classes {mode}": plots.forest_plot(
        sub, "mean_pct", "ci_pct_low", "ci_pct_high", "class",
        xlabel="reduction in % within the class (positive = less)",
        title=f"H3: effect by token class — {mode}\n{t.metric}", clip=True)
        for mode, sub in (t.tables["classes"].groupby("mode")
                          if "mode" in t.tables["classes"] else [])}


def h4(t: HypothesisTables, res: StudyResults) -> dict[str, Any]:
    by_theta, steps_dose = t.tables["by_threshold"], t.tables["steps_dose"]
    figures = {}
    if len(by_theta) and t.facts["thresholds"] >= 2:
        figures["dose θ"] = plots.dose_plot(by_theta, "threshold", group="mode", xlabel="θ",
                                            title=f"H4: effect by selection threshold θ\n"
                                                  f"{t.metric_of('by_threshold')}")
    if len(steps_dose):
        figures["dose max_steps"] = plots.dose_plot(
            steps_dose, "max_steps", group="mode", xlabel="max_steps (steps ≤ T)",
            title=f"H4: effect by generation length\n{t.metric_of('steps_dose')}")
    return figures


def robustness(t: HypothesisTables, res: StudyResults) -> dict[str, Any]:
    spec = t.tables["specifications"]
    return {"specification curve": plots.spec_curve(spec)} if len(spec) else {}


def heads(t: HypothesisTables, res: StudyResults) -> dict[str, Any]:
    table = t.tables["heads"]
    metric, variant = heads_metric(res)
    return {f"heads {mode}": plots.head_heatmap(
        sub, "mean_pct", "reject",
        title=f"{metric} {variant} per head, {mode}: reduction in % "
              f"(● BH q < {res.plan['heads_q']})")
        for mode, sub in (table.groupby("mode") if len(table) else [])}


def degeneracy(t: HypothesisTables, res: StudyResults) -> dict[str, Any]:
    rates = t.tables["rates"]
    flag_cols = [c for c in rates.columns if c.startswith("flag_")]
    return {"degeneracy": plots.degeneracy_plot(rates, flag_cols)} if len(rates) else {}


def none(t: HypothesisTables, res: StudyResults) -> dict[str, Any]:
    return {}


FIGURES = {"dataset": none, "controls": none, "primary": primary, "H1": h1, "H2": h2,
           "H3": h3, "H4": h4,
           "predictability": none, "robustness": robustness, "prototype": none,
           "heads": heads,
           "degeneracy": degeneracy, "family": none}

__all__ = ["FIGURES"]
