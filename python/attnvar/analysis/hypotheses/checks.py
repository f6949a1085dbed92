"""Beside H1–H4: what the study ran, how robust the effect is to every metric choice,
the per-head map, degenerate generations, and whether the effect can be predicted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from ...engine import default_model_path, load_run
from ...study.prompts import Prompt, suite
from ...study.store import RUNS
from .. import predictability as pred
from .. import prototype as proto
from .. import stats
from .results import (
    CONDITION,
    HypothesisTables,
    StudyResults,
    contrast,
    effects,
    metric_label,
    prompt_rows,
    summarize,
)

# What each specification estimates. Only those of the primary metric's estimand are
# alternatives to it; the others answer other questions and are shown, labelled, apart.
ESTIMANDS = {"M1": "attention contrast", "M1m": "attention contrast",
             "M2": "attention contrast", "M3": "attention contrast",
             "M1p": "position effect", "M4": "position effect", "M0": "prototype's metric"}
SPECIFICATIONS = [
    ("M1", "distance_matched"), ("M1", "plain"), ("M1m", "size_matched"), ("M1m", "raw"),
    ("M1p", "position_minus_log_k"), ("M2", "per_head"), ("M2", "pooled"),
    ("M3", "log_contrast"), ("M4", "position_mass"), ("M0", "corrected"), ("M0", "legacy"),
]


def predictability(res: StudyResults, first_steps: int = 3, n_splits: int = 5,
                   seed: int = 0, n_permutations: int = 200) -> HypothesisTables:
    """Can the per-prompt effect's sign and magnitude be predicted from the prompt and the
    first steps? Per mode, a grouped (by prompt) cross-validated model
    (:func:`attnvar.analysis.predictability.predict_effect`) on the features of
    :func:`attnvar.analysis.predictability.prompt_features` of each generated run.

    Tables: ``summary`` (per mode: cv_r2, sign_acc, baseline_acc, sign_gain, p_r2,
    p_sign, n, n_groups, …), ``features`` (per cell: effect and features),
    ``coefficients`` (per mode: standardised full-data coefficients, for reading).
    Facts: ``notes`` (per mode that could not be estimated: why).
    """
    eff = effects(res)
    prompts = {p["id"]: Prompt(**p) for p in res.study.get("prompts", [])}
    rows = []
    for r in eff.itertuples(index=False):
        run = load_run(res.path / RUNS / r.cell_id)
        feats = pred.prompt_features(run, first_steps=first_steps,
                                     prompt=prompts.get(r.prompt_id))
        rows.append({"cell_id": r.cell_id, "prompt_id": r.prompt_id, "mode": r.mode,
                     "threshold": r.threshold, "effect": r.effect, **feats})
    frame = pd.DataFrame(rows)
    skip = {"cell_id", "prompt_id", "mode", "effect"}
    features = [c for c in frame.columns if c not in skip]
    summaries, coefs, notes = [], [], []
    for mode, sub in frame.groupby("mode") if len(frame) else []:
        usable = [c for c in features if sub[c].notna().any() and sub[c].nunique() > 1]
        try:
            out = pred.predict_effect(sub, "effect", usable, groups="prompt_id",
                                      n_splits=min(n_splits, sub["prompt_id"].nunique()),
                                      seed=seed, n_permutations=n_permutations)
        except (ValueError, KeyError) as e:
            notes.append(f"{mode}: not estimable ({e})")
            continue
        summaries.append({"mode": mode, **out.summary})
        coefs.append(out.coefficients.assign(mode=mode))
    summary = pd.DataFrame(summaries) if summaries else pd.DataFrame(columns=["mode", "cv_r2"])
    return HypothesisTables("predictability", {
        "summary": summary, "features": frame,
        "coefficients": pd.concat(coefs, ignore_index=True) if coefs else pd.DataFrame()},
        facts={"notes": notes})


def robustness(res: StudyResults) -> HypothesisTables:
    """The specification curve: the mean effect per mode under every metric variant,
    with and without sink exclusion, replay and observational designs, with and without
    the degeneracy exclusions. Table ``specifications``: one row per specification and
    mode (mean_pct and CI; M0 variants are in % already), with its ``estimand``: only
    rows of the primary metric's estimand are alternatives to it."""
    rows = []
    designs = ["replay", "observational"] if res.design == "replay" else ["observational"]
    for metric, variant in SPECIFICATIONS:
        for sinks in ((True,) if (metric, variant) == ("M0", "legacy") else (True, False)):
            for design in designs:
                for excl in (True, False):
                    r = replace(res, apply_exclusions=excl)
                    eff = effects(r, metric, variant, sinks, design)
                    if eff.empty:
                        continue
                    scale = eff["scale"].iloc[0]
                    s = summarize(eff, ["mode"], r, scale=scale)
                    for x in s.to_dict("records"):
                        rows.append({"metric": metric, "variant": variant,
                                     "estimand": ESTIMANDS[metric],
                                     "sinks_excluded": sinks, "design": design,
                                     "exclusions": excl, "mode": x["mode"], "n": x["n"],
                                     "mean_pct": x["mean_pct"], "ci_pct_low": x["ci_pct_low"],
                                     "ci_pct_high": x["ci_pct_high"], "p": x["p"],
                                     "primary": (metric, variant, sinks, design, excl) == (
                                         res.metric, res.variant, res.sinks_excluded,
                                         res.design, res.apply_exclusions)})
    return HypothesisTables("robustness", {"specifications": pd.DataFrame(rows)},
                            metric="one row per metric, variant, sinks, design and "
                                   "exclusion choice (columns say which)")


