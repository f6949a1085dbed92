"""Study analysis, hypotheses H1–H4, the preregistration and the report (issue #10).

One small study of the bundled model (3 matched pairs, θ 0.1 and 0.2, isolated and
visible, 8 steps, serial and top_only replays) is run once per module; the profile
functions are checked against plain loops on the synthetic toy view.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import warnings
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from attnvar import hypotheses, load_run, preregistration, prompts, report
from attnvar.analysis import TABLE_NAMES, analyze_study, load_tables
from attnvar.analysis import hypotheses as compute
from attnvar.analysis.toy_null import toy_view
from attnvar.metrics import count_pairs, find_sinks, score_contrast
from attnvar.metrics.profiles import (
    class_contrasts,
    distance_profile,
    key_classes,
    phase_of,
    step_profile,
)
from attnvar.report import document
from attnvar.study import Study, replay_key

PERMUTATIONS = 19


# ---- profiles against loops --------------------------------------------------------------------
def _loop_delta(s, inc, lab, q):
    """Per-head δ of query row q: mean over P keys − mean over N keys, or None."""
    p = [s[k] for k in range(len(lab)) if inc[q, k] and lab[k]]
    n = [s[k] for k in range(len(lab)) if inc[q, k] and not lab[k]]
    return (np.mean(p) - np.mean(n)) if p and n else None


def test_step_profile_and_phases_equal_plain_loops():
    view = toy_view(np.random.default_rng(3), steps=12, heads=2)
    pairs = count_pairs(view)
    prof = step_profile(pairs, variants=("plain",))
    s = pairs.values("scores").numpy()
    inc = pairs.include.numpy()
    n_steps = int(view.step.max()) + 1
    key_phase = phase_of(pairs.key_step, n_steps)
    checked = 0
    for phase_name, keep in [("all", None), ("early", 0), ("middle", 1), ("late", 2)]:
        for t in np.unique(pairs.query_step):
            head_means = []
            for h in range(2):
                vals = []
                for q in np.flatnonzero(pairs.query_step == t):
                    incq = inc[0, h].copy()
                    if keep is not None:
                        incq &= (key_phase == keep)[None, :]
                    d = _loop_delta(s[0, h, q], incq, pairs.key_parallel, q)
                    if d is not None:
                        vals.append(d)
                if vals:
                    head_means.append(np.mean(vals))
            row = prof[(prof["key_phase"] == phase_name) & (prof["query_step"] == t)]
            if not head_means:
                assert row.empty
                continue
            assert len(row) == 1
            diff = abs(row["estimate"].iloc[0] - np.mean(head_means))
            assert diff < 1e-10, (phase_name, t, diff)
            checked += 1
    print(f"step profile: {checked} (phase, step) cells equal the loops (tol 1e-10)")
    assert checked > 10
    assert set(prof["query_phase"]) <= {"early", "middle", "late"}


def test_class_contrast_and_distance_profile_equal_plain_loops():
    view = toy_view(np.random.default_rng(5), steps=14, heads=1)
    pairs = count_pairs(view)
    table = class_contrasts(pairs, variants=("plain",)).set_index("class")
    s = pairs.values("scores").numpy()[0, 0]
    inc = pairs.include.numpy()[0, 0]
    classes = key_classes(pairs)
    compared = 0
    for name, keys in classes.items():
        per_step = {}
        for q in range(len(pairs.query_slots)):
            d = _loop_delta(s[q], inc & keys[None, :], pairs.key_parallel, q)
            if d is not None:
                per_step.setdefault(pairs.query_step[q], []).append(d)
        if per_step:
            expected = np.mean([np.mean(v) for v in per_step.values()])
            assert abs(table.loc[name, "estimate"] - expected) < 1e-10, name
            compared += 1
        else:
            assert np.isnan(table.loc[name, "estimate"])
    assert compared >= 2
    dist = distance_profile(pairs)
    sums: dict = {}
    for q in range(len(pairs.query_slots)):
        ks = np.flatnonzero(inc[q])
        if ks.size == 0:
            continue
        mean = s[q, ks].mean()
        for k in ks:
            key = (round(float(pairs.distance[q, k]), 3), bool(pairs.key_parallel[k]))
            sums.setdefault(key, []).append(s[q, k] - mean)
    for r in dist.itertuples(index=False):
        vals = sums[(r.distance, r.set == "parallel")]
        assert r.n_pairs == len(vals) and abs(r.mean_score - np.mean(vals)) < 1e-10
    assert len(dist) == len(sums)


def _dummy_ols(pairs, head, include, step_effects, klass=None):
    """The distance-matched fit of one head as ordinary least squares with explicit
    dummies (statsmodels, no within transform): query dummies, one dummy per logical
    distance but one, and the parallel indicator — one per query step when
    ``step_effects``; with ``klass`` (a key mask), the class indicator and the parallel
    indicator within the class — over the included pairs. Returns ({column name:
    coefficient}, full rank)."""
    import statsmodels.api as sm

    s = pairs.values("scores").numpy()[0, head]
    qi, ki = np.nonzero(include)
    d = np.round(pairs.distance[qi, ki], 6)
    cols = {}
    for q in np.unique(qi):
        cols[f"q{q}"] = (qi == q).astype(float)
    levels = sorted(set(d))
    for lev in levels[1:]:
        cols[f"d{lev}"] = (d == lev).astype(float)
    par = pairs.key_parallel[ki].astype(float)
    if step_effects:
        for t in np.unique(pairs.query_step[qi]):
            col = par * (pairs.query_step[qi] == t)
            if col.any():
                cols[f"t{t}"] = col
    elif klass is not None:
        cols["class"] = klass[ki].astype(float)
        cols["parallel"] = par * klass[ki]
    else:
        cols["parallel"] = par
    x = pd.DataFrame(cols)
    fit = sm.OLS(s[qi, ki], x).fit()
    rank = np.linalg.matrix_rank(x.to_numpy())
    return fit.params.to_dict(), rank == x.shape[1]


def test_distance_matched_profiles_equal_dummy_variable_regressions():
    """Per query step, per truncation T and per token class, the distance-matched δ equals
    the parallel coefficient(s) of an explicit-dummy OLS fit (statsmodels) of that head."""
    from attnvar.metrics.profiles import truncated_contrasts

    view = toy_view(np.random.default_rng(11), steps=14, heads=2)
    pairs = count_pairs(view)
    inc = pairs.include.numpy()[0]
    prof = step_profile(pairs, phases=False, variants=("distance_matched",))
    per_head = []
    for h in range(2):
        coefs, full_rank = _dummy_ols(pairs, h, inc[h], step_effects=True)
        assert full_rank
        per_head.append(coefs)
    worst, checked = 0.0, 0
    for r in prof.itertuples(index=False):
        expected = np.mean([c[f"t{r.query_step}"] for c in per_head])
        worst = max(worst, abs(r.estimate - expected))
        checked += 1
    assert checked >= 8 and worst < 1e-8, worst
    trunc = truncated_contrasts(pairs, grid=(4, 8), variants=("distance_matched",))
    for r in trunc.itertuples(index=False):
        keep = (pairs.query_step < r.max_steps)[:, None]
        expected = np.mean([_dummy_ols(pairs, h, inc[h] & keep, False)[0]["parallel"]
                            for h in range(2)])
        worst = max(worst, abs(r.estimate - expected))
    assert set(trunc["max_steps"]) == {4, 8, int(view.step.max()) + 1}
    classes = class_contrasts(pairs, variants=("distance_matched",)).set_index("class")
    compared = 0
    for name, keys in key_classes(pairs).items():
        est = classes.loc[name, "estimate"]
        if not np.isfinite(est):
            continue
        fits = [_dummy_ols(pairs, h, inc[h], False, klass=keys) for h in range(2)]
        if all(ok for _, ok in fits):
            worst = max(worst, abs(est - np.mean([c["parallel"] for c, _ in fits])))
            compared += 1
    print(f"distance-matched profiles vs dummy OLS: {checked} steps, {len(trunc)} "
          f"truncations, {compared} classes, max |diff| {worst:.2e}")
    assert compared >= 2 and worst < 1e-8, worst


# ---- the study -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study_dir(bundled_path, tmp_path_factory):
    items = [p for p in prompts.suite("core") if p.pair][:6]
    study = Study(prompts=items, thresholds=[0.1, 0.2], modes=["isolated", "visible"],
                  replays=["serial", "top_only"], max_steps=8, model_path=str(bundled_path))
    out = tmp_path_factory.mktemp("study")
    study.run(out, progress=False)
    analyze_study(out, progress=False)
    return out


@pytest.fixture(scope="module")
def findings(study_dir):
    res = hypotheses.load(study_dir)
    return res, hypotheses.run_all(res, n_permutations=PERMUTATIONS)


def test_analysis_tables_resume_and_rebuild_identically(study_dir):
    tables = load_tables(study_dir)
    gen = tables["runs"][tables["runs"]["kind"] == "generate"]
    assert set(tables["degeneracy"]["cell_id"]) == set(gen["run_id"])
    assert {"cell_id", "source", "metric", "variant", "estimate"} <= set(tables["metrics"].columns)
    adir = study_dir / "analysis"
    victim = gen["run_id"].iloc[0]
    for name in TABLE_NAMES:
        (adir / f"{victim}.{name}.parquet").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in adir.glob("*.parquet")}
    redone = []
    again = analyze_study(study_dir, progress=False, on_cell=redone.append)
    assert redone == [victim]  # only the missing cell was recomputed
    after = {p.name: p.stat().st_mtime_ns for p in adir.glob("*.parquet")}
    assert all(after[k] == v for k, v in before.items())
    for name in TABLE_NAMES:
        pd.testing.assert_frame_equal(again[name], tables[name], check_dtype=False)


def test_primary_effect_is_the_metric_difference_of_generated_and_serial_replay(study_dir):
    res = hypotheses.load(study_dir, apply_exclusions=False)
    eff = hypotheses.effects(res).set_index("cell_id")
    runs_dir = study_dir / "runs"
    worst, compared = 0.0, 0
    for cell in eff.index[:4]:
        gen = load_run(runs_dir / cell)
        rep = load_run(runs_dir / replay_key(cell, "serial"))
        sinks = find_sinks(load_run(runs_dir / replay_key(cell, "top_only")))
        rows = [score_contrast(r, distance_matched=True, sinks=sinks, exclude_sinks=True)
                for r in (gen, rep)]
        vals = [float(t[(t["layer"] < 0)]["estimate"].iloc[0]) for t in rows]
        worst = max(worst, abs(eff.loc[cell, "effect"] - (vals[0] - vals[1])))
        compared += 1
    print(f"primary effect vs direct M1 difference: max diff {worst:.2e} over {compared} cells")
    assert compared == 4 and worst < 1e-12


DOCUMENTED = {
    "primary": {"effects": ["prompt_id", "generated", "replayed", "effect", "effect_se",
                            "effect_pct", "effect_pct_low", "effect_pct_high"],
                "summary": ["mode", "threshold", "n", "mean_pct", "ci_pct_low", "ci_pct_high",
                            "p", "p_adj", "equivalent"],
                "meta": ["mode", "metric"],
                "distance": ["mode", "source", "set", "distance", "mean_score", "n_pairs"]},
    "H1": {"by_query_phase": ["mode", "query_phase", "mean_pct", "p_adj"],
           "by_key_phase": ["mode", "key_phase", "mean_pct"],
           "slopes": ["cell_id", "prompt_id", "mode", "slope"],
           "slope_summary": ["mode", "mean", "ci_low", "ci_high", "p"],
           "reversals": ["early", "late", "reversal"]},
    "H2": {"pairs": ["pair", "incomplete", "complete", "difference"],
           "paired": ["mode", "n", "mean_pct", "p"], "categories": ["category", "mean_pct"],
           "kruskal": ["mode", "H", "p"]},
    "H3": {"classes": ["mode", "class", "mean_pct", "reject"],
           "closed_vs_open": ["mode", "mean_pct", "p"], "terms": ["mode", "term", "mean"]},
    "H4": {"association": ["mode", "covariate", "slope", "p"],
           "threshold_dose": ["mode", "mean", "p"],
           "by_threshold": ["mode", "threshold", "mean_pct"],
           "steps_dose": ["mode", "max_steps", "mean_pct"]},
    "predictability": {"summary": ["mode", "cv_r2", "sign_acc", "baseline_acc", "p_r2"]},
    "robustness": {"specifications": ["metric", "variant", "estimand", "design", "mean_pct",
                                      "primary"]},
    "heads": {"heads": ["mode", "layer", "head", "mean_pct", "p_adj", "reject"]},
    "degeneracy": {"rates": ["mode", "threshold", "excluded"], "excluded": ["cell_id"]},
    "dataset": {"dataset": ["mode", "threshold", "prompts", "runs", "excluded"]},
}


def test_every_hypothesis_function_returns_its_documented_tables(findings):
    res, out = findings
    for name, tables in DOCUMENTED.items():
        f = out[name]
        for table, cols in tables.items():
            assert table in f.tables, (name, table)
            missing = set(cols) - set(f.tables[table].columns)
            assert not missing, (name, table, missing)
        assert f.answer, name
    fam = out["family"].tables["family"]
    # H1–H4 × 2 modes, Holm: adjusted p never below the raw one, monotone in it.
    assert set(fam["hypothesis"]) == {"H1", "H2", "H3", "H4"} and len(fam) == 8
    assert (fam["p_adj"] >= fam["p"] - 1e-15).all()
    order = np.argsort(fam["p"].to_numpy())
    assert np.all(np.diff(fam["p_adj"].to_numpy()[order]) >= -1e-15)
    # The specification curve includes the preregistered specification exactly once per mode.
    spec = out["robustness"].tables["specifications"]
    # Only rows of the primary metric's estimand are counted as its alternatives.
    assert set(spec.loc[spec["metric"].isin(["M1p", "M4"]), "estimand"]) <= {"position effect"}
    assert "of the same estimand (attention contrast)" in out["robustness"].answer
    assert spec.groupby("mode")["primary"].sum().eq(1).all()
    prim = out["primary"].tables["summary"].iloc[0]
    assert prim["ci_pct_low"] <= prim["mean_pct"] <= prim["ci_pct_high"]
    # H2 pairs: the difference column is incomplete − complete.
    p = out["H2"].tables["pairs"]
    assert np.allclose(p["difference"], p["incomplete"] - p["complete"])
    print("primary:", out["primary"].answer)


def test_tables_come_from_the_analysis_and_the_findings_only_add_words(findings):
    """Each finding's tables and family rows are exactly the analysis function's (computed
    apart from figures and prose), and its answer quotes those numbers."""
    res, out = findings
    computed = compute.compute_all(res, n_permutations=PERMUTATIONS)
    assert list(computed) == list(out)
    for name, t in computed.items():
        assert isinstance(t, compute.HypothesisTables) and not hasattr(t, "figures")
        assert set(t.tables) == set(out[name].tables), name
        for table, frame in t.tables.items():
            pd.testing.assert_frame_equal(frame, out[name].tables[table], check_exact=False,
                                          rtol=1e-12, obj=f"{name}.{table}")
        pd.testing.assert_frame_equal(t.tests, out[name].tests, obj=f"{name}.tests")
    # The words are written from the tables: the primary answer quotes each condition's
    # mean and n, H1's its reversal count, the degeneracy answer its exclusion count.
    for s in computed["primary"].tables["summary"].to_dict("records"):
        assert f"{s['mean_pct']:+.1f} %" in out["primary"].answer
        assert f"over {s['n']} prompts" in out["primary"].answer
    h1 = computed["H1"].facts
    assert f"{h1['reversals']} of {h1['runs']} runs" in out["H1"].answer
    deg = computed["degeneracy"].facts
    assert f"{deg['excluded']} of {deg['runs']} runs" in out["degeneracy"].answer
    assert deg["runs"] == len(res.cells())
    assert deg["excluded"] == int(res.cells()["excluded"].sum())


class _StrictHTML(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <img .../>: nothing to close
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_report_renders_and_its_numbers_are_the_functions_numbers(study_dir, findings):
    res, out = findings
    html_path = report.write_report(study_dir, n_permutations=PERMUTATIONS)
    parser = _StrictHTML()
    parser.feed(html_path.read_text())
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    n_figures = sum(len(f.figures) for f in out.values())
    assert len(parser.images) == n_figures >= 8
    assert all(src.startswith("data:image/png;base64,") and len(src) > 1000
               for src in parser.images)
    md = html_path.with_suffix(".md").read_text()
    rdir = html_path.parent
    figs = sorted((rdir / "figures").glob("*.png"))
    assert len(figs) == n_figures and all(f.stat().st_size > 1000 for f in figs)
    for f in figs:
        assert f"(figures/{f.name})" in md
    # Every table the report wrote equals the table the functions return.
    for key, f in out.items():
        for name, table in f.tables.items():
            if len(table) == 0:
                continue
            path = rdir / "tables" / f"{document._slug(key)}__{document._slug(name)}.csv"
            written = pd.read_csv(path)
            num = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])
                   and not pd.api.types.is_bool_dtype(table[c])]
            np.testing.assert_allclose(written[num].to_numpy(float),
                                       table[num].to_numpy(float), rtol=1e-12, equal_nan=True,
                                       err_msg=f"{key}/{name}")
    # The primary table in the Markdown shows the summary's numbers.
    for v in out["primary"].tables["summary"]["mean_pct"]:
        assert f"| {document._cell(v)} |" in md
    assert "followed** its preregistration" in md
    # The summary at the top reads the same findings: primary rows, then the family.
    top = report.summary_table(out)
    prim, fam = out["primary"].tables["summary"], out["family"].tables["family"]
    assert len(top) == len(prim) + len(fam)
    np.testing.assert_allclose(top["estimate"], np.r_[prim["mean_pct"], fam["pct"]])
    np.testing.assert_allclose(top["p_adj"], np.r_[prim["p_adj"], fam["p_adj"]])
    for answer in (out[k].answer for k in ("primary", "H1", "H2", "H3", "H4")):
        assert answer in md


def test_preregistration_is_fixed_checked_and_deviations_are_reported(study_dir, tmp_path):
    rec = preregistration.load(study_dir)
    changed = preregistration.Preregistration(metric="M2", variant="pooled")
    with pytest.raises(ValueError, match=r"different plan.*metric"):
        preregistration.write(study_dir, changed, {})
    with pytest.raises(ValueError, match="variant"):
        preregistration.Preregistration(metric="M1", variant="pooled")
    with pytest.raises(ValueError, match="unknown flags"):
        preregistration.Preregistration(exclusion={"always": ["nonsense"]})
    res = hypotheses.load(study_dir, metric="M1", variant="plain")
    comp = report.compliance(res)
    assert not comp["followed"]
    assert any("variant: planned 'distance_matched'" in d for _, ok, d in comp["checks"] if not ok)
    # An edited plan no longer matches its hash.
    copy = tmp_path / "copy"
    copy.mkdir()
    edited = dict(rec, plan={**rec["plan"], "alpha": 0.1})
    (copy / preregistration.PREREGISTRATION_FILE).write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="does not match its recorded hash"):
        preregistration.load(copy)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "attnvar", *args], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=600)


def test_cli_hypotheses_errors_are_one_line(tmp_path):
    proc = _cli("hypotheses", str(tmp_path / "missing"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a study results directory" in lines[0]
    assert _cli("hypotheses", "--help").returncode == 0


@pytest.mark.parametrize("steps", [[], [[" mat"]], [[" mat", " floor"]]])
def test_metrics_of_a_run_without_counted_pairs_are_nan_not_errors(bundled_path, steps):
    import attnvar as av
    from attnvar.metrics import analyze

    model = av.load_model(bundled_path)
    run = model.replay(av.Tree.build(model, "The cat sat on the", steps), "shared_isolated",
                       capture=av.Capture(scores=True))
    table = analyze(run)  # fewer than two steps: no query later than a key
    assert len(table) and not np.isfinite(table["estimate"]).any()


def test_a_toml_study_carries_its_preregistration(tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text('prompts = ["The cat sat on the"]\nreplays = ["serial"]\n'
                   '[preregistration]\nmetric = "M2"\nvariant = "pooled"\n'
                   'notes = "H: parallel keys get lower odds"\n')
    study = Study.from_file(cfg)
    assert study.preregistration.metric == "M2" and study.preregistration.variant == "pooled"
    assert study.describe_with_plan()["preregistration"]["notes"].startswith("H:")
    cfg.write_text('prompts = ["x"]\n[preregistration]\nmetric = "M9"\n')
    with pytest.raises(ValueError, match="M9"):
        Study.from_file(cfg)


def test_a_tiny_study_gets_a_report_that_says_what_it_could_not_compute(bundled_path,
                                                                         tmp_path):
    """One prompt, four steps: every analysis that needs two prompts says so; no
    exception (the CLI used to stop with a scipy error in the per-head tests)."""
    study = Study(prompts=prompts.suite("core-small")[:1], thresholds=[0.1],
                  modes=["isolated"], replays=["serial", "top_only"], max_steps=4,
                  model_path=str(bundled_path))
    study.run(tmp_path, progress=False)
    analyze_study(tmp_path, progress=False)
    md = report.write_report(tmp_path, n_permutations=PERMUTATIONS).with_suffix(".md")
    text = md.read_text()
    assert "Too few prompts for a test" in text
    assert "No per-head rows" in text and "not estimable" in text
    assert "+nan" not in text and "nan %" not in text


def test_an_analysis_the_data_do_not_allow_is_reported_not_raised(findings, monkeypatch):
    """The safety net: an analysis that fails on the study's data comes back with the
    reason, and the report's finding says it was not computed and why."""
    res, _ = findings
    fam_module = importlib.import_module("attnvar.analysis.hypotheses.suite")

    def broken(res, **kw):
        raise ValueError("only one prompt in every group")

    monkeypatch.setattr(fam_module, "h4_context", broken)
    out = compute.compute_all(res, predict=False)
    assert out["H4"].facts["not_computed"] == "ValueError: only one prompt in every group"
    shown = hypotheses.present(out["H4"], res)
    assert shown.answer.startswith("Not computed for this study: ValueError")
    assert "H4" not in set(out["family"].tests.get("hypothesis", []))


