"""Every number of the H1–H4 analysis recomputed by hand on a synthetic results directory.

No model runs here: a seeded synthetic study (12 prompts — three matched pairs, one
prompt whose partner is not in the study and five single prompts over five categories —
θ 0.1 and 0.2, isolated and visible, one ``generate`` run per cell with a ``serial`` and
a ``top_only`` replay) is written as the study and its analysis would write it:
``study.json``, ``preregistration.json`` and ``tables/*.parquet``. The effects carry real
signal (structure, mode, θ, proportion of parallel steps, query step, token class) plus
noise. One cell's serial replay has no primary estimate, so one matched pair is lost in
one condition, and one cell has no closed-class estimate.

Each test reads the parquet tables itself and recomputes the analysis with numpy, scipy
and statsmodels only (never attnvar's stats functions), then compares with what
:mod:`attnvar.analysis.hypotheses` reports: to 1e-8, the random-slope mixed model to
1e-6 and REML τ² to 1e-6 (maximised here by a bounded scalar search).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import optimize
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from attnvar.analysis import hypotheses as hyp
from attnvar.analysis.controls import COLUMNS as POSITIVE_COLUMNS
from attnvar.analysis.controls import POSITIVE_TABLE
from attnvar.analysis.hypotheses.suite import NOT_COMPUTED
from attnvar.analysis.hypotheses.temporal import RANDOM_SLOPE
from attnvar.analysis.metrics.profiles import MAX_STEPS_GRID
from attnvar.analysis.per_cell import TABLE_NAMES
from attnvar.study import preregistration
from attnvar.study.store import STUDY_FILE, TABLES

TOL = 1e-8
TOL_MIXED = 1e-6
SEED = 20240607

# ---- the synthetic study ------------------------------------------------------------------------
# id, category, structure, pair
PROMPTS = (
    ("pair_a_incomplete", "narrative", "incomplete", "pair_a"),
    ("pair_a_complete", "narrative", "complete", "pair_a"),
    ("pair_b_incomplete", "factual", "incomplete", "pair_b"),
    ("pair_b_complete", "factual", "complete", "pair_b"),
    ("pair_c_incomplete", "code", "incomplete", "pair_c"),
    ("pair_c_complete", "code", "complete", "pair_c"),
    ("pair_d_incomplete", "dialogue", "incomplete", "pair_d"),  # its partner is not here
    ("single_1", "narrative", "complete", None),
    ("single_2", "factual", "incomplete", None),
    ("single_3", "list", "complete", None),
    ("single_4", "list", "incomplete", None),
    ("single_5", "list", "complete", None),
)
THRESHOLDS = (0.1, 0.2)
MODES = ("isolated", "visible")
POLICY = "mixture"
QUERY_STEPS = np.arange(2, 10)  # every cell has the same query steps (balanced H1)
CLASSES = ("piece:word_initial", "piece:continuation", "piece:punctuation",
           "word:closed_class", "word:open_class", "rank:0", "rank:1plus")
CLASS_SHIFT = {"word:closed_class": -0.08, "word:open_class": 0.03}
FLAGS = ("tail_loop", "seq_rep_4", "zlib_ratio", "distinct_1", "distinct_2",
         "entropy_collapse")
# The serial replay of this cell has no primary estimate (pair_b lost there, complete side).
NO_REPLAY_ESTIMATE = ("pair_b_complete", 0.2, "visible")
# The generated run of this cell has no closed-class estimate (no such parallel key).
NO_CLOSED_CLASS = ("single_3", 0.1, "isolated")


def _phase(step: int, num_steps: int) -> str:
    return ("early", "middle", "late")[min(3 * step // num_steps, 2)]


def _build_study(root: Path, seed: int = SEED) -> None:
    """Write a synthetic results directory (study.json, preregistration, every table)."""
    rng = np.random.default_rng(seed)
    ids = [p[0] for p in PROMPTS]
    level = {p: rng.normal(-0.12, 0.07) for p in ids}
    theta_slope = {p: rng.normal(-0.8, 0.6) for p in ids}
    step_level = {(p, m): rng.normal(-0.02, 0.05) for p in ids for m in MODES}
    step_slope = {(p, m): rng.normal(-0.012 if m == "isolated" else -0.004, 0.025)
                  for p in ids for m in MODES}
    runs, metrics, steps, trunc, classes, distance, terms, deg = ([] for _ in range(8))
    n_cell = 0
    for pid, category, structure, pair in PROMPTS:
        for theta in THRESHOLDS:
            for mode in MODES:
                cell = f"cell_{n_cell:02d}"
                n_cell += 1
                n_steps = int(rng.choice([10, 12]))
                par = int(rng.integers(2, n_steps - 2))
                grid = dict(prompt_id=pid, category=category, structure=structure, pair=pair,
                            threshold=theta, mode=mode, policy=POLICY, seed=0)
                summary = dict(steps=n_steps, parallel_steps=par,
                               mean_width=float(rng.uniform(2.0, 3.5)),
                               mean_entropy=float(rng.uniform(1.0, 3.0)),
                               bracketed=f"synthetic text of {pid}")
                runs.append(dict(run_id=cell, parent_id=None, kind="generate",
                                 encoding=f"shared_{mode}", **grid, **summary))
                for enc in ("serial", "top_only"):
                    runs.append(dict(run_id=f"{cell}_{enc}", parent_id=cell, kind="replay",
                                     encoding=enc, **grid, **summary))
                effect = (level[pid] - 0.06 * (structure == "incomplete")
                          + 0.05 * (mode == "visible") + theta_slope[pid] * (theta - 0.15)
                          - 0.3 * (par / n_steps - 0.4) + rng.normal(0, 0.03))
                # metrics: the primary metric (M1 distance-matched, sinks excluded) and two
                # decoys the analysis must not read (sinks included, M1 plain).
                base = rng.normal(-0.05, 0.04)
                primary = {"generated": base + effect, "serial": base}
                if (pid, theta, mode) == NO_REPLAY_ESTIMATE:
                    primary["serial"] = math.nan
                for source in ("generated", "serial"):
                    for variant, sinks, est in (("distance_matched", True, primary[source]),
                                                ("distance_matched", False, rng.normal()),
                                                ("plain", True, rng.normal())):
                        metrics.append(dict(
                            cell_id=cell, source=source, prompt=pid, metric="M1",
                            variant=variant, sinks_excluded=sinks, layer=-1, head=-1,
                            term="parallel", scale="log", estimate=est,
                            se=float(rng.uniform(0.01, 0.05)), n_queries=int(n_steps - 1),
                            n_pairs=200, n_parallel_pairs=40))
                # steps: the per-step contrast; "all" keys of distance-matched M1 carry the
                # temporal signal, everything else is noise.
                for key_phase in ("all", "early", "middle", "late"):
                    for s in QUERY_STEPS:
                        for variant in ("distance_matched", "plain"):
                            ser = rng.normal(-0.05, 0.05)
                            if key_phase == "all" and variant == "distance_matched":
                                eff_s = (step_level[pid, mode] + step_slope[pid, mode] * (s - 5.5)
                                         + rng.normal(0, 0.02))
                            else:
                                eff_s = rng.normal(-0.05, 0.1)
                            for source, est in (("generated", ser + eff_s), ("serial", ser)):
                                steps.append(dict(
                                    cell_id=cell, source=source, variant=variant,
                                    key_phase=key_phase, query_step=int(s),
                                    query_phase=_phase(int(s), n_steps), estimate=est,
                                    n_queries=int(rng.integers(1, 4)), n_heads=9))
                # truncated: T of the grid below the run's length, and the whole run.
                for T in sorted({t for t in MAX_STEPS_GRID if t < n_steps} | {n_steps}):
                    for variant in ("distance_matched", "plain"):
                        ser = rng.normal(-0.05, 0.05)
                        eff_t = effect * T / n_steps + rng.normal(0, 0.03)
                        for source, est in (("generated", ser + eff_t), ("serial", ser)):
                            trunc.append(dict(cell_id=cell, source=source, variant=variant,
                                              max_steps=int(T), estimate=est,
                                              se=float(rng.uniform(0.01, 0.05))))
                for klass in CLASSES:
                    for variant in ("distance_matched", "plain"):
                        ser = rng.normal(-0.03, 0.05)
                        eff_c = effect + CLASS_SHIFT.get(klass, 0.0) + rng.normal(0, 0.04)
                        for source, est in (("generated", ser + eff_c), ("serial", ser)):
                            missing = ((pid, theta, mode) == NO_CLOSED_CLASS
                                       and klass == "word:closed_class"
                                       and source == "generated")
                            classes.append(dict(
                                cell_id=cell, source=source, variant=variant, **{"class": klass},
                                estimate=math.nan if missing else est,
                                se=math.nan if missing else float(rng.uniform(0.01, 0.08)),
                                n_parallel_keys=0 if missing else int(rng.integers(1, 9)),
                                n_other_keys=int(rng.integers(5, 30))))
                for source in ("generated", "serial"):
                    for kind in ("parallel", "non_parallel"):
                        for d in (1.0, 2.0, 3.0, 4.0):
                            distance.append(dict(cell_id=cell, source=source, set=kind,
                                                 distance=d, mean_score=rng.normal(0, 0.3),
                                                 n_pairs=int(rng.integers(1, 40))))
                for term in ("parallel", "closed_class", "log_distance", "spline_0"):
                    terms.append(dict(cell_id=cell, source="generated", prompt=pid,
                                      metric="M2", variant="pooled", layer=-1, head=-1,
                                      term=term, scale="log", estimate=rng.normal(-0.1, 0.2),
                                      se=float(rng.uniform(0.01, 0.05))))
                deg.append(dict(cell_id=cell, analysable=True,
                                **{f"flag_{f}": False for f in FLAGS}, excluded=False))
    tables = {
        "runs": pd.DataFrame(runs), "metrics": pd.DataFrame(metrics),
        "terms": pd.DataFrame(terms), "steps": pd.DataFrame(steps),
        "truncated": pd.DataFrame(trunc), "classes": pd.DataFrame(classes),
        "distance": pd.DataFrame(distance),
        "placebo": pd.DataFrame(columns=["cell_id", "variant", "draw", "n_labelled",
                                         "estimate"]),
        "degeneracy": pd.DataFrame(deg),
        POSITIVE_TABLE: pd.DataFrame(columns=POSITIVE_COLUMNS),
    }
    assert set(tables) == {"runs", *TABLE_NAMES, POSITIVE_TABLE}
    (root / TABLES).mkdir(parents=True)
    for name, frame in tables.items():
        frame.to_parquet(root / TABLES / f"{name}.parquet", index=False)
    description = {
        "prompts": [dict(id=p, text=f"synthetic prompt {p}", category=c, structure=s, pair=q)
                    for p, c, s, q in PROMPTS],
        "thresholds": list(THRESHOLDS), "modes": list(MODES), "policies": [POLICY],
        "replays": ["serial", "top_only"], "seeds": [0], "sample": False, "max_steps": 12,
        "max_width": 4, "capture": None, "model_path": "synthetic-model.gguf",
        "min_new_steps": 4,
    }
    plan = preregistration.Preregistration()
    preregistration.write(root, plan, description)
    (root / STUDY_FILE).write_text(json.dumps({**description, "preregistration": plan.plan()},
                                              indent=1))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_study")
    _build_study(root)
    res = hyp.load(root)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hyp.compute_all(res, predict=False)
    print(f"\ncompute_all on the synthetic study: {time.perf_counter() - start:.1f} s")
    skipped = {k: v.facts["not_computed"] for k, v in out.items()
               if NOT_COMPUTED in v.facts}
    print(f"sections not computed (not checked here): {skipped or 'none'}")
    return root, res, out


# ---- recomputation by hand ----------------------------------------------------------------------
def _read(root: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(root / TABLES / f"{name}.parquet")


def _plan(root: Path) -> dict:
    return json.loads((root / preregistration.PREREGISTRATION_FILE).read_text())["plan"]


def _cells(root: Path) -> pd.DataFrame:
    """The kept generated runs with their grid values and run summary."""
    runs = _read(root, "runs")
    gen = runs[runs["kind"] == "generate"].rename(columns={"run_id": "cell_id"})
    deg = _read(root, "degeneracy")
    kept = set(deg.loc[~deg["excluded"].astype(bool), "cell_id"])
    gen = gen[gen["cell_id"].isin(kept)].copy()
    gen["proportion_parallel"] = gen["parallel_steps"] / gen["steps"]
    return gen[["cell_id", "prompt_id", "category", "structure", "pair", "mode", "threshold",
                "policy", "steps", "parallel_steps", "mean_width", "proportion_parallel"]]


def _difference(frame: pd.DataFrame, keys: list[str], with_se: bool = False) -> pd.DataFrame:
    """generated − serial per ``keys`` (rows where either is missing dropped)."""
    wide = frame.set_index([*keys, "source"])["estimate"].unstack("source")
    out = pd.DataFrame({"generated": wide["generated"], "serial": wide["serial"]})
    out["effect"] = out["generated"] - out["serial"]
    if with_se:
        se = frame.set_index([*keys, "source"])["se"].unstack("source")
        out["effect_se"] = np.hypot(se["generated"], se["serial"])
    return out.dropna(subset=["effect"]).reset_index()


def _primary_effects(root: Path) -> pd.DataFrame:
    m = _read(root, "metrics")
    rows = m[(m["metric"] == "M1") & (m["variant"] == "distance_matched")
             & m["sinks_excluded"].astype(bool) & (m["layer"] == -1) & (m["head"] == -1)]
    return _cells(root).merge(_difference(rows, ["cell_id"], with_se=True), on="cell_id")


def _profile(root: Path, table: str) -> pd.DataFrame:
    t = _read(root, table)
    return t[t["variant"] == "distance_matched"]


def _pct(x):
    return 100.0 * (1.0 - np.exp(x))


def _t_summary(frame: pd.DataFrame, by: list[str], value: str, unit: str, alpha: float,
               correction: str) -> pd.DataFrame:
    """Per group of ``by`` with at least two units: values averaged per unit, one-sample t
    test (scipy), the correction across groups (statsmodels multipletests), % columns."""
    per_unit = frame.groupby([*by, unit])[value].mean().reset_index()
    per_unit = per_unit[per_unit.groupby(by)[unit].transform("nunique") >= 2]
    rows = []
    for key, g in per_unit.groupby(by):
        v = g[value].to_numpy(float)
        t = sps.ttest_1samp(v, 0.0)
        ci = t.confidence_interval(1 - alpha)
        rows.append({**dict(zip(by, key, strict=True)), "n": v.size, "mean": v.mean(),
                     "sd": v.std(ddof=1), "ci_low": ci.low, "ci_high": ci.high,
                     "p": t.pvalue})
    out = pd.DataFrame(rows)
    method = {"holm": "holm", "bh": "fdr_bh"}[correction]
    out["reject"], out["p_adj"] = multipletests(out["p"], alpha=alpha, method=method)[:2]
    out["mean_pct"] = _pct(out["mean"])
    out["ci_pct_low"] = _pct(out["ci_high"])
    out["ci_pct_high"] = _pct(out["ci_low"])
    return out


def _mde(n: int, sd: float, alpha: float, power: float = 0.8) -> float:
    """The smallest mean the two-sided one-sample t test detects with ``power``: the root
    in d of P(T > t_c) + P(T < −t_c) = power, T ~ nct(n − 1, d·√n/sd)."""
    df = n - 1
    tc = sps.t.ppf(1 - alpha / 2, df)

    def power_at(d):
        nc = d * math.sqrt(n) / sd
        return sps.nct.sf(tc, df, nc) + sps.nct.cdf(-tc, df, nc)

    hi = sd
    while power_at(hi) < power:
        hi *= 2
    assert np.isfinite(power_at(hi))
    return optimize.brentq(lambda d: power_at(d) - power, 0.0, hi, xtol=1e-15)


def _diff(got, want) -> float:
    got = np.asarray(got, dtype=float)
    want = np.asarray(want, dtype=float)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    ok = ~np.isnan(want)
    return float(np.max(np.abs(got[ok] - want[ok]), initial=0.0))


def _check(label: str, got, want, tol: float = TOL) -> float:
    d = _diff(got, want)
    print(f"{label}: max |diff| {d:.1e}")
    assert d < tol, (label, d)
    return d


def _check_frame(label: str, got: pd.DataFrame, want: pd.DataFrame, keys: list[str],
                 cols: list[str], exact: tuple[str, ...] = (), tol: float = TOL) -> float:
    """Same rows (by ``keys``), ``cols`` within ``tol`` and ``exact`` columns equal."""
    assert len(got) == len(want), (label, len(got), len(want))
    assert not want.duplicated(keys).any() and not got.duplicated(keys).any()
    both = want[[*keys, *cols, *exact]].merge(got[[*keys, *cols, *exact]], on=keys,
                                              suffixes=("_want", "_got"), how="left",
                                              indicator=True)
    assert (both["_merge"] == "both").all(), (label, both[both["_merge"] != "both"])
    for c in exact:
        assert (both[f"{c}_want"].to_numpy() == both[f"{c}_got"].to_numpy()).all(), (label, c)
    worst = max(_diff(both[f"{c}_got"], both[f"{c}_want"]) for c in cols)
    print(f"{label}: {len(want)} rows, max |diff| {worst:.1e}")
    assert worst < tol, (label, worst)
    return worst


SUMMARY_COLS = ["mean", "sd", "ci_low", "ci_high", "p", "p_adj", "mean_pct", "ci_pct_low",
                "ci_pct_high"]


def _reml_tau2(y: np.ndarray, v: np.ndarray) -> float:
    """τ² maximising the REML log-likelihood of the random-effects model, over τ² ≥ 0."""

    def neg_loglik(tau2):
        w = 1.0 / (v + tau2)
        mu = np.sum(w * y) / np.sum(w)
        return 0.5 * (np.sum(np.log(v + tau2)) + np.log(np.sum(w)) + np.sum(w * (y - mu) ** 2))

    upper = 10.0 * (np.var(y) + v.max())
    fit = optimize.minimize_scalar(neg_loglik, bounds=(0.0, upper), method="bounded",
                                   options={"xatol": 1e-13, "maxiter": 2000})
    # the maximum may lie on the boundary τ² = 0
    return 0.0 if neg_loglik(0.0) <= fit.fun else float(fit.x)


# ---- the tests -----------------------------------------------------------------------------------
def test_nothing_the_hypotheses_need_is_missing(study):
    root, res, out = study
    for name in ("primary", "H1", "H2", "H3", "H4", "family"):
        assert NOT_COMPUTED not in out[name].facts, (name, out[name].facts)
    assert res.design == "replay" and not res.deviations()
    fam = out["family"].tables["family"]
    assert sorted(zip(fam["hypothesis"], fam["mode"], strict=True)) == [
        (h, m) for h in ("H1", "H2", "H3", "H4") for m in MODES]


def test_primary_effects_summary_and_distance_by_hand(study):
    root, res, out = study
    alpha = _plan(root)["alpha"]
    eff = _primary_effects(root)
    prim = out["primary"]
    e = eff.assign(effect_pct=_pct(eff["effect"]),
                   effect_pct_low=_pct(eff["effect"] + 1.96 * eff["effect_se"]),
                   effect_pct_high=_pct(eff["effect"] - 1.96 * eff["effect_se"]))
    _check_frame("primary effects", prim.tables["effects"], e, ["cell_id"],
                 ["generated", "effect", "effect_se", "effect_pct", "effect_pct_low",
                  "effect_pct_high"])
    assert len(e) == len(_cells(root)) - 1  # the cell without a replay estimate
    want = _t_summary(eff, ["mode", "threshold", "policy"], "effect", "prompt_id", alpha,
                      "holm")
    _check_frame("primary summary (t, Holm over conditions)", prim.tables["summary"], want,
                 ["mode", "threshold", "policy"], SUMMARY_COLS, exact=("n", "reject"))
    # the primary rows beside the family: one per condition, on the % scale
    tests = out["primary"].tests
    want = want.sort_values(["mode", "threshold", "policy"])
    assert list(tests["mode"]) == list(want["mode"]) and list(tests["n"]) == list(want["n"])
    _check("primary test rows (%, CI, p, sd)",
           tests[["estimate", "ci_low", "ci_high", "p", "pct", "pct_low", "pct_high", "sd"]],
           want[["mean_pct", "ci_pct_low", "ci_pct_high", "p", "mean_pct", "ci_pct_low",
                 "ci_pct_high", "sd"]])
    # the distance profile: pair-weighted means per mode, source, set and distance
    d = _read(root, "distance").merge(_cells(root)[["cell_id", "mode"]], on="cell_id")
    d = d[d["distance"] <= 40]
    g = d.assign(w=d["mean_score"] * d["n_pairs"]).groupby(
        ["mode", "source", "set", "distance"])[["w", "n_pairs"]].sum().reset_index()
    g["mean_score"] = g["w"] / g["n_pairs"]
    _check_frame("primary distance profile", prim.tables["distance"], g,
                 ["mode", "source", "set", "distance"], ["mean_score"], exact=("n_pairs",))


def test_primary_meta_analysis_hksj_and_reml_by_hand(study):
    root, res, out = study
    alpha = _plan(root)["alpha"]
    eff = _primary_effects(root)
    meta = out["primary"].tables["meta"]
    assert len(meta) == eff.groupby(["mode", "threshold", "policy"]).ngroups
    worst_tau, worst = 0.0, 0.0
    for (mode, theta, policy), g in eff.groupby(["mode", "threshold", "policy"]):
        row = meta[(meta["mode"] == mode) & (meta["threshold"] == theta)
                   & (meta["policy"] == policy)]
        assert len(row) == 1
        row = row.iloc[0]
        y = g["effect"].to_numpy(float)
        v = g["effect_se"].to_numpy(float) ** 2
        k = y.size
        assert row["k"] == k and row["metric"] == "M1 distance_matched"
        tau2 = float(row["tau2"])
        worst_tau = max(worst_tau, abs(_reml_tau2(y, v) - tau2))
        w = 1.0 / (v + tau2)
        mu = np.sum(w * y) / np.sum(w)
        se = math.sqrt(1.0 / np.sum(w))
        q = np.sum(w * (y - mu) ** 2) / (k - 1)
        se_hk = math.sqrt(max(1.0, q) / np.sum(w))
        tk = sps.t.ppf(1 - alpha / 2, k - 1)
        z = sps.norm.ppf(1 - alpha / 2)
        w0 = 1.0 / v
        q_fe = np.sum(w0 * (y - np.sum(w0 * y) / np.sum(w0)) ** 2)
        half_pi = sps.t.ppf(1 - alpha / 2, k - 2) * math.sqrt(tau2 + se**2)
        want = {"mu": mu, "ci_low": mu - tk * se_hk, "ci_high": mu + tk * se_hk,
                "p": 2 * sps.t.sf(abs(mu / se_hk), k - 1), "z_ci_low": mu - z * se,
                "z_ci_high": mu + z * se, "z_p": 2 * sps.norm.sf(abs(mu / se)),
                "I2": 100 * max(0.0, (q_fe - (k - 1)) / q_fe),
                "pi_low": mu - half_pi, "pi_high": mu + half_pi, "mu_pct": _pct(mu),
                "ci_pct_low": _pct(mu + tk * se_hk), "ci_pct_high": _pct(mu - tk * se_hk),
                "pi_pct_low": _pct(mu + half_pi), "pi_pct_high": _pct(mu - half_pi)}
        for col, value in want.items():
            worst = max(worst, abs(float(row[col]) - value))
        assert tau2 > 0  # the synthetic prompts differ by more than their sampling error
    print(f"meta-analysis τ² vs REML maximum by hand: max |diff| {worst_tau:.1e}")
    print(f"meta-analysis HKSJ μ, CI, p, normal CI, I², PI given τ²: max |diff| {worst:.1e}")
    assert worst_tau < 1e-6 and worst < TOL


def _step_effects(root: Path) -> pd.DataFrame:
    st = _profile(root, "steps")
    d = _difference(st, ["cell_id", "key_phase", "query_step", "query_phase"])
    return _cells(root).merge(d, on="cell_id")


def test_h1_slopes_reversals_profile_and_mixed_model_by_hand(study):
    root, res, out = study
    alpha = _plan(root)["alpha"]
    h1 = out["H1"]
    se = _step_effects(root)
    allk = se[se["key_phase"] == "all"]
    # balanced: every cell has the same query steps
    assert allk.groupby("cell_id")["query_step"].apply(tuple).nunique() == 1
    slopes = pd.DataFrame(
        [{"cell_id": c, "prompt_id": p, "mode": m,
          "slope": np.polyfit(g["query_step"].to_numpy(float), g["effect"].to_numpy(float),
                              1)[0]}
         for (c, p, m), g in allk.groupby(["cell_id", "prompt_id", "mode"])])
    _check_frame("H1 per-cell OLS slopes", h1.tables["slopes"], slopes, ["cell_id"],
                 ["slope"], exact=("prompt_id", "mode"))
    want = _t_summary(slopes, ["mode"], "slope", "prompt_id", alpha, "holm")
    _check_frame("H1 slope summary (t over prompts, Holm)", h1.tables["slope_summary"], want,
                 ["mode"], ["mean", "sd", "ci_low", "ci_high", "p", "p_adj"],
                 exact=("n", "reject"))
    # phases as the steps table labels them (query_phase), keys over all phases
    for name, frame, col in (("by_query_phase", allk, "query_phase"),
                             ("by_key_phase", se[se["key_phase"] != "all"], "key_phase")):
        want = _t_summary(frame, ["mode", col], "effect", "prompt_id", alpha, "bh")
        _check_frame(f"H1 {name} (t, BH)", h1.tables[name], want, ["mode", col],
                     SUMMARY_COLS, exact=("n", "reject"))
    # reversals: early and late means with ±1.96·sd/√n excluding 0 with opposite signs
    rev = []
    for c, g in allk.groupby("cell_id"):
        row = {"cell_id": c}
        for ph in ("early", "late"):
            v = g.loc[g["query_phase"] == ph, "effect"].to_numpy(float)
            half = 1.96 * v.std(ddof=1) / math.sqrt(v.size)
            row.update({ph: v.mean(), f"{ph}_low": v.mean() - half,
                        f"{ph}_high": v.mean() + half})
        row["reversal"] = bool((row["early_low"] > 0 > row["late_high"])
                               or (row["early_high"] < 0 < row["late_low"]))
        rev.append(row)
    rev = pd.DataFrame(rev)
    _check_frame("H1 reversals (early/late means and CIs)", h1.tables["reversals"], rev,
                 ["cell_id"], ["early", "early_low", "early_high", "late", "late_low",
                               "late_high"], exact=("reversal",))
    assert h1.facts == {"reversals": int(rev["reversal"].sum()), "runs": len(rev)}
    assert 0 < h1.facts["reversals"] < len(rev)  # both kinds occur in the synthetic data
    print(f"H1 reversals: {h1.facts['reversals']} of {len(rev)} runs")
    # the profile: per mode and query step, mean over cells with a 95 % normal CI
    prof = allk.groupby(["mode", "query_step"])["effect"].agg(["mean", "std", "count"])
    prof = prof.reset_index()
    half = 1.96 * prof["std"] / np.sqrt(prof["count"])
    prof = prof.assign(mean_pct=_pct(prof["mean"]), low_pct=_pct(prof["mean"] + half),
                       high_pct=_pct(prof["mean"] - half))
    _check_frame("H1 profile", h1.tables["profile"], prof, ["mode", "query_step"],
                 ["mean", "std", "mean_pct", "low_pct", "high_pct"], exact=("count",))
    # the mixed model: refit MixedLM with a random intercept and slope by prompt
    mixed = h1.tables["mixed"].set_index("mode")
    assert list(mixed.index) == list(MODES)
    worst, worst_closed = 0.0, 0.0
    for mode, sub in allk.groupby("mode"):
        r = mixed.loc[mode]
        assert r["model"] == RANDOM_SLOPE and bool(r["converged"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = smf.mixedlm("effect ~ query_step", sub, groups=sub["prompt_id"],
                              re_formula="~query_step").fit(reml=True)
        lo, hi = fit.conf_int(alpha).loc["query_step"]
        want = [fit.fe_params["query_step"], fit.bse_fe["query_step"],
                fit.pvalues["query_step"], lo, hi]
        got = [r["estimate"], r["se"], r["p"], r["ci_low"], r["ci_high"]]
        worst = max(worst, _diff(got, want))
        assert r["n_prompts"] == sub["prompt_id"].nunique() and r["n_obs"] == len(sub)
        # balanced design, random effects spanned by the fixed ones: the GLS slope is the
        # mean of the per-prompt OLS slopes, whatever the variance components
        per_prompt = [np.polyfit(g["query_step"].to_numpy(float), g["effect"].to_numpy(float),
                                 1)[0] for _, g in sub.groupby("prompt_id")]
        worst_closed = max(worst_closed, abs(r["estimate"] - np.mean(per_prompt)))
        s = h1.tables["slope_summary"].set_index("mode").loc[mode, "mean"]
        worst_closed = max(worst_closed, abs(s - np.mean(per_prompt)))
    print(f"H1 mixed model vs MixedLM refit: max |diff| {worst:.1e}")
    print(f"H1 mixed slope vs mean of per-prompt OLS slopes: max |diff| {worst_closed:.1e}")
    assert worst < TOL_MIXED and worst_closed < TOL_MIXED


def test_balanced_mixedlm_slope_is_the_mean_of_per_group_ols_slopes():
    """The closed form H1's mixed model obeys: with every group observed at the same x and
    random effects spanned by the fixed ones (intercept, or intercept and slope), the GLS
    fixed slope is OLS on the mean response, i.e. the mean of the per-group OLS slopes,
    for any variance components (REML or ML)."""
    rng = np.random.default_rng(7)
    x = np.arange(6.0)
    frame = pd.DataFrame([{"g": f"g{g}", "x": xi, "y": a + b * xi + rng.normal(0, 0.3)}
                          for g, (a, b) in enumerate(zip(rng.normal(0, 1, 5),
                                                         rng.normal(0.3, 0.2, 5), strict=True))
                          for xi in x])
    per_group = [np.polyfit(s["x"], s["y"], 1)[0] for _, s in frame.groupby("g")]
    worst = 0.0
    for re_formula in ("~x", None):
        for reml in (True, False):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = smf.mixedlm("y ~ x", frame, groups=frame["g"],
                                  re_formula=re_formula).fit(reml=reml)
            worst = max(worst, abs(fit.fe_params["x"] - np.mean(per_group)))
    print(f"balanced MixedLM slope vs mean per-group OLS slope: max |diff| {worst:.1e}")
    assert worst < TOL_MIXED


def test_h2_pairs_paired_test_kruskal_and_lost_pairs_by_hand(study):
    root, res, out = study
    alpha = _plan(root)["alpha"]
    h2 = out["H2"]
    eff = _primary_effects(root)
    cond = ["mode", "threshold", "policy"]
    paired = eff[eff["pair"].notna()]
    rows = []
    for key, g in paired.groupby(["pair", *cond]):
        s = g.set_index("structure")["effect"]
        if {"incomplete", "complete"} <= set(s.index):
            rows.append({**dict(zip(["pair", *cond], key, strict=True)),
                         "incomplete": s["incomplete"], "complete": s["complete"],
                         "difference": s["incomplete"] - s["complete"]})
    pairs = pd.DataFrame(rows)
    assert len(pairs) == 3 * len(THRESHOLDS) * len(MODES) - 1  # one lost
    _check_frame("H2 pairs", h2.tables["pairs"], pairs, ["pair", *cond],
                 ["incomplete", "complete", "difference"])
    want = _t_summary(pairs, ["mode"], "difference", "pair", alpha, "holm")
    _check_frame("H2 paired (t over pairs, Holm)", h2.tables["paired"], want, ["mode"],
                 SUMMARY_COLS, exact=("n", "reject"))
    kw = []
    for mode, g in eff.groupby("mode"):
        per_prompt = g.groupby(["category", "prompt_id"])["effect"].mean()
        groups = [v.to_numpy() for _, v in per_prompt.groupby(level="category") if len(v) >= 2]
        h, p = sps.kruskal(*groups)
        kw.append({"mode": mode, "H": h, "p": p, "categories": len(groups)})
    kw = pd.DataFrame(kw)
    assert (kw["categories"] == 4).all()  # dialogue has one prompt
    _check_frame("H2 Kruskal–Wallis over categories", h2.tables["kruskal"], kw, ["mode"],
                 ["H", "p"], exact=("categories",))
    want = _t_summary(eff, ["mode", "category"], "effect", "prompt_id", alpha, "bh")
    assert set(want["category"]) == {"narrative", "factual", "code", "list"}  # not dialogue
    _check_frame("H2 categories (t, BH)", h2.tables["categories"], want,
                 ["mode", "category"], SUMMARY_COLS, exact=("n", "reject"))
    # the matched pairs: both versions among the study's prompts
    prompts = json.loads((root / STUDY_FILE).read_text())["prompts"]
    sides: dict = {}
    for p in prompts:
        if p["pair"] is not None:
            sides.setdefault(p["pair"], {})[p["structure"]] = p["id"]
    matched = {k: v for k, v in sides.items() if set(v) == {"incomplete", "complete"}}
    have = set(zip(eff["prompt_id"], eff["mode"], eff["threshold"], strict=True))
    lost = []
    for mode in MODES:
        for theta in THRESHOLDS:
            c = {"pairs": 0, "analysed": 0, "lost_incomplete": 0, "lost_complete": 0,
                 "lost_both": 0}
            for v in matched.values():
                inc = (v["incomplete"], mode, theta) in have
                comp = (v["complete"], mode, theta) in have
                c["pairs"] += 1
                c[{(True, True): "analysed", (True, False): "lost_complete",
                   (False, True): "lost_incomplete", (False, False): "lost_both"}[inc, comp]] += 1
            lost.append({"mode": mode, "threshold": theta, "policy": POLICY, **c,
                         "lost": c["pairs"] - c["analysed"]})
    lost = pd.DataFrame(lost)
    counts = ["pairs", "analysed", "lost_incomplete", "lost_complete", "lost_both", "lost"]
    _check_frame("H2 pairs lost", h2.tables["pairs_lost"], lost, cond, counts)
    assert h2.facts == {"pairs_lost": int(lost["lost"].sum()),
                        "pairs_planned": int(lost["pairs"].sum())}
    assert h2.facts["pairs_lost"] == 1


def test_h3_closed_minus_open_classes_and_terms_by_hand(study):
    root, res, out = study
    alpha = _plan(root)["alpha"]
    h3 = out["H3"]
    ce = _cells(root).merge(_difference(_profile(root, "classes"), ["cell_id", "class"]),
                            on="cell_id")
    _check_frame("H3 class effects", h3.tables["class_effects"], ce, ["cell_id", "class"],
                 ["generated", "effect"])
    want = _t_summary(ce, ["mode", "class"], "effect", "prompt_id", alpha, "bh")
    _check_frame("H3 classes (t, BH)", h3.tables["classes"], want, ["mode", "class"],
                 SUMMARY_COLS, exact=("n", "reject"))
    wide = ce.set_index(["cell_id", "prompt_id", "mode", "class"])["effect"].unstack("class")
    cvo = (wide["word:closed_class"] - wide["word:open_class"]).dropna()
    cvo = cvo.rename("closed_minus_open").reset_index()
    assert len(cvo) == len(_cells(root)) - 1  # the cell without a closed-class estimate
    want = _t_summary(cvo, ["mode"], "closed_minus_open", "prompt_id", alpha, "holm")
    _check_frame("H3 closed − open (t, Holm)", h3.tables["closed_vs_open"], want, ["mode"],
                 SUMMARY_COLS, exact=("n", "reject"))
    terms = _read(root, "terms")
    terms = terms[(terms["variant"] == "pooled") & ~terms["term"].str.startswith("spline")]
    terms = terms.merge(_cells(root)[["cell_id", "prompt_id", "mode"]], on="cell_id")
    want = _t_summary(terms, ["mode", "term"], "estimate", "prompt_id", alpha, "bh")
    _check_frame("H3 M2 terms (t, BH)", h3.tables["terms"], want, ["mode", "term"],
                 ["mean", "sd", "ci_low", "ci_high", "p", "p_adj"], exact=("n",))


def test_h4_threshold_dose_association_and_steps_dose_by_hand(study):
    root, res, out = study
    alpha = _plan(root)["alpha"]
    h4 = out["H4"]
    eff = _primary_effects(root)
    dose = []
    for (p, m), g in eff.groupby(["prompt_id", "mode"]):
        per = g.groupby("threshold")["effect"].mean()
        if len(per) >= 2:
            dose.append({"prompt_id": p, "mode": m,
                         "slope": np.polyfit(per.index.to_numpy(float), per.to_numpy(), 1)[0]})
    dose = pd.DataFrame(dose)
    want = _t_summary(dose, ["mode"], "slope", "prompt_id", alpha, "holm")
    _check_frame("H4 slope over θ (t over prompts, Holm)", h4.tables["threshold_dose"], want,
                 ["mode"], ["mean", "sd", "ci_low", "ci_high", "p", "p_adj"],
                 exact=("n", "reject"))
    assert h4.facts == {"thresholds": len(THRESHOLDS)}
    want = _t_summary(eff, ["mode", "threshold"], "effect", "prompt_id", alpha, "bh")
    _check_frame("H4 by θ (t, BH)", h4.tables["by_threshold"], want, ["mode", "threshold"],
                 SUMMARY_COLS, exact=("n", "reject"))
    assoc = []
    for mode, g in eff.groupby("mode"):
        per = g.groupby("prompt_id")[["effect", "proportion_parallel", "parallel_steps",
                                      "mean_width"]].mean()
        for cov in ("proportion_parallel", "parallel_steps", "mean_width"):
            fit = sps.linregress(per[cov].to_numpy(float), per["effect"].to_numpy(float))
            n = len(per)
            half = sps.t.ppf(0.975, n - 2) * fit.stderr
            assoc.append({"mode": mode, "covariate": cov, "slope": fit.slope,
                          "ci_low": fit.slope - half, "ci_high": fit.slope + half,
                          "p": fit.pvalue, "n": n})
    _check_frame("H4 association (OLS across prompts)", h4.tables["association"],
                 pd.DataFrame(assoc), ["mode", "covariate"],
                 ["slope", "ci_low", "ci_high", "p"], exact=("n",))
    # steps dose: per cell and T of the grid, the longest truncation of the run within T
    tr = _difference(_profile(root, "truncated"), ["cell_id", "max_steps"])
    longest = int(tr["max_steps"].max())
    grid = sorted({t for t in MAX_STEPS_GRID if t < longest} | {longest})
    rows = []
    for cell, g in tr.groupby("cell_id"):
        for T in grid:
            within = g[g["max_steps"] <= T]
            if len(within):
                rows.append({"cell_id": cell, "max_steps": T,
                             "effect": within.loc[within["max_steps"].idxmax(), "effect"]})
    sd = _cells(root).merge(pd.DataFrame(rows), on="cell_id")
    assert set(sd["max_steps"]) == set(grid) and len(grid) >= 3
    want = _t_summary(sd, ["mode", "max_steps"], "effect", "prompt_id", alpha, "bh")
    _check_frame("H4 steps dose (t, BH)", h4.tables["steps_dose"], want,
                 ["mode", "max_steps"], ["mean", "sd", "ci_low", "ci_high", "p", "p_adj"],
                 exact=("n", "reject"))


def _family_by_hand(root: Path) -> pd.DataFrame:
    """The H1–H4 rows (one per hypothesis and mode), recomputed from the tables alone."""
    alpha = _plan(root)["alpha"]
    eff = _primary_effects(root)
    rows = []

    def add(hypothesis, summary, unit, step):
        for r in summary.to_dict("records"):
            if unit == "%":
                est, lo, hi = r["mean_pct"], r["ci_pct_low"], r["ci_pct_high"]
                pct, pct_low, pct_high = est, lo, hi
            else:
                est, lo, hi = r["mean"], r["ci_low"], r["ci_high"]
                pct, pct_low, pct_high = _pct(step * est), _pct(step * hi), _pct(step * lo)
            rows.append({"hypothesis": hypothesis, "mode": r["mode"], "unit": unit,
                         "estimate": est, "ci_low": lo, "ci_high": hi, "p": r["p"],
                         "n": r["n"], "sd": r["sd"], "pct": pct, "pct_low": pct_low,
                         "pct_high": pct_high, "step": step})

    allk = _step_effects(root)
    allk = allk[allk["key_phase"] == "all"]
    slopes = pd.DataFrame([{"prompt_id": p, "mode": m, "slope": np.polyfit(
        g["query_step"].to_numpy(float), g["effect"].to_numpy(float), 1)[0]}
        for (_, p, m), g in allk.groupby(["cell_id", "prompt_id", "mode"])])
    add("H1", _t_summary(slopes, ["mode"], "slope", "prompt_id", alpha, "holm"),
        "log units per step", 1.0)
    paired = eff[eff["pair"].notna()]
    wide = paired.pivot_table(index=["pair", "mode", "threshold"], columns="structure",
                              values="effect").dropna()
    diff = (wide["incomplete"] - wide["complete"]).rename("d").reset_index()
    add("H2", _t_summary(diff, ["mode"], "d", "pair", alpha, "holm"), "%", 1.0)
    ce = _cells(root).merge(_difference(_profile(root, "classes"), ["cell_id", "class"]),
                            on="cell_id")
    w = ce.set_index(["cell_id", "prompt_id", "mode", "class"])["effect"].unstack("class")
    cvo = (w["word:closed_class"] - w["word:open_class"]).dropna().rename("d").reset_index()
    add("H3", _t_summary(cvo, ["mode"], "d", "prompt_id", alpha, "holm"), "%", 1.0)
    per = eff.groupby(["prompt_id", "mode", "threshold"])["effect"].mean().reset_index()
    dose = pd.DataFrame([{"prompt_id": p, "mode": m, "slope": np.polyfit(
        g["threshold"].to_numpy(float), g["effect"].to_numpy(float), 1)[0]}
        for (p, m), g in per.groupby(["prompt_id", "mode"]) if len(g) >= 2])
    add("H4", _t_summary(dose, ["mode"], "slope", "prompt_id", alpha, "holm"),
        "log units per unit θ", 0.1)
    fam = pd.DataFrame(rows)
    fam["reject"], fam["p_adj"] = multipletests(fam["p"], alpha=alpha, method="holm")[:2]
    fam["mde"] = [_mde(int(n), float(s), alpha) for n, s in zip(fam["n"], fam["sd"],
                                                                  strict=True)]
    fam["mde_pct"] = _pct(-fam["mde"] * fam["step"])
    return fam


def test_family_rows_and_holm_over_h1_to_h4_by_hand(study):
    root, res, out = study
    fam = out["family"].tables["family"]
    want = _family_by_hand(root)
    _check_frame("family rows (estimate, CI, p, sd, % scale) and Holm", fam, want,
                 ["hypothesis", "mode"],
                 ["estimate", "ci_low", "ci_high", "p", "sd", "pct", "pct_low", "pct_high",
                  "p_adj"], exact=("unit", "n", "reject"))
    # the family as the suite builds it from the hypothesis tables is the same table
    again = hyp.family({k: out[k] for k in ("H1", "H2", "H3", "H4")}, res)
    pd.testing.assert_frame_equal(again, fam)


def test_mde_is_the_exact_noncentral_t_root(study):
    """The power figures: the smallest mean the two-sided t test detects with 80 % power,
    solved here with scipy's noncentral t and brentq — the primary summary's ``mde_pct``,
    the primary test rows' and every family row's ``mde`` (native units: log units, per
    step or per unit θ for slopes) and ``mde_pct`` (on the row's % scale)."""
    root, res, out = study
    alpha = _plan(root)["alpha"]
    summary = out["primary"].tables["summary"]
    mde = np.array([_mde(int(n), float(s), alpha)
                    for n, s in zip(summary["n"], summary["sd"], strict=True)])
    want_fam = _family_by_hand(root)
    fam = out["family"].tables["family"].merge(want_fam, on=["hypothesis", "mode"],
                                               suffixes=("", "_want"))
    prim_tests = out["primary"].tests
    diffs = {
        "primary summary mde_pct": _diff(summary["mde_pct"], _pct(-mde)),
        "primary test rows mde": _diff(prim_tests["mde"], mde),
        "primary test rows mde_pct": _diff(prim_tests["mde_pct"], _pct(-mde)),
        "family mde": _diff(fam["mde"], fam["mde_want"]),
        "family mde_pct": _diff(fam["mde_pct"], fam["mde_pct_want"]),
    }
    for label, d in diffs.items():
        print(f"{label}: max |diff| {d:.1e}")
    rel = np.abs(fam["mde"] / fam["mde_want"] - 1)
    print(f"family mde: max relative error {rel.max():.1e} "
          f"({' '.join(fam.loc[rel.idxmax(), ['hypothesis', 'mode']])})")
    assert max(diffs.values()) < TOL, diffs