def heads_metric(res: StudyResults) -> tuple[str, str]:
    """The metric and variant of the per-head map: the primary one where it has per-head
    rows (M1, M2 per head), else M1 distance-matched."""
    metric = res.metric if res.metric in ("M1", "M2") else "M1"
    variant = res.variant if res.metric in ("M1", "M2") else "distance_matched"
    if metric == "M2":
        variant = "per_head"
    return metric, variant


def heads(res: StudyResults) -> HypothesisTables:
    """Per layer × head: the primary effect (the per-head rows of the primary metric),
    tested over prompts, BH across all heads of a mode (the plan's heads correction).
    Table ``heads``: mode, layer, head, mean_pct, CI, p, p_adj, reject."""
    m = res.tables["metrics"]
    metric, variant = heads_metric(res)
    sel = (m["metric"] == metric) & (m["variant"] == variant) & (m["layer"] >= 0) \
        & (m["sinks_excluded"].astype(bool) == res.sinks_excluded)
    if metric == "M2":
        sel &= m["term"] == "parallel"
    ce = contrast(m[sel], ["cell_id", "layer", "head"], design=res.design,
                  encoding=res.contrast_encoding)
    ce = res.kept_cells().merge(ce, on="cell_id").dropna(subset=["effect"])
    parts = []
    for mode, sub in ce.groupby("mode"):
        # A head is tested over prompts: those with fewer than two have no test.
        sub = sub[sub.groupby(["layer", "head"])["prompt_id"].transform("nunique") >= 2]
        if sub.empty:
            continue
        s = stats.summarize_family(sub, effect="effect", by=["layer", "head"], unit="prompt_id",
                                   correction=res.plan["heads_correction"],
                                   alpha=float(res.plan["heads_q"]), n_boot=200, n_perm=200)
        s.insert(0, "mode", mode)
        parts.append(s)
    return HypothesisTables("heads", {
        "heads": pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()},
        metric=metric_label(res, metric, variant))


