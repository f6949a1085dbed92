"""The controls of a study, on its own data: the placebo and the positive control.

Both must pass for the report's verdicts to stand (the report withholds them otherwise):

- **placebo** — per condition and draw, the preregistered primary test over prompts of
  the primary metric on the kept cells' ``top_only`` replays under random labels (as many
  random steps as each generated run has parallel steps; per_cell.placebo_table). There
  is no effect to find, so the share of draws that reject at α must be α up to chance:
  the rejection count is read against the central band of Binomial(draws, α) of level
  1 − 0.01 / (number of conditions). Above the band the test is liberal — it finds
  effects where there are none — and the control fails: a correct test fails somewhere
  with probability at most 0.005, since a failed control withholds every verdict and its
  false alarms must be rare. Below the band the test is conservative on this study's
  data: reported (``reading``), not a failure, since it makes no finding suspect (and
  with a handful of prompts the rate given the data varies widely). Given the data, the
  draws are independent (fresh labels each time), so the count is binomial around the
  data's own rejection rate; that rate varies a little between datasets, which the band
  ignores. On the core suite 1,000 fresh draws
  of each condition reject at 4.2–4.8 %.
- **positive control** — a −log 2 bias on the parallel keys of one layer in a sample of
  the study's runs (analysis.controls); M2's coefficient in that layer must move by the
  bias to within 0.05 on average.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import binom, binomtest
from scipy.stats import t as student_t

from .. import stats
from ..controls import POSITIVE_TOLERANCE
from .results import CONDITION, HypothesisTables, StudyResults

PLACEBO_FAMILY_LEVEL = 0.01


def _p_value(values: np.ndarray, test: str) -> float:
    values = values[np.isfinite(values)]
    if values.size < 2:
        return math.nan
    if test == "t":
        return stats.paired_t(values)["p"]
    if test == "wilcoxon":
        return stats.wilcoxon_signed_rank(values)["p"]
    return stats.sign_flip_test(values, n_resamples=2000)["p"]


def _p_values(values: np.ndarray, test: str) -> np.ndarray:
    """[draws] p of the one-sample test against 0 of each column of [prompts, draws]
    (NaN rows of a column left out); the t test vectorised, the others one by one."""
    if test != "t":
        return np.array([_p_value(values[:, d], test) for d in range(values.shape[1])])
    ok = np.isfinite(values)
    n = ok.sum(axis=0)
    x = np.where(ok, values, 0.0)
    mean = x.sum(axis=0) / np.maximum(n, 1)
    dev = np.where(ok, values - mean, 0.0)
    sd = np.sqrt((dev * dev).sum(axis=0) / np.maximum(n - 1, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (sd / np.sqrt(n))
    p = 2 * student_t.sf(np.abs(t), np.maximum(n - 1, 1))
    return np.where((n >= 2) & (sd > 0), p, np.nan)


def placebo_summary(res: StudyResults) -> pd.DataFrame:
    """Per condition: draws, median prompts per draw, rejections at α by the plan's
    primary test, the rejection rate with its Clopper–Pearson 95 % interval, the
    Binomial(draws, α) band (family level 0.05 over the conditions) and ``ok``."""
    pl = res.tables.get("placebo", pd.DataFrame())
    cols = [*CONDITION, "metric", "draws", "prompts", "rejections", "rate", "rate_low",
            "rate_high", "alpha", "band_low", "band_high", "reading", "ok"]
    if pl.empty:
        return pd.DataFrame(columns=cols)
    cells = res.kept_cells()[["cell_id", "prompt_id", *CONDITION]]
    pl = pl.merge(cells, on="cell_id", how="inner")
    test = res.plan["primary_test"]
    groups = list(pl.groupby(CONDITION, dropna=False))
    level = PLACEBO_FAMILY_LEVEL / max(len(groups), 1)
    rows = []
    for key, sub in groups:
        # One value per prompt and draw (several seeds of a prompt are averaged).
        wide = sub.pivot_table(index="prompt_id", columns="draw", values="estimate",
                               aggfunc="mean")
        pvals = _p_values(wide.to_numpy(float), test)
        tested = np.isfinite(pvals)
        draws = int(tested.sum())
        rejections = int((pvals[tested] < res.alpha).sum())
        row = dict(zip(CONDITION, key, strict=True))
        row.update(metric=f"M1 {sub['variant'].iloc[0]} on the top_only replays, random "
                          f"labels, {test} test over prompts",
                   draws=draws, prompts=int(np.median(wide.notna().sum(axis=0))) if draws else 0,
                   rejections=rejections, alpha=res.alpha)
        if draws:
            ci = binomtest(rejections, draws).proportion_ci(0.95, method="exact")
            lo = int(binom.ppf(level / 2, draws, res.alpha))
            hi = int(binom.isf(level / 2, draws, res.alpha))
            row.update(rate=rejections / draws, rate_low=ci.low, rate_high=ci.high,
                       band_low=lo, band_high=hi,
                       reading=("liberal" if rejections > hi else
                                "conservative" if rejections < lo else "as expected"),
                       ok=bool(rejections <= hi))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def positive_summary(res: StudyResults) -> pd.DataFrame:
    """One row: sampled runs, layer, injected bias, the mean shift of M2's coefficient in
    that layer (biased − unbiased replay), its largest per-head deviation, the tolerance,
    the mean shift of the primary metric, and ``ok``."""
    pc = res.tables.get("positive_control", pd.DataFrame())
    cols = ["runs", "layer", "delta", "m2_shift", "error", "max_head_error", "tolerance",
            "primary_metric", "primary_shift", "primary_shift_pct", "ok", "note"]
    if pc.empty:
        return pd.DataFrame(columns=cols)
    ran = pc[pc["cell_id"].astype(str) != ""]
    if ran.empty:
        return pd.DataFrame([{"runs": 0, "note": str(pc["note"].iloc[0])}], columns=cols)
    # A run whose injected layer leaves M2 unidentified (too few steps) says nothing.
    ran = ran[np.isfinite(ran["m2_shift"].astype(float))]
    if ran.empty:
        return pd.DataFrame([{"runs": 0, "note": "no sampled run identifies M2 in the "
                                                 "injected layer (runs too short)"}],
                            columns=cols)
    delta = float(ran["delta"].iloc[0])
    shift = float(ran["m2_shift"].mean())
    return pd.DataFrame([{
        "runs": len(ran), "layer": int(ran["layer"].iloc[0]), "delta": delta,
        "m2_shift": shift, "error": abs(shift - delta),
        "max_head_error": float(ran["m2_shift_max_error"].max()),
        "tolerance": POSITIVE_TOLERANCE, "primary_metric": ran["primary_metric"].iloc[0],
        "primary_shift": float(ran["primary_shift"].mean()),
        "primary_shift_pct": float(stats.pct_from_log(ran["primary_shift"].mean())),
        "ok": bool(abs(shift - delta) <= POSITIVE_TOLERANCE), "note": ""}], columns=cols)


def controls(res: StudyResults) -> HypothesisTables:
    """The placebo and the positive control of the study (module doc).

    Tables: ``placebo`` (:func:`placebo_summary`), ``positive`` (:func:`positive_summary`),
    ``positive_runs`` (per sampled run). Facts: ``failed`` (the controls that failed, by
    name), ``not_run`` (those the study could not run, with why)."""
    placebo = placebo_summary(res)
    positive = positive_summary(res)
    failed, not_run = [], []
    if placebo.empty or not placebo["draws"].fillna(0).gt(0).any():
        not_run.append("placebo: the study has no top_only replay to relabel")
    elif not placebo["ok"].fillna(True).astype(bool).all():
        failed.append("placebo")
    if positive.empty or not positive["runs"].fillna(0).gt(0).any():
        note = positive["note"].iloc[0] if len(positive) else "no run qualifies"
        not_run.append(f"positive control: {note or 'no run qualifies'}")
    elif not bool(positive["ok"].iloc[0]):
        failed.append("positive control")
    return HypothesisTables(
        "controls", {"placebo": placebo, "positive": positive,
                     "positive_runs": res.tables.get("positive_control", pd.DataFrame())},
        facts={"failed": failed, "not_run": not_run},
        metric="each row names its metric (column metric / primary_metric)",
        table_metrics={"positive": "M2 per head in the injected layer (biased − unbiased "
                                   "replay); primary_shift: the primary metric's M1 over "
                                   "every layer and head",
                       "positive_runs": "as the positive table, per sampled run"})


__all__ = ["PLACEBO_FAMILY_LEVEL", "controls", "placebo_summary", "positive_summary"]
