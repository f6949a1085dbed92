"""The report's words: each finding's title and its one-paragraph answer, written from
the hypothesis tables (numbers are formatted here, never computed)."""

from __future__ import annotations

import numpy as np

from ..analysis.hypotheses import HypothesisTables, StudyResults, condition_label
from ..analysis.hypotheses.checks import ESTIMANDS
from ..analysis.hypotheses.results import p_column

TITLES = {
    "dataset": "Dataset",
    "controls": "Controls: a placebo and a positive control on this study's own runs",
    "primary": "Primary effect: parallel tokens at a shared position",
    "H1": "H1 temporal: does the effect change over the generation?",
    "H2": "H2 prompt structure: incomplete vs complete versions of one content",
    "H3": "H3 token semantics: which parallel tokens lose (or gain) attention?",
    "H4": "H4 context and proportion: more parallel context, larger effect?",
    "predictability": "Predictability: can the direction and size be predicted?",
    "robustness": "Robustness: the effect under every metric choice",
    "prototype": "The prototype's metric on this study, beside its published claims",
    "heads": "Layer × head map",
    "degeneracy": "Degenerate generations",
}


def fmt_pct(mean: float, lo: float, hi: float) -> str:
    return f"{mean:+.1f} % (95 % CI {lo:+.1f} to {hi:+.1f})"


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_signed_pct(value: float) -> str:
    """"+1.2 %", or "n/a" for a value the data did not give."""
    return f"{value:+.1f} %" if np.isfinite(value) else "n/a"


