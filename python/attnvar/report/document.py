"""The hypothesis report of a study: Markdown and self-contained HTML with the figures.

``write_report(results)`` loads the study (:func:`attnvar.analysis.hypotheses.load`),
computes every hypothesis table (:func:`attnvar.analysis.hypotheses.compute_all`), adds
figures and answers (:func:`attnvar.report.findings.present`) and prints them; the
report's numbers are the analysis functions' numbers. It also checks the study against
its preregistration.

Layout of ``<results>/report/``: ``report.md``, ``report.html`` (figures embedded as
PNG data URIs, no external files), ``figures/<name>.png``, ``tables/<finding>__<table>.csv``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.hypotheses import StudyResults, load
from ..study.store import GENERATED_KINDS, RUNS, iter_completed
from ..util.atomic import new_staging_dir, publish_dir
from ..util.markdown import format_cell as _cell
from ..util.markdown import markdown_table as _md_table
from .findings import run_all
from .plots import png_bytes_all

REPORT_DIR = "report"

# The columns each report table shows (all columns are in tables/*.csv).
SHOW = {
    ("dataset", "dataset"): None,
    ("dataset", "accounting"): None,
    ("controls", "placebo"): ["mode", "threshold", "policy", "metric", "draws", "prompts",
                              "rejections", "rate", "rate_low", "rate_high", "band_low",
                              "band_high", "reading", "ok"],
    ("controls", "positive"): ["runs", "layer", "delta", "m2_shift", "error", "max_head_error",
                               "tolerance", "primary_metric", "primary_shift",
                               "primary_shift_pct", "ok", "note"],
    ("primary", "summary"): ["mode", "threshold", "policy", "n", "mean_pct", "ci_pct_low",
                             "ci_pct_high", "mean", "p", "p_wilcoxon", "p_perm", "p_adj",
                             "hl", "r_rb", "p_tost", "equivalent", "mde_pct"],
    ("primary", "meta"): None,
    ("family", "family"): ["hypothesis", "mode", "test", "pct", "pct_low", "pct_high",
                           "pct_unit", "estimate", "unit", "n", "p", "p_adj", "reject"],
    ("H1", "slope_summary"): ["mode", "n", "mean", "ci_low", "ci_high", "p", "p_adj"],
    ("H1", "by_query_phase"): ["mode", "query_phase", "n", "mean_pct", "ci_pct_low",
                               "ci_pct_high", "p", "p_adj"],
    ("H1", "by_key_phase"): ["mode", "key_phase", "n", "mean_pct", "ci_pct_low",
                             "ci_pct_high", "p", "p_adj"],
    ("H1", "mixed"): None,
    ("H2", "paired"): ["mode", "n", "mean_pct", "ci_pct_low", "ci_pct_high", "p", "p_adj"],
    ("H2", "categories"): ["mode", "category", "n", "mean_pct", "ci_pct_low", "ci_pct_high",
                           "p", "p_adj"],
    ("H2", "kruskal"): None,
    ("H2", "pairs_lost"): None,
    ("H3", "closed_vs_open"): ["mode", "n", "mean_pct", "ci_pct_low", "ci_pct_high", "p",
                               "p_adj"],
    ("H3", "classes"): ["mode", "class", "n", "mean_pct", "ci_pct_low", "ci_pct_high", "p",
                        "p_adj", "reject"],
    ("H3", "terms"): ["mode", "term", "n", "mean", "ci_low", "ci_high", "p", "p_adj"],
    ("H4", "threshold_dose"): ["mode", "n", "mean", "ci_low", "ci_high", "p", "p_adj"],
    ("H4", "association"): None,
    ("H4", "by_threshold"): ["mode", "threshold", "n", "mean_pct", "ci_pct_low",
                             "ci_pct_high", "p", "p_adj"],
    ("H4", "steps_dose"): ["mode", "max_steps", "n", "mean_pct", "ci_pct_low", "ci_pct_high"],
    ("predictability", "summary"): ["mode", "n", "n_groups", "cv_r2", "p_r2", "sign_acc",
                                     "baseline_acc", "sign_gain", "p_sign", "rmse"],
    ("robustness", "specifications"): ["mode", "estimand", "metric", "variant",
                                       "sinks_excluded", "design", "exclusions", "n",
                                       "mean_pct", "ci_pct_low", "ci_pct_high", "p",
                                       "primary"],
    ("prototype", "m0"): [*("mode", "threshold", "policy"), "prompts", "mean_pct", "sd_pct",
                          "median_pct", "min_pct", "max_pct", "t", "p",
                          "m0_corrected_mean_pct", "primary_mean_pct", "model"],
    ("prototype", "published"): ["claim", "prompts", "mean_pct", "sd_pct", "median_pct",
                                 "min_pct", "max_pct", "t", "p", "model"],
    ("heads", "heads"): None,  # too long: the heatmap shows it; the CSV has it
    ("degeneracy", "rates"): None,
    ("degeneracy", "excluded"): None,
}
HIDDEN = {("heads", "heads")}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "figure"


@dataclass
class Block:
    kind: str  # "h1", "h2", "h3", "p", "table", "figure", "pre"
    content: Any
    caption: str = ""


def _table_block(frame: pd.DataFrame, cols: list[str] | None, caption: str) -> Block:
    shown = frame if cols is None else frame[[c for c in cols if c in frame]]
    return Block("table", shown.reset_index(drop=True), caption)


def compliance(res: StudyResults) -> dict[str, Any]:
    """Whether the study followed its preregistration.

    Returns a dict with ``followed`` (bool) and ``checks``: (description, ok, detail)
    tuples — plan written before the first run, plan stored with the study unchanged,
    every planned generation complete, analysis settings equal to the plan's.
    """
    checks = []
    written = _dt.datetime.fromisoformat(res.prereg["written_at"])
    run_times = [p.joinpath("run.json").stat().st_mtime
                 for p in iter_completed(res.path / RUNS)]
    first = (_dt.datetime.fromtimestamp(min(run_times), _dt.timezone.utc)
             if run_times else None)
    checks.append(("plan written before the first run",
                   first is None or written <= first + _dt.timedelta(seconds=1),
                   f"plan {written.isoformat()}, first run "
                   f"{first.isoformat(timespec='seconds') if first else 'none'}"))
    stored = res.study.get("preregistration")
    checks.append(("plan stored with the study equals the preregistered plan",
                   stored == res.plan, "study.json vs preregistration.json"))
    s = res.study
    n_seeds = len(s.get("seeds") or [0]) if s.get("sample") else 1
    expected = (len(s["prompts"]) * len(s["thresholds"]) * len(s["modes"])
                * len(s["policies"]) * n_seeds)
    runs = res.tables["runs"]
    got = int(runs["kind"].isin(GENERATED_KINDS).sum())
    rep_expected = expected * len(s.get("replays", []))
    rep_got = int((runs["kind"] == "replay").sum())
    checks.append(("every planned run complete", got == expected and rep_got == rep_expected,
                   f"{got}/{expected} generations, {rep_got}/{rep_expected} replays"))
    dev = res.deviations()
    checks.append(("analysis settings as planned", not dev, "; ".join(dev) or "none"))
    if res.plan["contrast_encoding"] not in s.get("replays", []):
        checks.append(("the planned contrast replay was run", False,
                       f"{res.plan['contrast_encoding']} not among the replays: the primary "
                       "design falls back to the observational contrast"))
    return {"followed": all(ok for _, ok, _ in checks), "checks": checks}


def summary_table(findings: dict) -> pd.DataFrame:
    """One row per preregistered test: the primary effect per condition and the H1–H4
    family, with estimate, CI, raw and corrected p, the primary test's minimum
    detectable effect and a verdict (read from the findings' tables; nothing is
    recomputed). A smoke-test study's verdicts are withheld."""
    rows = []
    withheld = _withheld(findings)
    prim = findings.get("primary")
    if prim is not None and len(prim.tables.get("summary", ())):
        meta = _hksj_by_condition(prim.tables.get("meta"))
        for s in prim.tables["summary"].to_dict("records"):
            label = " ".join(str(s[c]) for c in ("mode", "threshold", "policy") if c in s)
            rows.append({"question": "primary: less attention at a shared position?",
                         "condition": label, "estimate": s["mean_pct"],
                         "ci_low": s["ci_pct_low"], "ci_high": s["ci_pct_high"],
                         "unit": "% reduction", "n": s["n"], "p": s["p"],
                         "supports the hypothesis if": "≠ 0 (two-sided test)",
                         "metric": prim.metric_of("summary"),
                         "sd": s["sd"], "p_adj": s["p_adj"],
                         "mde": s.get("mde_pct", float("nan")),
                         "meta-analysis (HKSJ)": meta.get(
                             tuple(s.get(c) for c in ("mode", "threshold", "policy")), "–"),
                         "verdict": withheld or _verdict(s)})
    fam = findings.get("family")
    if fam is not None and len(fam.tables.get("family", ())):
        names = {k: findings[k].title.split(":")[0] for k in ("H1", "H2", "H3", "H4")
                 if k in findings}
        for s in fam.tables["family"].to_dict("records"):
            rows.append({"question": f"{names.get(s['hypothesis'], s['hypothesis'])}: {s['test']}",
                         "condition": s["mode"], "estimate": s["pct"],
                         "ci_low": s["pct_low"], "ci_high": s["pct_high"],
                         "unit": s["pct_unit"], "supports the hypothesis if": s["supports"],
                         "metric": s.get("metric", ""),
                         "n": s["n"], "sd": s.get("sd", float("nan")), "p": s["p"],
                         "p_adj": s["p_adj"], "mde": s.get("mde_pct", float("nan")),
                         "meta-analysis (HKSJ)": "–",
                         "verdict": withheld or
                         ("differs from 0" if s["reject"] else "not shown")})
    return pd.DataFrame(rows, columns=["question", "condition", "estimate", "ci_low", "ci_high",
                                       "unit", "supports the hypothesis if", "metric", "n", "sd",
                                       "p", "p_adj", "mde", "meta-analysis (HKSJ)", "verdict"])


