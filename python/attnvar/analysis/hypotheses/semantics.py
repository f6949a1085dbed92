"""H3 token semantics: which parallel tokens lose (or gain) attention?"""

from __future__ import annotations

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

TERMS_METRIC = ("M2 pooled with every covariate, generated runs alone (how token properties "
                "predict attention; not a contrast, no verdict)")


def h3_semantics(res: StudyResults) -> HypothesisTables:
    """H3: does the effect depend on what the parallel token is?

    The class contrasts are in the primary metric's M1 variant (results.profile_variant).
    Tables: ``classes`` (per mode and token class: the contrast within the class,
    summaries with BH), ``closed_vs_open`` (per mode: closed-class minus open-class
    word-initial pieces per prompt; the H3 test), ``terms`` (M2 covariate coefficients of
    the generated runs, summarised over prompts: how token properties predict attention
    regardless of parallel status), ``class_effects`` (per cell and class: the contrast).
    """
    cl = profile_rows(res, "classes")
    ce = contrast(cl, ["cell_id", "class"], design=res.design, encoding=res.contrast_encoding)
    ce = res.kept_cells().merge(ce, on="cell_id", how="inner").dropna(subset=["effect"])
    classes = summarize(ce, ["mode", "class"], res)
    wide = ce.pivot_table(index=["cell_id", "prompt_id", "mode"], columns="class",
                          values="effect").reset_index()
    if {"word:closed_class", "word:open_class"} <= set(wide.columns):
        wide["closed_minus_open"] = wide["word:closed_class"] - wide["word:open_class"]
        cvo = summarize(wide.dropna(subset=["closed_minus_open"]), ["mode"], res,
                        effect="closed_minus_open", correction="holm")
    else:
        cvo = summarize(wide.iloc[:0].assign(closed_minus_open=[]), ["mode"], res,
                        effect="closed_minus_open")
    terms = res.tables["terms"]
    kept = set(res.kept_cells()["cell_id"])
    t = terms[(terms["variant"] == "pooled") & terms["cell_id"].isin(kept)
              & ~terms["term"].str.startswith("spline")]
    t = t.merge(res.cells()[["cell_id", "prompt_id", "mode"]], on="cell_id")
    term_summary = summarize(t.rename(columns={"estimate": "coef"}), ["mode", "term"], res,
                             effect="coef", equivalence=False)
    pcol = p_column(res)
    label = profile_label(res)
    tests = [test_row("H3", s["mode"], "closed-class − open-class words", s["mean_pct"],
                      s["ci_pct_low"], s["ci_pct_high"], s[pcol], s["n"], metric=label,
                      sd=s["sd"], alpha=res.alpha)
             for s in cvo.to_dict("records")]
    return HypothesisTables("H3", {"classes": classes, "closed_vs_open": cvo,
                                   "terms": term_summary, "class_effects": ce},
                            tests_frame(tests), metric=label,
                            table_metrics={"terms": TERMS_METRIC})


__all__ = ["h3_semantics"]
