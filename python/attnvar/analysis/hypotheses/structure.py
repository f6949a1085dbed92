"""H2 prompt structure: incomplete vs complete versions of one content."""

from __future__ import annotations

import pandas as pd
from scipy.stats import kruskal

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


def pairs_lost(res: StudyResults, eff: pd.DataFrame) -> pd.DataFrame:
    """Per condition: matched pairs in the study (both versions among its prompts), pairs
    analysed (both sides have an effect) and pairs lost, by the side that has none."""
    cells = res.cells()
    cells = cells[cells["pair"].notna() & cells["structure"].isin(["incomplete", "complete"])]
    have = set(eff["cell_id"]) if len(eff) else set()
    rows = []
    for key, sub in cells.groupby(CONDITION, dropna=False):
        counts = {"pairs": 0, "analysed": 0, "lost_incomplete": 0, "lost_complete": 0,
                  "lost_both": 0}
        for _, g in sub.groupby("pair"):
            side = {s: bool(set(g.loc[g["structure"] == s, "cell_id"]) & have)
                    for s in ("incomplete", "complete")}
            if not (g["structure"] == "incomplete").any() or \
                    not (g["structure"] == "complete").any():
                continue  # only one version in the study: not a matched pair here
            counts["pairs"] += 1
            if side["incomplete"] and side["complete"]:
                counts["analysed"] += 1
            elif side["incomplete"]:
                counts["lost_complete"] += 1
            elif side["complete"]:
                counts["lost_incomplete"] += 1
            else:
                counts["lost_both"] += 1
        rows.append({**dict(zip(CONDITION, key, strict=True)), **counts,
                     "lost": counts["pairs"] - counts["analysed"]})
    return pd.DataFrame(rows, columns=[*CONDITION, "pairs", "analysed", "lost_incomplete",
                                       "lost_complete", "lost_both", "lost"])


def h2_structure(res: StudyResults) -> HypothesisTables:
    """H2: does the prompt's structure matter? Matched pairs (the incomplete and complete
    versions of the same content) with a paired test; categories as secondary.

    Tables: ``pairs`` (per pair and condition: incomplete, complete, difference),
    ``paired`` (per mode: summary of incomplete − complete over pairs; the H2 test),
    ``pairs_lost`` (per condition: the study's matched pairs, those analysed, and those
    lost because the incomplete side, the complete side or both have no effect — a
    run that stopped before a measurable query, was excluded or had no contrast; see
    the dataset's accounting for why),
    ``categories`` (per mode and category: summaries, BH), ``kruskal`` (per mode:
    Kruskal–Wallis across categories).
    """
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
    lost = pairs_lost(res, eff)
    paired = summarize(pairs, ["mode"], res, unit="pair", effect="difference", correction="holm")
    cats = summarize(eff, ["mode", "category"], res)
    kw = []
    for mode, sub in eff.groupby("mode"):
        groups = [g.groupby("prompt_id")["effect"].mean().to_numpy()
                  for _, g in sub.groupby("category")]
        groups = [g for g in groups if len(g) >= 2]
        if len(groups) >= 2:
            h, p = kruskal(*groups)
            kw.append({"mode": mode, "H": float(h), "p": float(p), "categories": len(groups)})
    kw = pd.DataFrame(kw, columns=["mode", "H", "p", "categories"])
    pcol = p_column(res)
    tests = [test_row("H2", s["mode"], "incomplete − complete over matched pairs",
                      s["mean_pct"], s["ci_pct_low"], s["ci_pct_high"], s[pcol], s["n"],
                      metric=metric_label(res), sd=s["sd"], alpha=res.alpha)
             for s in paired.to_dict("records")]
    return HypothesisTables("H2", {"pairs": pairs, "paired": paired, "categories": cats,
                                   "kruskal": kw, "pairs_lost": lost}, tests_frame(tests),
                            facts={"pairs_lost": int(lost["lost"].sum()) if len(lost) else 0,
                                   "pairs_planned": int(lost["pairs"].sum()) if len(lost)
                                   else 0},
                            metric=metric_label(res))


__all__ = ["h2_structure"]