def _hksj_by_condition(meta: pd.DataFrame | None) -> dict[tuple, str]:
    """The primary meta-analysis per condition as "mean % (95 % HKSJ CI)" text."""
    out: dict[tuple, str] = {}
    if meta is None or not len(meta) or "mu_pct" not in meta:
        return out
    for m in meta.to_dict("records"):
        if pd.notna(m.get("mu_pct")):
            key = tuple(m.get(c) for c in ("mode", "threshold", "policy"))
            out[key] = (f"{m['mu_pct']:+.1f} % ({m['ci_pct_low']:+.1f} to "
                        f"{m['ci_pct_high']:+.1f}), p = {m['p']:.3g}")
    return out


def controls_table(findings: dict) -> pd.DataFrame:
    """The controls in one table for the summary: per placebo condition and for the
    positive control, what was found, what it had to be, and whether it passed."""
    ctl = findings.get("controls")
    rows = []
    if ctl is not None:
        for s in ctl.tables.get("placebo", pd.DataFrame()).to_dict("records"):
            if not s.get("draws"):
                continue
            rows.append({"control": "placebo", "condition": " ".join(
                str(s[c]) for c in ("mode", "threshold", "policy") if c in s),
                "found": f"{s['rejections']} of {s['draws']} draws reject "
                         f"({100 * s['rate']:.1f} %, 95 % CI {100 * s['rate_low']:.1f}–"
                         f"{100 * s['rate_high']:.1f} %)",
                "required": f"≤ {s['band_high']} rejections (band {s['band_low']}–"
                            f"{s['band_high']} of Binomial({s['draws']}, {s['alpha']:g})); "
                            f"{s['reading']}",
                "ok": bool(s["ok"])})
        pos = ctl.tables.get("positive", pd.DataFrame())
        if len(pos) and pos["runs"].iloc[0]:
            p = pos.iloc[0]
            rows.append({"control": "positive", "condition": f"layer {p['layer']}, "
                         f"{p['runs']} runs",
                         "found": f"M2 shift {p['m2_shift']:+.4f} (primary metric "
                                  f"{p['primary_shift']:+.4f})",
                         "required": f"{p['delta']:+.4f} ± {p['tolerance']:g}",
                         "ok": bool(p["ok"])})
    return pd.DataFrame(rows, columns=["control", "condition", "found", "required", "ok"])