def degeneracy(res: StudyResults) -> HypothesisTables:
    """Degenerate generations under the preregistered rule. Tables ``rates`` (per mode
    and θ: flag rates and exclusions), ``excluded`` (the excluded runs with text). Facts:
    ``runs``, ``excluded`` (counts), ``rule`` (the preregistered rule in words)."""
    deg = res.tables["degeneracy"].merge(res.cells().drop(columns=["excluded"]), on="cell_id")
    flag_cols = [c for c in deg.columns if c.startswith("flag_")]
    rates = deg.groupby(["mode", "threshold"])[flag_cols + ["excluded"]].mean().reset_index()
    rates.insert(2, "runs", deg.groupby(["mode", "threshold"]).size().to_numpy())
    runs = res.tables["runs"].set_index("run_id")
    ex = deg[deg["excluded"]][["cell_id", "prompt_id", "mode", "threshold", *flag_cols]].copy()
    ex["text"] = [runs.loc[c, "bracketed"][-160:] if c in runs.index else "" for c in ex["cell_id"]]
    return HypothesisTables("degeneracy", {"rates": rates, "excluded": ex},
                            facts={"runs": len(deg), "excluded": int(deg["excluded"].sum()),
                                   "rule": res.prereg["exclusion_rule"]["rule"]})


def prototype(res: StudyResults) -> HypothesisTables:
    """The prototype's metric on this study, beside its published claims. Tables ``m0``
    (per condition: M0 legacy over the kept generated runs as the prototype reported it
    — mean ± population SD, median, range, paired t on the raw means — with the means of
    M0 corrected and of the primary effect on the same runs) and ``published`` (the
    prototype's figures, with the model and mechanism that produced them). Facts:
    ``model`` (this study's model file)."""
    m = res.tables["metrics"]
    legacy = prompt_rows(m, "M0", "legacy", res.sinks_excluded, source="generated")
    corrected = prompt_rows(m, "M0", "corrected", res.sinks_excluded, source="generated")
    per = res.kept_cells()[["cell_id", "prompt_id", *CONDITION]].merge(
        legacy[["cell_id", "estimate", "mean_parallel", "mean_nonparallel"]], on="cell_id")
    per = per.rename(columns={"estimate": "m0_legacy_pct"}).merge(
        corrected[["cell_id", "estimate"]].rename(columns={"estimate": "m0_corrected_pct"}),
        on="cell_id", how="left")
    per = per.merge(effects(res)[["cell_id", "effect_pct"]].rename(
        columns={"effect_pct": "primary_pct"}), on="cell_id", how="left")
    table = (proto.prototype_summary(per, mechanism=proto.OUR_MECHANISM, by=tuple(CONDITION))
             if len(per) else pd.DataFrame(columns=[*CONDITION, "prompts", "mean_pct"]))
    model = res.study.get("model_path") or default_model_path().name
    table["model"] = Path(model).name
    published = proto.PUBLISHED.assign(model=proto.PUBLISHED_MODEL,
                                       mechanism=proto.PUBLISHED_MECHANISM)
    return HypothesisTables("prototype", {"m0": table, "published": published},
                            facts={"model": Path(model).name},
                            metric="M0 legacy (the prototype's metric), generated runs alone; "
                                   "columns m0_corrected and primary on the same runs",
                            table_metrics={"published": "the prototype's published figures "
                                                        "(its model, its mechanism)"})


STATUSES = ("missing", "stopped before a measurable query", "excluded as degenerate",
            "no parallel key", "no non-parallel key", "no estimate", "analysed")