def test_m0_beside_the_published_claims_recomputed_by_hand(findings):
    """The report's prototype section: M0 legacy over the kept generated runs, summarised
    as the prototype did (mean ± population SD, paired t on the raw means), beside the
    published figures, each labelled with its model and mechanism."""
    from scipy import stats as sps

    res, out = findings
    f = out["prototype"]
    m = res.tables["metrics"]
    legacy = m[(m.metric == "M0") & (m.variant == "legacy") & (m.layer < 0)
               & (m.source == "generated")]
    kept = res.kept_cells().merge(legacy, on="cell_id")
    for row in f.tables["m0"].to_dict("records"):
        g = kept[(kept["mode"] == row["mode"]) & (kept["threshold"] == row["threshold"])]
        g = g[np.isfinite(g["estimate"])]
        v = g["estimate"].to_numpy(float)
        assert row["prompts"] == len(v)
        assert row["mean_pct"] == pytest.approx(v.mean(), abs=1e-9)
        assert row["sd_pct"] == pytest.approx(np.sqrt(((v - v.mean()) ** 2).mean()), abs=1e-9)
        t = sps.ttest_rel(g["mean_nonparallel"], g["mean_parallel"])
        assert row["t"] == pytest.approx(t.statistic, rel=1e-9)
        assert f"{row['mean_pct']:+.1f} % ± {row['sd_pct']:.1f}" in f.answer
    pub = f.tables["published"]
    assert list(pub["mean_pct"]) == [-12.1, -2.8] and pub["model"].str.contains("3B").all()
    assert "not a like-for-like comparison" in f.answer and f.facts["model"] in f.answer