WITHHELD = "withheld (smoke test)"
WITHHELD_CONTROL = "withheld (a control failed)"


def _smoke(findings: dict) -> bool:
    data = findings.get("dataset")
    return bool(data is not None and data.facts.get("smoke_test"))


def _failed_controls(findings: dict) -> list[str]:
    ctl = findings.get("controls")
    return list(ctl.facts.get("failed", [])) if ctl is not None else []


def _withheld(findings: dict) -> str:
    """Why the summary's verdicts are withheld ("" when they stand)."""
    if _failed_controls(findings):
        return WITHHELD_CONTROL
    return WITHHELD if _smoke(findings) else ""


def banners(res: StudyResults, findings: dict) -> list[str]:
    """What a reader must know before the summary: a smoke test, an underpowered study."""
    out = []
    failed = _failed_controls(findings)
    if failed:
        out.append(f"**Control failed: {' and '.join(failed)}.** The study's own data "
                   "failed a check the analysis must pass (section *Controls*), so every "
                   "verdict below is withheld.")
    ctl = findings.get("controls")
    for note in (ctl.facts.get("not_run", []) if ctl is not None else []):
        out.append(f"**Control not run** — {note}: the verdicts below stand without it.")
    if _smoke(findings):
        out.append("**Smoke test.** This study ran the core-small suite (8 prompts): it "
                   "shows the pipeline works end to end and is too small to answer, so its "
                   "verdicts are withheld. Run `attnvar study --suite core` for an answer.")
    prim = findings.get("primary")
    summary = prim.tables.get("summary") if prim is not None else None
    margin = float(res.plan["tost_margin_pct"])
    if summary is not None and len(summary) and "mde_pct" in summary:
        worst = float(summary["mde_pct"].max())
        if not worst <= margin:
            n = ", ".join(str(int(v)) for v in sorted(set(summary["n"])))
            out.append(
                f"**Underpowered.** With {n} prompts per condition and the spread observed, "
                f"this study detects (80 % power, two-sided α = {res.alpha}) only "
                f"reductions of about {worst:.0f} % or more in its weakest condition "
                f"(column *mde*), more than the ±{margin:g} % it aims to resolve: a "
                "non-significant result here is not evidence of absence.")
    return out