def p_is(p: float) -> str:
    """"p = 0.123", "p < 0.001" or "p = n/a"."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def title(name: str, res: StudyResults) -> str:
    if name == "family":
        return f"H1–H4 as one family ({res.plan['hypotheses_correction']})"
    return TITLES[name]


def dataset(t: HypothesisTables, res: StudyResults) -> str:
    f = t.facts
    return (f"{f['prompts']} prompts, {f['runs']} generated runs, replays: "
            f"{', '.join(f['replays']) or 'none'}; max_steps {f['max_steps']}.")


def controls(t: HypothesisTables, res: StudyResults) -> str:
    parts = []
    for s in t.tables["placebo"].to_dict("records"):
        if not s["draws"]:
            continue
        parts.append(
            f"{condition_label(s)}: {s['rejections']} of {s['draws']} placebo draws "
            f"rejected at α = {s['alpha']:g} (rate {100 * s['rate']:.1f} %, 95 % CI "
            f"{100 * s['rate_low']:.1f}–{100 * s['rate_high']:.1f} %; expected band "
            f"{s['band_low']}–{s['band_high']}; {s['reading']}) — "
            f"{'passes' if s['ok'] else 'FAILS (liberal)'}")
    text = ("Placebo (random labels on the top_only replays, no effect to find): "
            + "; ".join(parts) + ". ") if parts else ""
    pos = t.tables["positive"]
    if len(pos) and pos["runs"].iloc[0]:
        p = pos.iloc[0]
        text += (f"Positive control ({p['delta']:+.4f} on the parallel keys of layer "
                 f"{p['layer']} in {p['runs']} of the study's runs): M2's coefficient there "
                 f"moved by {p['m2_shift']:+.4f} (error {p['error']:.1e}, tolerance "
                 f"{p['tolerance']:g}) — {'passes' if p['ok'] else 'FAILS'}; the primary "
                 f"metric over all layers moved by {p['primary_shift']:+.4f} "
                 f"({p['primary_shift_pct']:+.1f} %), less than log 2 because the bias "
                 "sits in one layer of many. ")
    for note in t.facts.get("not_run", []):
        text += f"Not run — {note}. "
    if t.facts.get("failed"):
        text += ("**A control failed: the verdicts of this report are withheld** until "
                 "the failure is understood.")
    return text.strip()


def primary(t: HypothesisTables, res: StudyResults) -> str:
    pcol = p_column(res)
    lines = []
    for d in t.tables["summary"].to_dict("records"):
        equivalence = (f"equivalent to 0 within ±{res.plan['tost_margin_pct']} %"
                       if d["equivalent"] else "not shown equivalent to 0")
        lines.append(f"{condition_label(d)}: "
                     f"{fmt_pct(d['mean_pct'], d['ci_pct_low'], d['ci_pct_high'])}"
                     f" over {d['n']} prompts, {p_is(d[pcol])} (Holm {fmt_p(d['p_adj'])}),"
                     f" {equivalence}")
    design = ("generated run minus its " + res.contrast_encoding + " replay"
              if res.design == "replay" else "within the generated run (no contrast replay)")
    return (f"Effect = {res.metric} ({res.variant}), {design}; positive % = parallel tokens "
            "receive less attention. " + ("; ".join(lines) if lines else
                                          "Too few prompts for a test.")
            + _meta_sentence(t, res, pcol))


def _meta_sentence(t: HypothesisTables, res: StudyResults, pcol: str) -> str:
    """The random-effects meta-analysis beside the t test, reconciled in words."""
    meta, summary = t.tables["meta"], t.tables["summary"]
    if "mu_pct" not in meta or not len(summary):
        return ""
    parts = []
    for m in meta.dropna(subset=["mu_pct"]).to_dict("records"):
        s = summary
        for c in ("mode", "threshold", "policy"):
            s = s[s[c] == m[c]] if c in s and c in m else s
        if not len(s):
            continue
        p_t, p_m = float(s.iloc[0][pcol]), float(m["p"])
        same = (p_t < res.alpha) == (p_m < res.alpha)
        interval = fmt_pct(m["mu_pct"], m["ci_pct_low"], m["ci_pct_high"])
        parts.append(f"{condition_label(m)}: {interval}, {p_is(p_m)}"
                     + ("" if same else " (differs from the t test's verdict)"))
    if not parts:
        return ""
    return (". Beside it, the random-effects meta-analysis (" + str(meta["metric"].iloc[0])
            + ", REML τ², HKSJ interval: t with k − 1 df, never narrower than the normal "
            "one) — " + "; ".join(parts) + ". The t test weighs every prompt equally; the "
            "meta-analysis weighs prompts by their within-prompt precision and models the "
            "spread between them, so the two answer slightly different questions; the "
            "preregistered verdict is the t test's.")


def h1(t: HypothesisTables, res: StudyResults) -> str:
    pcol = p_column(res)
    lines = [f"{s['mode']}: mean slope {s['mean']:+.4f} log units per step "
             f"(95 % CI {s['ci_low']:+.4f} to {s['ci_high']:+.4f}), {p_is(s[pcol])}"
             for s in t.tables["slope_summary"].to_dict("records")]
    mixed = t.tables["mixed"]
    sens = [f"{r['mode']}: {r['estimate']:+.4f} per step, {p_is(r['p'])} ({r['model']})"
            for r in mixed.to_dict("records") if np.isfinite(r.get("estimate", np.nan))]
    return ("The effect's trend over query steps — " + ("; ".join(lines) or "too few steps")
            + f". {t.facts['reversals']} of {t.facts['runs']} runs reverse sign between the "
            "early and late thirds with both 95 % CIs excluding 0."
            + (" Sensitivity analysis, not the verdict — a mixed model of the per-step "
               "effect: " + "; ".join(sens) + "." if sens else ""))


def h2(t: HypothesisTables, res: StudyResults) -> str:
    pcol = p_column(res)
    lines = [f"{s['mode']}: incomplete − complete = "
             f"{fmt_pct(s['mean_pct'], s['ci_pct_low'], s['ci_pct_high'])} "
             f"over {s['n']} pairs, {p_is(s[pcol])}"
             for s in t.tables["paired"].to_dict("records")]
    return ("Matched pairs — " + ("; ".join(lines) if lines else
                                  "the study has fewer than 2 complete matched pairs")
            + ". (A difference in % here is 100·(1 − e^Δ) of the difference of effects.) "
            + _pairs_lost(t))


def _pairs_lost(t: HypothesisTables) -> str:
    lost = t.tables.get("pairs_lost")
    if lost is None or not len(lost):
        return ""
    total, gone = int(lost["pairs"].sum()), int(lost["lost"].sum())
    if not gone:
        return f"No matched pair was lost ({total} pair × condition cells)."
    return (f"Pairs lost: {gone} of {total} pair × condition cells — "
            f"{int(lost['lost_complete'].sum())} on the complete side, "
            f"{int(lost['lost_incomplete'].sum())} on the incomplete side, "
            f"{int(lost['lost_both'].sum())} on both (table pairs_lost; the dataset's "
            "accounting says why runs drop out).")


def h3(t: HypothesisTables, res: StudyResults) -> str:
    pcol = p_column(res)
    classes = t.tables["classes"]
    lines = [f"{s['mode']}: closed − open class = "
             f"{fmt_pct(s['mean_pct'], s['ci_pct_low'], s['ci_pct_high'])}, "
             f"{p_is(s[pcol])} (n = {s['n']})"
             for s in t.tables["closed_vs_open"].to_dict("records")]
    n_sig = int(classes["reject"].astype(bool).sum()) if "reject" in classes else 0
    return ("Function vs content words — " + ("; ".join(lines) if lines else
                                               "too few prompts with both classes")
            + f". {n_sig} of {len(classes)} mode × class effects differ from 0 after BH.")


def h4(t: HypothesisTables, res: StudyResults) -> str:
    threshold_dose, assoc = t.tables["threshold_dose"], t.tables["association"]
    if len(threshold_dose):
        pcol = p_column(res)
        lines = [f"{s['mode']}: slope over θ {s['mean']:+.3f} log units per unit θ, "
                 f"{p_is(s[pcol])} (n = {s['n']})"
                 for s in threshold_dose.to_dict("records")]
    else:
        lines = [f"{s['mode']}: slope on the parallel proportion {s['slope']:+.3f}, "
                 f"{p_is(s['p'])} (n = {s['n']})" if np.isfinite(s["slope"]) else
                 f"{s['mode']}: not estimable ({s['n']} prompt(s); a slope needs 3 with "
                 "different parallel proportions)"
                 for s in assoc[assoc["covariate"] == "proportion_parallel"].to_dict("records")]
    return "Dose–response — " + ("; ".join(lines) if lines else "not estimable") + "."


def predictability(t: HypothesisTables, res: StudyResults) -> str:
    lines = [f"{s['mode']}: CV R² = {s['cv_r2']:+.2f} (permutation {p_is(s['p_r2'])}), "
             f"sign accuracy {s['sign_acc']:.2f} vs {s['baseline_acc']:.2f} for the majority "
             f"sign ({p_is(s['p_sign'])}), {s['n_groups']} prompts"
             for s in t.tables["summary"].to_dict("records")] + list(t.facts["notes"])
    return ("; ".join(lines) + ". CV R² ≤ 0 means the features predict the magnitude no "
            "better than the mean of the other prompts.") if lines else "Not estimable."


def robustness(t: HypothesisTables, res: StudyResults) -> str:
    spec = t.tables["specifications"]
    if not len(spec):
        return "No specification could be estimated."
    estimand = ESTIMANDS.get(res.metric, "attention contrast")
    same = spec[spec["estimand"] == estimand]
    same_sign = {m: (np.sign(g["mean_pct"]).value_counts().max(), len(g))
                 for m, g in same.groupby("mode")}
    others = sorted(set(spec["estimand"]) - {estimand})
    if not same_sign:
        return (f"No specification of the primary metric's estimand ({estimand}) could be "
                "estimated on this study.")
    return ("; ".join(f"{m}: {k} of {n} specifications of the same estimand ({estimand}) "
                      "share the majority sign" for m, (k, n) in same_sign.items())
            + (f". Rows of other estimands ({', '.join(others)}) answer other questions and "
               "are shown for reference, not counted." if others else "."))


def prototype(t: HypothesisTables, res: StudyResults) -> str:
    m0, pub = t.tables["m0"], t.tables["published"]
    ours = []
    for s in m0.to_dict("records"):
        if s["prompts"] < 2:
            ours.append(f"{condition_label(s)}: {s['prompts']} prompt(s) with a value, too "
                        "few to summarise")
            continue
        ours.append(f"{condition_label(s)}: {s['mean_pct']:+.1f} % ± {s['sd_pct']:.1f} over "
                    f"{s['prompts']} prompts (paired t {p_is(s['p'])}; the primary "
                    f"metric on the same runs {fmt_signed_pct(s['primary_mean_pct'])})")
    theirs = [f"{r['mean_pct']:+.1f} % ± {r['sd_pct']:.1f} over {r['prompts']} prompts "
              f"({p_is(r['p'])}, {r['claim']})" for r in pub.to_dict("records")]
    return (f"M0, the prototype's metric (a ratio of mean attention, positive = less), on "
            f"this study — model {t.facts['model']}, the "
            "mechanism as described — " + ("; ".join(ours) or "no run with a value")
            + ". Published: " + "; ".join(theirs) + f", from {pub['model'].iloc[0]} with "
            f"{pub['mechanism'].iloc[0]}. Different models and mechanisms: not a "
            "like-for-like comparison.")


def heads(t: HypothesisTables, res: StudyResults) -> str:
    table = t.tables["heads"]
    lines = [f"{mode}: {int(sub['reject'].sum())} of {len(sub)} heads differ from 0 after BH"
             for mode, sub in (table.groupby("mode") if len(table) else [])]
    return "; ".join(lines) + "." if lines else "No per-head rows."


def degeneracy(t: HypothesisTables, res: StudyResults) -> str:
    f = t.facts
    return (f"Rule (preregistered): {f['rule']}. {f['excluded']} of {f['runs']} runs "
            "excluded; results without the exclusion are in the robustness table.")


def family(t: HypothesisTables, res: StudyResults) -> str:
    return ""


ANSWERS = {"dataset": dataset, "controls": controls, "primary": primary, "H1": h1, "H2": h2,
           "H3": h3, "H4": h4,
           "predictability": predictability, "robustness": robustness,
           "prototype": prototype, "heads": heads,
           "degeneracy": degeneracy, "family": family}

__all__ = ["ANSWERS", "TITLES", "fmt_p", "fmt_pct", "p_is", "title"]