def test_power_and_smoke_test_banners_and_withheld_verdicts(findings):
    from dataclasses import replace

    res, out = findings
    summary = out["primary"].tables["summary"]
    table = document.summary_table(out)
    prim_rows = table[table["question"].str.startswith("primary")]
    assert np.allclose(prim_rows["mde"].to_numpy(float), summary["mde_pct"].to_numpy(float),
                       equal_nan=True)
    text = "\n".join(document.banners(res, out))
    worst = float(summary["mde_pct"].max())
    assert ("**Underpowered.**" in text) == (worst > res.plan["tost_margin_pct"])
    assert "Smoke test" not in text and document.WITHHELD not in set(table["verdict"])
    # The core-small suite is the smoke test: verdicts withheld, and the banner says why.
    from attnvar.analysis.hypotheses.checks import is_smoke_test

    assert is_smoke_test({"prompts": [{"id": p.id} for p in prompts.suite("core-small")]})
    assert not is_smoke_test(res.study)
    smoke = dict(out, dataset=replace(out["dataset"], facts={**out["dataset"].facts,
                                                             "smoke_test": True}))
    assert set(document.summary_table(smoke)["verdict"]) == {document.WITHHELD}
    assert document.banners(res, smoke)[0].startswith("**Smoke test.**")


def test_phases_read_in_time_order_and_slopes_get_no_equivalence_test(findings):
    res, out = findings
    for name, col in (("by_query_phase", "query_phase"), ("by_key_phase", "key_phase")):
        table = out["H1"].tables[name]
        for _, g in table.groupby("mode"):
            order = [p for p in ("early", "middle", "late") if p in set(g[col])]
            assert list(g[col]) == order, (name, list(g[col]))
    # ±10 % equivalence is defined for effects, not for slopes or coefficients.
    for finding, table in (("H1", "slope_summary"), ("H4", "threshold_dose"), ("H3", "terms")):
        t = out[finding].tables[table]
        if len(t):
            assert t["equivalent"].isna().all() and t["p_tost"].isna().all(), (finding, table)
    assert out["primary"].tables["summary"]["equivalent"].notna().all()