def _verdict(s: dict) -> str:
    if s.get("reject"):
        return "less attention" if s["mean_pct"] > 0 else "more attention"
    if s.get("equivalent"):
        return "equivalent to 0"
    return "inconclusive"


def build_blocks(res, findings: dict) -> list[Block]:
    """The report as a list of blocks (shared by the Markdown and HTML writers)."""
    b: list[Block] = []
    plan = res.plan
    b.append(Block("h1", f"attnvar hypothesis report — {res.path.name}"))
    comp = compliance(res)
    design = (f"generated run minus its {res.contrast_encoding} replay (text held fixed)"
              if res.design == "replay" else "observational (within the generated run)")
    b.append(Block("p", (
        f"Primary effect: **{res.metric} ({res.variant})**, sinks "
        f"{'excluded' if res.sinks_excluded else 'included'}, {design}. "
        "Effects in % are reductions: **positive = parallel tokens receive less attention**; "
        f"log-scale effects keep their sign (negative = less). Unit: the prompt. Level "
        f"α = {plan['alpha']}, H1–H4 corrected together ({plan['hypotheses_correction']}), "
        f"heads by {plan['heads_correction']} at q = {plan['heads_q']}, equivalence margin "
        f"±{plan['tost_margin_pct']} %.")))
    b.append(Block("h2", "Summary"))
    for text in banners(res, findings):
        b.append(Block("p", text))
    b.append(Block("table", summary_table(findings), ""))
    ctl = controls_table(findings)
    if len(ctl):
        b.append(Block("table", ctl, "Controls on this study's own runs (section Controls)"))
    b.append(Block("p", "Each row is one preregistered test, all on one scale: *estimate* "
                   "is a reduction in % (positive = parallel tokens receive less "
                   "attention); a slope is the change of that reduction per step, per 0.1 θ "
                   "or per 0.1 of the steps being parallel, as *unit* says. *verdict* "
                   "applies the plan's "
                   "correction (primary: Holm across conditions; H1–H4: Holm across the "
                   "family). *metric*: the metric, sinks and design behind the row. *sd*: "
                   "the observed SD over units of the tested quantity (log units, per unit "
                   "of the covariate for slopes). *mde*: the smallest true effect, on the "
                   "row's scale, that its t test detects with 80 % power at this n and SD "
                   "(noncentral t, two-sided, before correction); – where the test is not "
                   "a t test over units. *meta-analysis (HKSJ)*: the random-effects mean "
                   "of the same per-prompt effects weighted by their precision, with the "
                   "Hartung–Knapp–Sidik–Jonkman interval (section Primary effect reconciles "
                   "it with the t test). The sections below give the tables and figures "
                   "behind each row."))
    b.append(Block("h2", "Preregistration"))
    b.append(Block("p", "The study **followed** its preregistration." if comp["followed"] else
                   "The study **did not fully follow** its preregistration (see the failed "
                   "checks)."))
    b.append(Block("table", pd.DataFrame(
        [{"check": c, "ok": ok, "detail": d} for c, ok, d in comp["checks"]]), ""))
    b.append(Block("pre", json.dumps(res.prereg["plan"], indent=1, ensure_ascii=False),
                   f"Plan (sha256 {res.prereg['plan_sha256'][:12]}…, written "
                   f"{res.prereg['written_at']})"))
    order = ["dataset", "controls", "primary", "family", "H1", "H2", "H3", "H4", "predictability",
             "robustness", "prototype", "heads", "degeneracy"]
    for key in order:
        f = findings.get(key)
        if f is None:
            continue
        b.append(Block("h2", f.title))
        if f.answer:
            b.append(Block("p", "**Answer.** " + f.answer))
        for name, table in f.tables.items():
            k = (key, name)
            if k not in SHOW or k in HIDDEN or table is None or len(table) == 0:
                continue
            metric = f.metric_of(name)
            b.append(_table_block(table, SHOW[k], f"{key} — {name}"
                                  + (f" · metric: {metric}" if metric else "")))
        for name, fig in f.figures.items():
            b.append(Block("figure", fig, name))
    return b