def cell_status(res: StudyResults) -> pd.DataFrame:
    """Per generated run: why it is, or is not, among the analysed units of the primary
    test — the first of: stopped before a measurable query (fewer than two steps),
    excluded as degenerate (the preregistered rule, when applied), no parallel key, no
    non-parallel key (every counted key of one kind), no estimate (no contrast, e.g. its
    replay is missing), analysed."""
    cells = res.cells()
    deg = res.tables["degeneracy"]
    analysable = (dict(zip(deg["cell_id"], deg["analysable"].astype(bool), strict=True))
                  if "analysable" in deg else {})
    rows = prompt_rows(res.tables["metrics"], res.metric, res.variant, res.sinks_excluded,
                       source="generated")
    pairs = rows.set_index("cell_id")[["n_pairs", "n_parallel_pairs"]] if len(rows) else \
        pd.DataFrame(columns=["n_pairs", "n_parallel_pairs"])
    estimated = set(effects(replace(res, apply_exclusions=False))["cell_id"])
    status = []
    for row in cells.itertuples(index=False):
        n, npar = (pairs.loc[row.cell_id] if row.cell_id in pairs.index else (0, 0))
        if not analysable.get(row.cell_id, False):
            status.append(STATUSES[1])
        elif row.excluded and res.apply_exclusions:
            status.append(STATUSES[2])
        elif npar == 0:
            status.append(STATUSES[3])
        elif n - npar == 0:
            status.append(STATUSES[4])
        elif row.cell_id not in estimated:
            status.append(STATUSES[5])
        else:
            status.append(STATUSES[6])
    return cells.assign(status=status)


def accounting(res: StudyResults) -> pd.DataFrame:
    """Per condition: runs planned by the study's grid, and where each went (columns of
    :data:`STATUSES`); the columns add up to ``planned``."""
    s = res.study
    per_condition = len(s.get("prompts", [])) * (len(s.get("seeds") or [0])
                                                 if s.get("sample") else 1)
    status = cell_status(res)
    rows = []
    conditions = [(t, m, p) for t in s.get("thresholds", []) for m in s.get("modes", [])
                  for p in s.get("policies", [])]
    for t, mode, pol in conditions:
        g = status[(status["threshold"] == t) & (status["mode"] == mode)
                   & (status["policy"] == pol)]
        counts = g["status"].value_counts()
        row = {"mode": mode, "threshold": t, "policy": pol, "planned": per_condition,
               "missing": per_condition - len(g)}
        row.update({name: int(counts.get(name, 0)) for name in STATUSES[1:]})
        rows.append(row)
    return pd.DataFrame(rows, columns=[*CONDITION, "planned", *STATUSES])


def dataset(res: StudyResults) -> HypothesisTables:
    """What the study ran: per condition, prompts, runs, steps, parallel steps, widths,
    exclusions (table ``dataset``), and every planned run accounted for (table
    ``accounting``: planned, missing, stopped before a measurable query, excluded as
    degenerate, no parallel key, no non-parallel key, no estimate, analysed — adding up
    to planned). Facts: ``prompts``, ``runs`` (generated), ``replays`` (encodings),
    ``max_steps``, ``smoke_test`` (the study's prompts are exactly the core-small suite:
    a check that the pipeline works, too small to answer)."""
    c = res.cells()
    table = (c.groupby(CONDITION)
             .agg(prompts=("prompt_id", "nunique"), runs=("cell_id", "count"),
                  steps=("steps", "mean"), parallel_steps=("parallel_steps", "mean"),
                  proportion_parallel=("proportion_parallel", "mean"),
                  mean_width=("mean_width", "mean"), excluded=("excluded", "sum"))
             .reset_index())
    s = res.study
    return HypothesisTables("dataset", {"dataset": table, "accounting": accounting(res)},
                            facts={"prompts": int(c["prompt_id"].nunique()), "runs": len(c),
                                   "replays": list(s.get("replays", [])),
                                   "max_steps": s.get("max_steps"),
                                   "smoke_test": is_smoke_test(s)})


def is_smoke_test(study: dict) -> bool:
    """True when a study's prompts are exactly the core-small suite (the smoke test)."""
    ids = [p["id"] for p in study.get("prompts", [])]
    return ids == [p.id for p in suite("core-small")]


__all__ = ["ESTIMANDS", "SPECIFICATIONS", "STATUSES", "accounting", "cell_status", "dataset",
           "degeneracy", "heads", "heads_metric", "is_smoke_test", "predictability",
           "prototype", "robustness"]