def test_every_planned_run_is_accounted_for(findings):
    """Per condition the accounting adds up to the grid's planned runs, and 'analysed' is
    exactly the primary test's n; the other columns are counted from the tables by hand."""
    from attnvar.analysis.hypotheses.checks import STATUSES

    res, out = findings
    acc = out["dataset"].tables["accounting"]
    assert (acc[["missing", *STATUSES[1:]]].sum(axis=1) == acc["planned"]).all()
    assert (acc["planned"] == len(res.study["prompts"])).all()
    summary = out["primary"].tables["summary"]
    deg = res.tables["degeneracy"].merge(res.cells()[["cell_id", "mode", "threshold"]],
                                         on="cell_id")
    for row in acc.to_dict("records"):
        s = summary[(summary["mode"] == row["mode"]) & (summary["threshold"] == row["threshold"])]
        assert row["analysed"] == (int(s["n"].iloc[0]) if len(s) else 0)
        d = deg[(deg["mode"] == row["mode"]) & (deg["threshold"] == row["threshold"])]
        assert row["stopped before a measurable query"] == int((~d["analysable"]).sum())
        assert row["excluded as degenerate"] == int((d["analysable"] & d["excluded"]).sum())


def test_h1_mixed_model_is_a_random_slope_sensitivity_analysis(findings):
    """The mixed model beside H1's verdict has a random slope for the step by prompt
    (statsmodels fitted directly here gives the same estimate), and the answer calls it a
    sensitivity analysis."""
    import statsmodels.formula.api as smf

    from attnvar.analysis.hypotheses.temporal import RANDOM_SLOPE, step_effects

    res, out = findings
    allk = step_effects(res)
    allk = allk[allk["key_phase"] == "all"]
    mixed = out["H1"].tables["mixed"]
    assert len(mixed) and "Sensitivity analysis, not the verdict" in out["H1"].answer
    for row in mixed.to_dict("records"):
        sub = allk[allk["mode"] == row["mode"]]
        if row["model"] == RANDOM_SLOPE:
            with warnings.catch_warnings():  # the package silences statsmodels' too
                warnings.simplefilter("ignore")
                fit = smf.mixedlm("effect ~ query_step", sub, groups=sub["prompt_id"],
                                  re_formula="~query_step").fit(reml=True)
            assert row["estimate"] == pytest.approx(fit.fe_params["query_step"], abs=1e-6)
        else:
            assert "did not converge" in row["note"]


def test_the_summary_speaks_one_scale(findings):
    """Family rows carry their % form (a slope b per unit x is 100·(1 − e^{b·Δx}) % per
    Δx, CI ends swapped) and the summary shows only % reductions with their step."""
    res, out = findings
    fam = out["family"].tables["family"]
    step = {"log units per step": 1.0, "log units per unit θ": 0.1,
            "log units per unit proportion": 0.1}
    for r in fam.to_dict("records"):
        if r["unit"] == "%":
            assert (r["pct"], r["pct_low"], r["pct_high"]) == (r["estimate"], r["ci_low"],
                                                                r["ci_high"])
        else:
            d = step[r["unit"]]
            assert r["pct"] == pytest.approx(100 * (1 - math.exp(d * r["estimate"])))
            assert r["pct_low"] == pytest.approx(100 * (1 - math.exp(d * r["ci_high"])))
        assert r["supports"] == "≠ 0 (two-sided test)"
    table = document.summary_table(out)
    assert table["unit"].str.startswith("% reduction").all()
    assert (table["supports the hypothesis if"] == "≠ 0 (two-sided test)").all()