def _inline_md_to_html(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


FIGURE_DPI = 110


def _write_files(staging: Path, res: StudyResults, findings: dict, workers: int = 1) -> None:
    """report.md, report.html, figures/ and tables/ into ``staging``; the figures are
    rendered by ``workers`` processes (:func:`attnvar.report.plots.png_bytes_all`)."""
    (staging / "figures").mkdir()
    (staging / "tables").mkdir()
    for key, f in findings.items():
        for name, table in f.tables.items():
            if table is not None and len(table):
                table.to_csv(staging / "tables" / f"{_slug(key)}__{_slug(name)}.csv", index=False)
    md, body = [], []
    used: set[str] = set()
    blocks = build_blocks(res, findings)
    pngs = iter(png_bytes_all([b.content for b in blocks if b.kind == "figure"], FIGURE_DPI,
                              workers))
    for block in blocks:
        if block.kind in ("h1", "h2", "h3"):
            level = int(block.kind[1])
            md.append("#" * level + " " + block.content)
            body.append(f"<{block.kind}>{html.escape(block.content)}</{block.kind}>")
        elif block.kind == "p":
            md.append(block.content)
            body.append(f"<p>{_inline_md_to_html(block.content)}</p>")
        elif block.kind == "pre":
            md.append(f"{block.caption}:\n\n```json\n{block.content}\n```")
            body.append(f"<p>{html.escape(block.caption)}:</p><pre>{html.escape(block.content)}</pre>")
        elif block.kind == "table":
            frame = block.content
            md.append((f"*{block.caption}*\n\n" if block.caption else "") + _md_table(frame))
            shown = frame.map(_cell) if hasattr(frame, "map") else frame.applymap(_cell)
            body.append((f"<p class='caption'>{html.escape(block.caption)}</p>"
                         if block.caption else "") + shown.to_html(index=False, border=0,
                                                                   escape=True))
        elif block.kind == "figure":
            name = _slug(block.caption)
            while name in used:
                name += "_"
            used.add(name)
            data = next(pngs)
            (staging / "figures" / f"{name}.png").write_bytes(data)
            md.append(f"![{block.caption}](figures/{name}.png)")
            uri = base64.b64encode(data).decode()
            body.append(f"<figure><img alt='{html.escape(block.caption)}' "
                        f"src='data:image/png;base64,{uri}'/><figcaption>"
                        f"{html.escape(block.caption)}</figcaption></figure>")
    (staging / "report.md").write_text("\n\n".join(md) + "\n")
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'/>"
            f"<title>attnvar report — {html.escape(res.path.name)}</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
            "padding:0 1em;line-height:1.45}table{border-collapse:collapse;font-size:12px;"
            "margin:0.5em 0 1.5em}td,th{padding:2px 8px;border-bottom:1px solid #e5e7eb;"
            "text-align:right}th{background:#f3f4f6}img{max-width:100%}"
            "figure{margin:1em 0}figcaption,.caption{color:#4b5563;font-size:12px}"
            "pre{background:#f9fafb;padding:0.8em;font-size:12px}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    (staging / "report.html").write_text(page)


def write_report(results: str | Path, out: str | Path | None = None, predict: bool = True,
                 n_permutations: int = 200, workers: int = 1, **load_kwargs) -> Path:
    """Write the report of the study in ``results`` to ``out`` (default
    ``<results>/report``); returns the path of report.html. ``load_kwargs`` go to
    :func:`attnvar.analysis.hypotheses.load` (deviations from the plan are reported as
    such). ``workers``: processes computing the tables and rendering the figures (the
    same report, byte for byte)."""
    res = load(results, **load_kwargs)
    findings = run_all(res, predict=predict, n_permutations=n_permutations, workers=workers)
    out = Path(out) if out is not None else res.path / REPORT_DIR
    staging = new_staging_dir(out)
    try:
        _write_files(staging, res, findings, workers)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_dir(staging, out)
    return out / "report.html"


__all__ = ["REPORT_DIR", "WITHHELD", "WITHHELD_CONTROL", "banners", "build_blocks",
           "compliance", "controls_table", "summary_table", "write_report"]
