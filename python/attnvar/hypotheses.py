"""Hypothesis tests H1–H4 and predictability on a study's results (METHODS.md).

Every function takes a :class:`StudyResults` (``load(results_dir)``) and returns a
:class:`Finding`: tables (pandas) and figures (matplotlib), the test that enters the
H1–H4 family, and a one-paragraph answer built from those numbers. All numbers come from
the analysis tables that :func:`attnvar.study_analysis.analyze_study` wrote; the report
(:mod:`attnvar.report`) prints these same objects.

The unit of analysis is the prompt: one effect per prompt and condition (mode, θ,
policy). The **primary design** is the replay contrast: the within-query contrast of the
generated run (parallel sets at shared positions) minus the same contrast on the replay of
the same tree under the preregistered ``contrast_encoding`` (``serial`` by default: every
member at its own position), so the text is held fixed and only the encoding differs.
Effects are on the log scale δ (negative = parallel tokens receive less attention) and
in % as reductions, 100·(1 − e^δ) (positive = less), as everywhere in attnvar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import stats

CONDITION = ["mode", "threshold", "policy"]
CELL_COLUMNS = ["cell_id", "prompt_id", "category", "structure", "pair", "mode", "threshold",
                "policy", "seed", "steps", "parallel_steps", "mean_width", "mean_entropy"]


@dataclass
class Finding:
    """The result of one hypothesis function.

    Attributes
    ----------
    name : "primary", "H1", … , "predictability", "robustness", "heads", "degeneracy"
    title : what is tested, in words
    tables : named DataFrames (documented per function)
    figures : named matplotlib Figures
    tests : rows entering the H1–H4 family (hypothesis, mode, test, estimate, p, …)
    answer : the answer in words, generated from the tables
    """

    name: str
    title: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    answer: str = ""


# ---- loading ----------------------------------------------------------------------------------
@dataclass
class StudyResults:
    """A study's tables, its plan and the analysis settings derived from the plan.

    ``metric``/``variant``/``sinks_excluded``/``contrast_encoding`` default to the
    preregistered plan; overriding them is allowed and reported as a deviation.
    """

    path: Path
    study: dict
    prereg: dict
    tables: dict[str, pd.DataFrame]
    metric: str
    variant: str
    sinks_excluded: bool
    contrast_encoding: str
    apply_exclusions: bool = True

    @property
    def plan(self) -> dict:
        return self.prereg["plan"]

    @property
    def alpha(self) -> float:
        return float(self.plan["alpha"])

    def deviations(self) -> list[str]:
        """Analysis settings that differ from the plan."""
        out = []
        for name in ("metric", "variant", "sinks_excluded", "contrast_encoding"):
            if getattr(self, name) != self.plan[name]:
                out.append(f"{name}: planned {self.plan[name]!r}, analysed "
                           f"{getattr(self, name)!r}")
        if not self.apply_exclusions:
            out.append("exclusion rule not applied (planned: applied)")
        return out

    @property
    def design(self) -> str:
        """"replay" when the contrast replay exists in the study, else "observational"."""
        enc = set(self.tables["metrics"].get("source", pd.Series(dtype=str)).unique())
        return "replay" if self.contrast_encoding in enc else "observational"

    def cells(self) -> pd.DataFrame:
        """One row per generated run: grid values, run summary, degeneracy decision."""
        runs = self.tables["runs"]
        gen = runs[runs["kind"] == "generate"].rename(columns={"run_id": "cell_id"})
        deg = self.tables["degeneracy"]
        cols = [c for c in CELL_COLUMNS if c in gen]
        out = gen[cols].merge(deg[["cell_id", "excluded"]], on="cell_id", how="left")
        out["excluded"] = out["excluded"].fillna(False).astype(bool)
        out["proportion_parallel"] = out["parallel_steps"] / out["steps"].where(out["steps"] > 0)
        return out

    def kept_cells(self) -> pd.DataFrame:
        c = self.cells()
        return c[~c["excluded"]] if self.apply_exclusions else c


def load(results: str | Path, metric: str | None = None, variant: str | None = None,
         sinks_excluded: bool | None = None, contrast_encoding: str | None = None,
         apply_exclusions: bool = True) -> StudyResults:
    """Load a study's results directory (tables written by the study and its analysis).

    Settings left None come from the study's preregistration.
    """
    from . import preregistration
    from .study_analysis import load_tables, read_study

    results = Path(results)
    study = read_study(results)
    rec = preregistration.load(results)
    plan = rec["plan"]
    return StudyResults(
        path=results, study=study, prereg=rec, tables=load_tables(results),
        metric=metric or plan["metric"], variant=variant or plan["variant"],
        sinks_excluded=plan["sinks_excluded"] if sinks_excluded is None else sinks_excluded,
        contrast_encoding=contrast_encoding or plan["contrast_encoding"],
        apply_exclusions=apply_exclusions)


# ---- effects ----------------------------------------------------------------------------------
def _se_diff(a: pd.Series, b: pd.Series) -> pd.Series:
    return np.sqrt(a.astype(float) ** 2 + b.astype(float) ** 2)


def contrast(frame: pd.DataFrame, keys: list[str], value: str = "estimate",
             se: str | None = None, design: str = "replay",
             encoding: str = "serial") -> pd.DataFrame:
    """Per ``keys``: the generated run's ``value`` (``generated``), the replay's
    (``replayed``) and the effect: generated − replayed (replay design) or generated
    (observational). With ``se``: ``effect_se`` (independent errors assumed, an upper
    bound since both runs share the text)."""
    cols = keys + [value] + ([se] if se else [])
    g = frame.loc[frame["source"] == "generated", cols].rename(
        columns={value: "generated", **({se: "se_generated"} if se else {})})
    if design == "observational":
        out = g.copy()
        out["replayed"] = np.nan
        out["effect"] = out["generated"]
        if se:
            out["effect_se"] = out["se_generated"]
        return out
    r = frame.loc[frame["source"] == encoding, cols].rename(
        columns={value: "replayed", **({se: "se_replayed"} if se else {})})
    out = g.merge(r, on=keys, how="inner")
    out["effect"] = out["generated"] - out["replayed"]
    if se:
        out["effect_se"] = _se_diff(out["se_generated"], out["se_replayed"])
    return out


def effects(res: StudyResults, metric: str | None = None, variant: str | None = None,
            sinks_excluded: bool | None = None, design: str | None = None,
            term: str | None = None) -> pd.DataFrame:
    """Per-cell prompt-level effects of one metric variant, joined to the cell table
    (excluded cells dropped when the exclusion rule applies).

    Columns: the cell columns, ``generated``, ``replayed``, ``effect`` (log scale, or
    % points for M0), ``effect_se``, ``effect_pct`` (reduction in %), ``scale``.
    """
    metric = metric or res.metric
    variant = variant or res.variant
    sinks = res.sinks_excluded if sinks_excluded is None else sinks_excluded
    design = design or res.design
    m = res.tables["metrics"]
    sel = (m["metric"] == metric) & (m["variant"] == variant) & (m["layer"] < 0) & (m["head"] < 0)
    if metric != "M0" or variant != "legacy":
        sel &= m["sinks_excluded"].astype(bool) == sinks
    if term is not None:
        sel &= m["term"] == term
    elif metric == "M2":
        sel &= m["term"] == "parallel"
    rows = m[sel]
    out = contrast(rows, ["cell_id"], se="se", design=design, encoding=res.contrast_encoding)
    out = res.kept_cells().merge(out, on="cell_id", how="inner")
    scale = rows["scale"].iloc[0] if len(rows) else "log"
    out["scale"] = scale
    out["effect_pct"] = out["effect"] if scale == "percent" else stats.pct_from_log(out["effect"])
    return out.dropna(subset=["effect"]).reset_index(drop=True)


def _summary(frame: pd.DataFrame, by: list[str], res: StudyResults, unit: str = "prompt_id",
             correction: str = "bh", effect: str = "effect", scale: str = "log") -> pd.DataFrame:
    by = [b for b in by if b in frame and frame[b].notna().any()]
    frame = frame[np.isfinite(frame[effect].astype(float))]
    ok = frame
    if by:  # groups with fewer than 2 units have no test
        ok = frame[frame.groupby(by, dropna=False)[unit].transform("nunique") >= 2]
    elif frame[unit].nunique() < 2:
        ok = frame.iloc[:0]
    if ok.empty:
        return pd.DataFrame(columns=by + ["n", "mean", "ci_low", "ci_high", "p", "p_adj"])
    out = stats.summarize_family(ok, effect=effect, by=by or None, unit=unit,
                                 correction=correction, alpha=res.alpha, scale=scale,
                                 correct_on=res.plan["primary_test"],
                                 margin_pct=float(res.plan["tost_margin_pct"]))
    if scale == "percent":
        out["mean_pct"], out["ci_pct_low"], out["ci_pct_high"] = (
            out["mean"], out["ci_low"], out["ci_high"])
    return out


def _p_column(res: StudyResults) -> str:
    """The summary column holding the plan's primary test's p value."""
    return stats.P_COLUMNS[res.plan["primary_test"]]


def _fmt_pct(mean: float, lo: float, hi: float) -> str:
    return f"{mean:+.1f} % (95 % CI {lo:+.1f} to {hi:+.1f})"


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _condition_label(row: pd.Series | dict) -> str:
    parts = [str(row.get("mode", ""))]
    if "threshold" in row and pd.notna(row["threshold"]):
        parts.append(f"θ={float(row['threshold']):g}")
    if "policy" in row and pd.notna(row["policy"]):
        parts.append(str(row["policy"]))
    return " ".join(parts)


def _test_row(hypothesis: str, mode: str, test: str, estimate: float, low: float, high: float,
              p: float, n: int, unit: str = "%") -> dict:
    return {"hypothesis": hypothesis, "mode": mode, "test": test, "estimate": estimate,
            "ci_low": low, "ci_high": high, "unit": unit, "p": p, "n": n}


# ---- primary effect ---------------------------------------------------------------------------
def primary(res: StudyResults) -> Finding:
    """The preregistered effect per condition: does a parallel token receive less
    attention because it shares its position?

    Tables: ``effects`` (per cell: generated, replayed, effect, effect_se, effect_pct,
    effect_pct_low/high), ``summary`` (per condition: stats.summarize_family columns,
    Holm across conditions, and ``mde_pct``: the smallest reduction, in %, detectable
    with 80 % power at this n and the observed SD), ``meta`` (per condition:
    random-effects meta-analysis, τ², I², prediction interval, in log units and %).
    """
    from .plots import forest_plot

    eff = effects(res)
    eff["effect_pct_low"] = stats.pct_from_log(eff["effect"] + 1.96 * eff["effect_se"])
    eff["effect_pct_high"] = stats.pct_from_log(eff["effect"] - 1.96 * eff["effect_se"])
    summary = _summary(eff, CONDITION, res, correction="holm")
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
            row.update({k: m[k] for k in ("k", "mu", "ci_low", "ci_high", "p", "tau2", "I2",
                                          "pi_low", "pi_high")})
            row.update(mu_pct=stats.pct_from_log(m["mu"]),
                       pi_pct_low=stats.pct_from_log(m["pi_high"]),
                       pi_pct_high=stats.pct_from_log(m["pi_low"]))
        metas.append(row)
    meta = pd.DataFrame(metas) if metas else pd.DataFrame(columns=CONDITION + ["metric"])
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
        label = _condition_label(dict(zip(CONDITION, key, strict=True)))
        figures[f"forest {label}"] = forest_plot(
            sub.sort_values("effect_pct"), "effect_pct", "effect_pct_low", "effect_pct_high",
            "prompt_id", pooled=pooled, xlabel="reduction in % (positive = less attention)",
            title=f"{res.metric} {res.variant}, {res.design} design — {label}")
    dist = distance_table(res)
    if len(dist):
        from .plots import distance_plot

        figures["distance profile"] = distance_plot(dist)
    tests = []
    pcol = _p_column(res)
    lines = []
    for s in summary.itertuples(index=False):
        d = s._asdict()
        equivalence = (f"equivalent to 0 within ±{res.plan['tost_margin_pct']} %"
                       if d["equivalent"] else "not shown equivalent to 0")
        lines.append(f"{_condition_label(d)}: "
                     f"{_fmt_pct(d['mean_pct'], d['ci_pct_low'], d['ci_pct_high'])}"
                     f" over {d['n']} prompts, p = {_fmt_p(d[pcol])} (Holm {_fmt_p(d['p_adj'])}),"
                     f" {equivalence}")
        tests.append(_test_row("primary", d["mode"], res.plan["primary_test"], d["mean_pct"],
                               d["ci_pct_low"], d["ci_pct_high"], d[pcol], d["n"]))
    design = ("generated run minus its " + res.contrast_encoding + " replay"
              if res.design == "replay" else "within the generated run (no contrast replay)")
    answer = (f"Effect = {res.metric} ({res.variant}), {design}; positive % = parallel tokens "
              "receive less attention. " + ("; ".join(lines) if lines else
                                            "Too few prompts for a test."))
    return Finding("primary", "Primary effect: parallel tokens at a shared position",
                   {"effects": eff, "summary": summary, "meta": meta, "distance": dist},
                   figures,
                   pd.DataFrame(tests), answer)


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


# ---- H1 temporal ------------------------------------------------------------------------------
def _step_effects(res: StudyResults) -> pd.DataFrame:
    st = res.tables["steps"]
    out = contrast(st, ["cell_id", "key_phase", "query_step", "query_phase"],
                   design=res.design, encoding=res.contrast_encoding)
    return res.kept_cells().merge(out, on="cell_id", how="inner")


def h1_temporal(res: StudyResults) -> Finding:
    """H1: does the effect change over the generation?

    Tables: ``by_query_phase`` and ``by_key_phase`` (summaries per mode and tercile),
    ``slopes`` (per cell: OLS slope of the per-step effect on the query step),
    ``slope_summary`` (per mode: test of the mean slope; this is the H1 test),
    ``mixed`` (per mode: MixedLM effect ~ query_step with a prompt random intercept),
    ``reversals`` (per cell: early and late effects with 95 % CIs and whether they
    exclude 0 with opposite signs).
    """
    from .plots import profile_plot

    se = _step_effects(res)
    allk = se[se["key_phase"] == "all"]
    by_q = _summary(allk, ["mode", "query_phase"], res)
    by_k = _summary(se[se["key_phase"] != "all"], ["mode", "key_phase"], res)
    slopes = []
    for (cell, prompt, mode), sub in allk.groupby(["cell_id", "prompt_id", "mode"]):
        if sub["query_step"].nunique() >= 3:
            b = np.polyfit(sub["query_step"].to_numpy(float), sub["effect"].to_numpy(float), 1)[0]
            slopes.append({"cell_id": cell, "prompt_id": prompt, "mode": mode, "slope": b})
    slopes = pd.DataFrame(slopes, columns=["cell_id", "prompt_id", "mode", "slope"])
    slope_summary = _summary(slopes, ["mode"], res, effect="slope", correction="holm")
    mixed = []
    for mode, sub in allk.groupby("mode"):
        if sub["prompt_id"].nunique() >= 3:
            try:
                mm = stats.mixed_model(sub, "effect ~ query_step", groups="prompt_id")
            except (ValueError, np.linalg.LinAlgError) as e:
                mixed.append({"mode": mode, "note": f"MixedLM failed: {e}"})
                continue
            r = mm[mm["term"] == "query_step"].iloc[0].to_dict()
            mixed.append({"mode": mode, **r, "converged": mm.attrs["converged"],
                          "n_prompts": mm.attrs["n_groups"], "n_obs": mm.attrs["n_obs"]})
    mixed = (pd.DataFrame(mixed) if mixed
             else pd.DataFrame(columns=["mode", "term", "estimate", "p"]))
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
    figures = {"step profile": profile_plot(
        prof, "query_step", "mean_pct", "low_pct", "high_pct", group="mode",
        xlabel="query step", ylabel="reduction in % (positive = less)",
        title="H1: effect by query step (mean over prompts, 95 % CI)")}
    tests, lines = [], []
    for s in slope_summary.to_dict("records"):
        tests.append(_test_row("H1", s["mode"], "slope over steps (per-prompt OLS, t)", s["mean"],
                               s["ci_low"], s["ci_high"], s[_p_column(res)], s["n"],
                               unit="log units per step"))
        lines.append(f"{s['mode']}: mean slope {s['mean']:+.4f} log units per step "
                     f"(95 % CI {s['ci_low']:+.4f} to {s['ci_high']:+.4f}), "
                     f"p = {_fmt_p(s[_p_column(res)])}")
    n_rev = int(rev["reversal"].sum()) if len(rev) else 0
    answer = ("The effect's trend over query steps — " + ("; ".join(lines) or "too few steps")
              + f". {n_rev} of {len(rev)} runs reverse sign between the early and late "
              "thirds with both 95 % CIs excluding 0.")
    return Finding("H1", "H1 temporal: does the effect change over the generation?",
                   {"by_query_phase": by_q, "by_key_phase": by_k, "slopes": slopes,
                    "slope_summary": slope_summary, "mixed": mixed, "reversals": rev,
                    "profile": prof}, figures, pd.DataFrame(tests), answer)


# ---- H2 prompt structure ----------------------------------------------------------------------
def h2_structure(res: StudyResults) -> Finding:
    """H2: does the prompt's structure matter? Matched pairs (the incomplete and complete
    versions of the same content) with a paired test; categories as secondary.

    Tables: ``pairs`` (per pair and condition: incomplete, complete, difference),
    ``paired`` (per mode: summary of incomplete − complete over pairs; the H2 test),
    ``categories`` (per mode and category: summaries, BH), ``kruskal`` (per mode:
    Kruskal–Wallis across categories).
    """
    from scipy.stats import kruskal

    from .plots import paired_plot

    eff = effects(res)
    paired_rows = []
    with_pair = eff[eff["pair"].notna() & eff["structure"].isin(["incomplete", "complete"])]
    for key, sub in with_pair.groupby(["pair"] + CONDITION):
        s = sub.groupby("structure")["effect"].mean()
        if {"incomplete", "complete"} <= set(s.index):
            paired_rows.append({**dict(zip(["pair"] + CONDITION, key, strict=True)),
                                "incomplete": s["incomplete"], "complete": s["complete"],
                                "difference": s["incomplete"] - s["complete"]})
    pairs = pd.DataFrame(paired_rows, columns=["pair", *CONDITION, "incomplete", "complete",
                                               "difference"])
    paired = _summary(pairs, ["mode"], res, unit="pair", effect="difference", correction="holm")
    cats = _summary(eff, ["mode", "category"], res)
    kw = []
    for mode, sub in eff.groupby("mode"):
        groups = [g.groupby("prompt_id")["effect"].mean().to_numpy()
                  for _, g in sub.groupby("category")]
        groups = [g for g in groups if len(g) >= 2]
        if len(groups) >= 2:
            h, p = kruskal(*groups)
            kw.append({"mode": mode, "H": float(h), "p": float(p), "categories": len(groups)})
    kw = pd.DataFrame(kw, columns=["mode", "H", "p", "categories"])
    figures = {}
    if len(pairs):
        figures["matched pairs"] = paired_plot(
            pairs, "incomplete", "complete", group="mode",
            ylabel=f"effect ({res.metric}, log scale; negative = less)",
            title="H2: the same content, incomplete vs complete")
    tests, lines = [], []
    for s in paired.to_dict("records"):
        tests.append(_test_row("H2", s["mode"], "incomplete − complete over matched pairs",
                               s["mean_pct"], s["ci_pct_low"], s["ci_pct_high"],
                               s[_p_column(res)], s["n"]))
        lines.append(f"{s['mode']}: incomplete − complete = "
                     f"{_fmt_pct(s['mean_pct'], s['ci_pct_low'], s['ci_pct_high'])} "
                     f"over {s['n']} pairs, p = {_fmt_p(s[_p_column(res)])}")
    answer = ("Matched pairs — " + ("; ".join(lines) if lines else
                                    "the study has fewer than 2 complete matched pairs")
              + ". (A difference in % here is 100·(1 − e^Δ) of the difference of effects.)")
    return Finding("H2", "H2 prompt structure: incomplete vs complete versions of one content",
                   {"pairs": pairs, "paired": paired, "categories": cats, "kruskal": kw},
                   figures, pd.DataFrame(tests), answer)


# ---- H3 token semantics -----------------------------------------------------------------------
def h3_semantics(res: StudyResults) -> Finding:
    """H3: does the effect depend on what the parallel token is?

    Tables: ``classes`` (per mode and token class: the contrast within the class,
    summaries with BH), ``closed_vs_open`` (per mode: closed-class minus open-class
    word-initial pieces per prompt; the H3 test), ``terms`` (M2 covariate coefficients of
    the generated runs, summarised over prompts: how token properties predict attention
    regardless of parallel status).
    """
    from .plots import forest_plot

    cl = res.tables["classes"]
    ce = contrast(cl, ["cell_id", "class"], design=res.design, encoding=res.contrast_encoding)
    ce = res.kept_cells().merge(ce, on="cell_id", how="inner").dropna(subset=["effect"])
    classes = _summary(ce, ["mode", "class"], res)
    wide = ce.pivot_table(index=["cell_id", "prompt_id", "mode"], columns="class",
                          values="effect").reset_index()
    if {"word:closed_class", "word:open_class"} <= set(wide.columns):
        wide["closed_minus_open"] = wide["word:closed_class"] - wide["word:open_class"]
        cvo = _summary(wide.dropna(subset=["closed_minus_open"]), ["mode"], res,
                       effect="closed_minus_open", correction="holm")
    else:
        cvo = pd.DataFrame()
    terms = res.tables["terms"]
    kept = set(res.kept_cells()["cell_id"])
    t = terms[(terms["variant"] == "pooled") & terms["cell_id"].isin(kept)
              & ~terms["term"].str.startswith("spline")]
    t = t.merge(res.cells()[["cell_id", "prompt_id", "mode"]], on="cell_id")
    term_summary = _summary(t.rename(columns={"estimate": "coef"}), ["mode", "term"], res,
                            effect="coef")
    figures = {}
    for mode, sub in classes.groupby("mode"):
        figures[f"token classes {mode}"] = forest_plot(
            sub, "mean_pct", "ci_pct_low", "ci_pct_high", "class",
            xlabel="reduction in % within the class (positive = less)",
            title=f"H3: effect by token class — {mode}")
    tests, lines = [], []
    for s in cvo.to_dict("records"):
        tests.append(_test_row("H3", s["mode"], "closed-class − open-class words", s["mean_pct"],
                               s["ci_pct_low"], s["ci_pct_high"], s[_p_column(res)], s["n"]))
        lines.append(f"{s['mode']}: closed − open class = "
                     f"{_fmt_pct(s['mean_pct'], s['ci_pct_low'], s['ci_pct_high'])}, "
                     f"p = {_fmt_p(s[_p_column(res)])} (n = {s['n']})")
    sig = classes[classes.get("reject", pd.Series(False, index=classes.index)).astype(bool)] \
        if len(classes) else classes
    answer = ("Function vs content words — " + ("; ".join(lines) if lines else
                                                 "too few prompts with both classes")
              + f". {len(sig)} of {len(classes)} mode × class effects differ from 0 after BH.")
    return Finding("H3", "H3 token semantics: which parallel tokens lose (or gain) attention?",
                   {"classes": classes, "closed_vs_open": cvo, "terms": term_summary,
                    "class_effects": ce}, figures, pd.DataFrame(tests), answer)


# ---- H4 context / proportion ------------------------------------------------------------------
def _ols(x: np.ndarray, y: np.ndarray) -> dict:
    import statsmodels.api as sm

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0:
        return {"slope": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan,
                "n": int(ok.sum())}
    fit = sm.OLS(y[ok], sm.add_constant(x[ok])).fit()
    lo, hi = fit.conf_int()[1]
    return {"slope": float(fit.params[1]), "ci_low": float(lo), "ci_high": float(hi),
            "p": float(fit.pvalues[1]), "n": int(ok.sum())}


def h4_context(res: StudyResults) -> Finding:
    """H4: does the effect depend on how much of the context is parallel?

    Tables: ``association`` (per mode and covariate — proportion of parallel steps,
    number of parallel steps, mean set width: OLS slope across prompts of the effect on
    the covariate), ``threshold_dose`` (per mode: per-prompt slope of the effect over θ
    when the study varies θ, summarised; the H4 test when present), ``steps_dose`` (per
    mode and max_steps T: the per-step contrast averaged over steps ≤ T, i.e. what runs of
    T steps give under deterministic selection).
    """
    from .plots import dose_plot

    eff = effects(res)
    assoc = []
    for mode, sub in eff.groupby("mode"):
        per = sub.groupby("prompt_id")[["effect", "proportion_parallel", "parallel_steps",
                                        "mean_width"]].mean()
        for cov in ("proportion_parallel", "parallel_steps", "mean_width"):
            assoc.append({"mode": mode, "covariate": cov,
                          **_ols(per[cov].to_numpy(float), per["effect"].to_numpy(float))})
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
    threshold_dose = _summary(dose, ["mode"], res, effect="slope", correction="holm")
    by_theta = _summary(eff, ["mode", "threshold"], res) if len(thresholds) >= 1 else pd.DataFrame()
    st = _step_effects(res)
    st = st[st["key_phase"] == "all"].sort_values("query_step")
    max_t = int(st["query_step"].max()) if len(st) else 0
    grid = sorted({t for t in (2, 5, 10, 15, 20, 30, 40, 60, max_t) if 1 <= t <= max_t})
    sd_rows = []
    for T in grid:
        cut = st[st["query_step"] < T].groupby(["cell_id", "prompt_id", "mode"])["effect"] \
            .mean().reset_index()
        cut["max_steps"] = T
        sd_rows.append(cut)
    steps_dose = (_summary(pd.concat(sd_rows), ["mode", "max_steps"], res)
                  if sd_rows else pd.DataFrame())
    figures = {}
    if len(by_theta) and len(thresholds) >= 2:
        figures["dose θ"] = dose_plot(by_theta, "threshold", group="mode", xlabel="θ",
                                      title="H4: effect by selection threshold θ")
    if len(steps_dose):
        figures["dose max_steps"] = dose_plot(steps_dose, "max_steps", group="mode",
                                              xlabel="max_steps (steps ≤ T)",
                                              title="H4: effect by generation length")
    tests, lines = [], []
    if len(threshold_dose):
        for s in threshold_dose.to_dict("records"):
            tests.append(_test_row("H4", s["mode"], "slope of the effect over θ (per prompt, t)",
                                   s["mean"], s["ci_low"], s["ci_high"], s[_p_column(res)],
                                   s["n"], unit="log units per unit θ"))
            lines.append(f"{s['mode']}: slope over θ {s['mean']:+.3f} log units per unit θ, "
                         f"p = {_fmt_p(s[_p_column(res)])} (n = {s['n']})")
    else:
        for s in assoc[assoc["covariate"] == "proportion_parallel"].to_dict("records"):
            tests.append(_test_row("H4", s["mode"], "OLS slope on the proportion of parallel steps",
                                   s["slope"], s["ci_low"], s["ci_high"], s["p"], s["n"],
                                   unit="log units per unit proportion"))
            lines.append(f"{s['mode']}: slope on the parallel proportion {s['slope']:+.3f}, "
                         f"p = {_fmt_p(s['p'])} (n = {s['n']})")
    answer = "Dose–response — " + ("; ".join(lines) if lines else "not estimable") + "."
    return Finding("H4", "H4 context and proportion: more parallel context, larger effect?",
                   {"association": assoc, "threshold_dose": threshold_dose,
                    "by_threshold": by_theta, "steps_dose": steps_dose}, figures,
                   pd.DataFrame(tests), answer)


# ---- predictability ---------------------------------------------------------------------------
def predictability(res: StudyResults, first_steps: int = 3, n_splits: int = 5,
                   seed: int = 0, n_permutations: int = 200) -> Finding:
    """Can the per-prompt effect's sign and magnitude be predicted from the prompt and the
    first steps? Per mode, a grouped (by prompt) cross-validated model
    (:func:`attnvar.predictability.predict_effect`) on the features of
    :func:`attnvar.predictability.prompt_features` of each generated run.

    Tables: ``summary`` (per mode: cv_r2, sign_acc, baseline_acc, sign_gain, p_r2,
    p_sign, n, n_groups, …), ``features`` (per cell: effect and features),
    ``coefficients`` (per mode: standardised full-data coefficients, for reading).
    """
    from . import predictability as pred
    from .prompts import Prompt
    from .run_store import load_run

    eff = effects(res)
    prompts = {p["id"]: Prompt(**p) for p in res.study.get("prompts", [])}
    rows = []
    for r in eff.itertuples(index=False):
        run = load_run(res.path / "runs" / r.cell_id)
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
    lines = [f"{s['mode']}: CV R² = {s['cv_r2']:+.2f} (permutation p = {_fmt_p(s['p_r2'])}), "
             f"sign accuracy {s['sign_acc']:.2f} vs {s['baseline_acc']:.2f} for the majority "
             f"sign (p = {_fmt_p(s['p_sign'])}), {s['n_groups']} prompts"
             for s in summaries] + notes
    answer = ("; ".join(lines) + ". CV R² ≤ 0 means the features predict the magnitude no "
              "better than the mean of the other prompts.") if lines else "Not estimable."
    return Finding("predictability", "Predictability: can the direction and size be predicted?",
                   {"summary": summary, "features": frame,
                    "coefficients": pd.concat(coefs, ignore_index=True) if coefs else
                    pd.DataFrame()}, {}, pd.DataFrame(), answer)


# ---- robustness, heads, degeneracy, dataset ---------------------------------------------------
SPECIFICATIONS = [
    ("M1", "distance_matched"), ("M1", "plain"), ("M1m", "size_matched"), ("M1m", "raw"),
    ("M1p", "position_minus_log_k"), ("M2", "per_head"), ("M2", "pooled"),
    ("M3", "log_contrast"), ("M4", "position_mass"), ("M0", "corrected"), ("M0", "legacy"),
]


def robustness(res: StudyResults) -> Finding:
    """The specification curve: the mean effect per mode under every metric variant,
    with and without sink exclusion, replay and observational designs, with and without
    the degeneracy exclusions. Table ``specifications``: one row per specification and
    mode (mean_pct and CI; M0 variants are in % already)."""
    from dataclasses import replace

    from .plots import spec_curve

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
                    s = _summary(eff, ["mode"], r, scale=scale)
                    for x in s.to_dict("records"):
                        rows.append({"metric": metric, "variant": variant,
                                     "sinks_excluded": sinks, "design": design,
                                     "exclusions": excl, "mode": x["mode"], "n": x["n"],
                                     "mean_pct": x["mean_pct"], "ci_pct_low": x["ci_pct_low"],
                                     "ci_pct_high": x["ci_pct_high"], "p": x["p"],
                                     "primary": (metric, variant, sinks, design, excl) == (
                                         res.metric, res.variant, res.sinks_excluded,
                                         res.design, res.apply_exclusions)})
    spec = pd.DataFrame(rows)
    figures = {"specification curve": spec_curve(spec)} if len(spec) else {}
    if len(spec):
        same_sign = {m: (np.sign(g["mean_pct"]).value_counts().max(), len(g))
                     for m, g in spec[spec["metric"] != "M0"].groupby("mode")}
        answer = "; ".join(f"{m}: {k} of {n} specifications (M0 aside) share the majority sign"
                           for m, (k, n) in same_sign.items()) + \
            ". M0 rows show the prototype's metric for comparison."
    else:
        answer = "No specification could be estimated."
    return Finding("robustness", "Robustness: the effect under every metric choice",
                   {"specifications": spec}, figures, pd.DataFrame(), answer)


def heads(res: StudyResults) -> Finding:
    """Per layer × head: the primary effect (the per-head rows of the primary metric),
    tested over prompts, BH across all heads of a mode (the plan's heads correction).
    Table ``heads``: mode, layer, head, mean_pct, CI, p, p_adj, reject."""
    from .plots import head_heatmap

    m = res.tables["metrics"]
    metric = res.metric if res.metric in ("M1", "M2") else "M1"
    variant = res.variant if res.metric in ("M1", "M2") else "distance_matched"
    if metric == "M2":
        variant = "per_head"
    sel = (m["metric"] == metric) & (m["variant"] == variant) & (m["layer"] >= 0) \
        & (m["sinks_excluded"].astype(bool) == res.sinks_excluded)
    if metric == "M2":
        sel &= m["term"] == "parallel"
    ce = contrast(m[sel], ["cell_id", "layer", "head"], design=res.design,
                  encoding=res.contrast_encoding)
    ce = res.kept_cells().merge(ce, on="cell_id").dropna(subset=["effect"])
    parts = []
    for mode, sub in ce.groupby("mode"):
        s = stats.summarize_family(sub, effect="effect", by=["layer", "head"], unit="prompt_id",
                                   correction=res.plan["heads_correction"],
                                   alpha=float(res.plan["heads_q"]), n_boot=200, n_perm=200)
        s.insert(0, "mode", mode)
        parts.append(s)
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    figures = {}
    for mode, sub in (table.groupby("mode") if len(table) else []):
        figures[f"heads {mode}"] = head_heatmap(
            sub, "mean_pct", "reject",
            title=f"{metric} {variant} per head, {mode}: reduction in % "
                  f"(● BH q < {res.plan['heads_q']})")
    lines = [f"{mode}: {int(sub['reject'].sum())} of {len(sub)} heads differ from 0 after BH"
             for mode, sub in (table.groupby("mode") if len(table) else [])]
    return Finding("heads", "Layer × head map", {"heads": table}, figures, pd.DataFrame(),
                   "; ".join(lines) + "." if lines else "No per-head rows.")


def degeneracy_report(res: StudyResults) -> Finding:
    """Degenerate generations under the preregistered rule. Tables ``rates`` (per mode
    and θ: flag rates and exclusions), ``excluded`` (the excluded runs with text)."""
    from .plots import degeneracy_plot

    deg = res.tables["degeneracy"].merge(res.cells().drop(columns=["excluded"]), on="cell_id")
    flag_cols = [c for c in deg.columns if c.startswith("flag_")]
    rates = deg.groupby(["mode", "threshold"])[flag_cols + ["excluded"]].mean().reset_index()
    rates.insert(2, "runs", deg.groupby(["mode", "threshold"]).size().to_numpy())
    runs = res.tables["runs"].set_index("run_id")
    ex = deg[deg["excluded"]][["cell_id", "prompt_id", "mode", "threshold", *flag_cols]].copy()
    ex["text"] = [runs.loc[c, "bracketed"][-160:] if c in runs.index else "" for c in ex["cell_id"]]
    figures = {"degeneracy": degeneracy_plot(rates, flag_cols)} if len(rates) else {}
    rule = res.prereg["exclusion_rule"]["rule"]
    answer = (f"Rule (preregistered): {rule}. {int(deg['excluded'].sum())} of {len(deg)} runs "
              "excluded; results without the exclusion are in the robustness table.")
    return Finding("degeneracy", "Degenerate generations", {"rates": rates, "excluded": ex},
                   figures, pd.DataFrame(), answer)


def dataset(res: StudyResults) -> Finding:
    """What the study ran: per condition, prompts, runs, steps, parallel steps, widths,
    exclusions. Table ``dataset``."""
    c = res.cells()
    table = (c.groupby(CONDITION)
             .agg(prompts=("prompt_id", "nunique"), runs=("cell_id", "count"),
                  steps=("steps", "mean"), parallel_steps=("parallel_steps", "mean"),
                  proportion_parallel=("proportion_parallel", "mean"),
                  mean_width=("mean_width", "mean"), excluded=("excluded", "sum"))
             .reset_index())
    s = res.study
    answer = (f"{c['prompt_id'].nunique()} prompts, {len(c)} generated runs, replays: "
              f"{', '.join(s.get('replays', [])) or 'none'}; max_steps {s.get('max_steps')}.")
    return Finding("dataset", "Dataset", {"dataset": table}, {}, pd.DataFrame(), answer)


# ---- everything -------------------------------------------------------------------------------
def family(findings: dict[str, Finding], res: StudyResults) -> pd.DataFrame:
    """The H1–H4 tests (one per hypothesis and mode) with the plan's family-wise
    correction (Holm by default)."""
    rows = [f.tests for k, f in findings.items() if k in ("H1", "H2", "H3", "H4")
            and len(f.tests)]
    if not rows:
        return pd.DataFrame(columns=["hypothesis", "mode", "test", "p", "p_adj", "reject"])
    table = pd.concat(rows, ignore_index=True)
    c = stats.correct(table["p"], res.plan["hypotheses_correction"], res.alpha)
    table["p_adj"], table["reject"] = c["p_adj"].to_numpy(), c["reject"].to_numpy()
    return table


def run_all(res: StudyResults, predict: bool = True, n_permutations: int = 200
            ) -> dict[str, Finding]:
    """Every finding of the report, in report order, plus ``family`` (a Finding whose
    table ``family`` holds the corrected H1–H4 tests). ``n_permutations`` goes to the
    predictability model's permutation p values."""
    out = {"dataset": dataset(res), "primary": primary(res), "H1": h1_temporal(res),
           "H2": h2_structure(res), "H3": h3_semantics(res), "H4": h4_context(res)}
    if predict:
        out["predictability"] = predictability(res, n_permutations=n_permutations)
    out["robustness"] = robustness(res)
    out["heads"] = heads(res)
    out["degeneracy"] = degeneracy_report(res)
    fam = family(out, res)
    out["family"] = Finding("family", f"H1–H4 as one family ({res.plan['hypotheses_correction']})",
                            {"family": fam}, {}, fam, "")
    return out


__all__ = ["Finding", "StudyResults", "contrast", "dataset", "degeneracy_report", "effects",
           "family", "h1_temporal", "h2_structure", "h3_semantics", "h4_context", "heads",
           "load", "predictability", "primary", "robustness", "run_all"]
