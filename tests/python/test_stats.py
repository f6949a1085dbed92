"""attnvar.stats against scipy/statsmodels and against cases worked by hand (numbers in
the comments)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from attnvar import stats as S

# Six differences worked by hand. |d| ranks: 0.5→1, 1.0→2, 1.5→3, 2.0→4, 2.5→5, 3.5→6.
# T⁺ = 3+4+5+6 = 18, T⁻ = 1+2 = 3, r_rb = (18−3)/21 = 0.7142857.
# Exact null for n = 6 (64 sign patterns): #{T⁺ ≤ 3} = 5 ({}, {1}, {2}, {3}, {1,2}),
# so two-sided p = 2·5/64 = 0.15625.
# The 21 Walsh averages sorted: −1, −.75, −.5, .25, .5, .5, .75, .75, 1, 1.25, 1.5, 1.5,
# 1.75, 2, 2, 2.25, 2.5, 2.5, 2.75, 3, 3.5 → HL = 11th = 1.5.
# 95 %: P(T⁺ ≤ 0) = 1/64 ≤ .025 < P(T⁺ ≤ 1) = 2/64 → k = 1 → [−1, 3.5], level 62/64.
# 80 %: P(T⁺ ≤ 3) = 5/64 ≤ .10 < P(T⁺ ≤ 4) = 7/64 → k = 4 → [W(4), W(18)] = [.25, 2.5],
# level 1 − 10/64 = 0.84375.
SIX = [1.5, -0.5, 2.0, 3.5, -1.0, 2.5]


def test_wilcoxon_by_hand():
    w = S.wilcoxon_signed_rank(SIX)
    assert (w["t_plus"], w["t_minus"]) == (18.0, 3.0)
    assert w["r_rb"] == pytest.approx(15 / 21)
    assert w["p"] == pytest.approx(10 / 64)
    assert w["p"] == pytest.approx(sst.wilcoxon(SIX, method="exact").pvalue)
    assert w["hl"] == 1.5
    assert (w["hl_ci_low"], w["hl_ci_high"]) == (-1.0, 3.5)
    assert w["ci_level"] == pytest.approx(62 / 64)
    h = S.hodges_lehmann(SIX, alpha=0.2)
    assert (h["hl_ci_low"], h["hl_ci_high"]) == (0.25, 2.5)
    assert h["ci_level"] == pytest.approx(54 / 64)


def test_wilcoxon_with_zeros_and_ties_by_hand():
    # d = 1, −1, 2, 2, 0, 3: the zero is dropped; |d| = 1 1 2 2 3 → midranks 1.5 1.5 3.5
    # 3.5 5. T⁺ = 1.5 + 3.5 + 3.5 + 5 = 13.5, T⁻ = 1.5, r_rb = 12/15 = 0.8. With ties scipy
    # gives the p value (zeros dropped first, as here).
    d = [1.0, -1.0, 2.0, 2.0, 0.0, 3.0]
    w = S.wilcoxon_signed_rank(d)
    assert (w["n_nonzero"], w["t_plus"], w["t_minus"]) == (5, 13.5, 1.5)
    assert w["r_rb"] == pytest.approx(0.8)
    assert w["p"] == pytest.approx(sst.wilcoxon([1.0, -1.0, 2.0, 2.0, 3.0]).pvalue)
    # HL over all six differences (zero included): 21 Walsh averages, median 1.0
    i, j = np.triu_indices(6)
    assert w["hl"] == pytest.approx(np.median((np.array(d)[i] + np.array(d)[j]) / 2)) == 1.0


def test_paired_form_equals_differences():
    x = np.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0])
    y = x - np.array(SIX)
    assert S.wilcoxon_signed_rank(x, y) == S.wilcoxon_signed_rank(SIX)
    assert S.paired_t(x, y) == S.paired_t(SIX)


def test_signed_rank_null_matches_enumeration():
    n = 7
    counts = np.zeros(n * (n + 1) // 2 + 1)
    for mask in range(2**n):
        counts[sum(r + 1 for r in range(n) if mask >> r & 1)] += 1
    np.testing.assert_allclose(S.signed_rank_null(n), counts / 2**n, atol=1e-15)


def test_hl_ci_is_inversion_of_exact_wilcoxon():
    # The HL interval is the set of shifts θ the exact signed-rank test of d − θ does not
    # reject: just inside each end p > α, just outside p ≤ α (scipy's exact p).
    rng = np.random.default_rng(3)
    d = rng.normal(0.4, 1.0, size=14)
    h = S.hodges_lehmann(d, alpha=0.05)
    eps = 1e-7
    for theta, rejected in [(h["hl_ci_low"] - eps, True), (h["hl_ci_low"] + eps, False),
                            (h["hl_ci_high"] - eps, False), (h["hl_ci_high"] + eps, True)]:
        p = sst.wilcoxon(d - theta, method="exact").pvalue
        assert (p <= 0.05) == rejected, (theta, p)
    assert h["ci_level"] >= 0.95
    i, j = np.triu_indices(d.size)
    assert h["hl"] == pytest.approx(np.median((d[i] + d[j]) / 2))


def test_paired_t_against_scipy():
    rng = np.random.default_rng(0)
    d = rng.normal(0.2, 1.0, size=25)
    t = S.paired_t(d)
    ref = sst.ttest_1samp(d, 0)
    half = sst.t.ppf(0.975, 24) * d.std(ddof=1) / 5
    assert t["t"] == pytest.approx(ref.statistic)
    assert t["p"] == pytest.approx(ref.pvalue)
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))


def test_sign_flip_exact_by_hand_and_by_enumeration():
    # d = 1, 2, 3, 4: only the all-+ and all-− patterns reach |mean| ≥ 2.5 → p = 2/16.
    r = S.sign_flip_test([1, 2, 3, 4])
    assert r["exact"] and r["p"] == pytest.approx(0.125)
    rng = np.random.default_rng(5)
    d = rng.normal(0.3, 1, size=10)
    signs = np.array([[1 if m >> b & 1 else -1 for b in range(10)] for m in range(1024)])
    means = (signs * d).mean(axis=1)
    obs = d.mean()
    p_hand = min(1.0, 2 * min(np.mean(means >= obs - 1e-12), np.mean(means <= obs + 1e-12)))
    assert S.sign_flip_test(d)["p"] == pytest.approx(p_hand)


def test_sign_flip_monte_carlo_is_seeded_and_close_to_t():
    rng = np.random.default_rng(6)
    d = rng.normal(0.25, 1, size=60)
    a = S.sign_flip_test(d, n_resamples=4000, seed=1)
    b = S.sign_flip_test(d, n_resamples=4000, seed=1)
    assert not a["exact"] and a == b
    assert a["p"] == pytest.approx(S.paired_t(d)["p"], abs=0.02)


def test_bca_near_t_interval_for_normal_data_and_constant_case():
    rng = np.random.default_rng(7)
    d = rng.normal(1.0, 2.0, size=80)
    lo, hi = S.bca_ci(d, n_resamples=4000)
    t = S.paired_t(d)
    width = t["ci_high"] - t["ci_low"]
    assert abs(lo - t["ci_low"]) < 0.15 * width and abs(hi - t["ci_high"]) < 0.15 * width
    assert S.bca_ci([2.0, 2.0, 2.0, 2.0]) == (2.0, 2.0)
    # skewed data: BCa shifts right of the symmetric t interval (the mean's skew).
    e = rng.exponential(1.0, size=40)
    lo_e, hi_e = S.bca_ci(e, n_resamples=4000)
    te = S.paired_t(e)
    assert hi_e - te["mean"] > te["mean"] - lo_e


def test_bca_equals_scipy_bootstrap():
    rng = np.random.default_rng(15)
    d = rng.gamma(2.0, 1.0, size=30)
    lo, hi = S.bca_ci(d, n_resamples=3000, seed=4, alpha=0.1)
    ref = sst.bootstrap((d,), np.mean, method="BCa", n_resamples=3000, confidence_level=0.9,
                        rng=np.random.default_rng(4)).confidence_interval
    assert (lo, hi) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert np.isnan(S.bca_ci([1.0, 2.0])).all()  # n < 3


def test_hierarchical_bootstrap_by_hand():
    # Stage 1 by hand: two prompts whose queries are all 1.0 and all 3.0. A draw of two
    # prompts gives mean 1, 2 or 3 with probability 1/4, 1/2, 1/4: the 2.5 / 97.5 %
    # quantiles are 1 and 3, the SD is sqrt(1/2) = 0.7071.
    f = pd.DataFrame({"prompt_id": [0] * 4 + [1] * 4, "step": [0, 1, 2, 3] * 2,
                      "v": [1.0] * 4 + [3.0] * 4})
    h = S.hierarchical_bootstrap(f, "v", n_resamples=20000, seed=1)
    assert (h["estimate"], h["ci_low"], h["ci_high"]) == (2.0, 1.0, 3.0)
    assert h["se"] == pytest.approx(math.sqrt(0.5), abs=0.01)
    # Stage 2 by hand: one prompt, step A with one query (0), step B with three (4 each).
    # Drawing two steps: AA → 0, AB → (0 + 3·4)/4 = 3, BB → 4, probabilities 1/4, 1/2,
    # 1/4 (queries of a step stay together; the pooled query mean). Bootstrap mean 2.5,
    # SD sqrt(0.5·9 + 0.25·16 − 2.5²) = 1.5; the estimate is the pooled mean 12/4 = 3.
    g = pd.DataFrame({"prompt_id": [0] * 4, "step": [0, 1, 1, 1], "v": [0.0, 4.0, 4.0, 4.0]})
    h2 = S.hierarchical_bootstrap(g, "v", n_resamples=20000, seed=1)
    assert (h2["estimate"], h2["ci_low"], h2["ci_high"]) == (3.0, 0.0, 4.0)
    assert h2["se"] == pytest.approx(1.5, abs=0.02)


def test_hierarchical_bootstrap():
    rng = np.random.default_rng(8)
    rows = []
    for p in range(30):
        u = rng.normal(0, 1.0)  # prompt-level spread dominates
        for s in range(6):
            for _q in range(rng.integers(1, 4)):
                rows.append(dict(prompt_id=p, step=s, v=u + rng.normal(0, 0.1)))
    f = pd.DataFrame(rows)
    h = S.hierarchical_bootstrap(f, "v", n_resamples=3000, seed=2)
    unit_means = f.groupby("prompt_id")["v"].mean()
    assert h["estimate"] == pytest.approx(unit_means.mean())
    assert h["n_units"] == 30
    # ≈ the prompt-level standard error, far wider than treating queries as independent
    assert h["se"] == pytest.approx(unit_means.std(ddof=1) / math.sqrt(30), rel=0.15)
    assert h["ci_high"] - h["ci_low"] > 3 * 2 * 1.96 * f["v"].std() / math.sqrt(len(f))
    assert h["ci_low"] < h["estimate"] < h["ci_high"]
    # constant data: a zero-width interval at the value
    f2 = f.assign(v=0.5)
    h2 = S.hierarchical_bootstrap(f2, "v", n_resamples=200)
    assert h2["ci_low"] == pytest.approx(0.5) and h2["ci_high"] == pytest.approx(0.5)


def test_tost_bounds_and_p_by_hand():
    lo, hi = S.tost_bounds(10, "log")
    assert (lo, hi) == pytest.approx((math.log(0.9), math.log(1.1)))
    assert (lo, hi) == pytest.approx((-0.1053605, 0.0953102), abs=1e-7)
    assert S.pct_from_log(lo) == pytest.approx(10.0)
    assert S.pct_from_log(hi) == pytest.approx(-10.0)
    assert S.tost_bounds(10, "percent") == (-10, 10)
    rng = np.random.default_rng(9)
    d = rng.normal(0.01, 0.1, size=40)
    m, se = d.mean(), d.std(ddof=1) / math.sqrt(40)
    p_lo = sst.t.sf((m - lo) / se, 39)  # H0: mean ≤ lo
    p_hi = sst.t.cdf((m - hi) / se, 39)  # H0: mean ≥ hi
    r = S.tost(d)
    assert r["p"] == pytest.approx(max(p_lo, p_hi))
    assert r["p"] < 0.05  # equivalent within ±10 %
    assert S.tost(d + 0.3)["p"] > 0.5


def test_meta_dl_matches_statsmodels():
    from statsmodels.stats.meta_analysis import combine_effects

    rng = np.random.default_rng(10)
    v = rng.uniform(0.01, 0.05, size=25)
    y = rng.normal(0.1, np.sqrt(v + 0.02))
    m = S.meta_analysis(y, v, method="dl")
    ref = combine_effects(y, v, method_re="dl")
    assert m["tau2"] == pytest.approx(ref.tau2)
    assert m["mu"] == pytest.approx(ref.mean_effect_re)
    assert m["se"] == pytest.approx(ref.sd_eff_w_re)
    assert m["Q"] == pytest.approx(ref.q)
    assert m["I2"] == pytest.approx(100 * ref.i2)
    pm = S.meta_analysis(y, v, method="pm")
    assert pm["tau2"] == pytest.approx(combine_effects(y, v, method_re="iterated").tau2)
    # PI = mu ± t_{k−2} sqrt(tau² + se²), wider than the CI
    half = sst.t.ppf(0.975, 23) * math.sqrt(m["tau2"] + m["se"] ** 2)
    assert (m["pi_low"], m["pi_high"]) == pytest.approx((m["mu"] - half, m["mu"] + half))


def test_meta_reml_by_hand_equal_variances():
    # With equal v the REML τ² is max(0, s² − v) (s² with k − 1) and mu is the mean.
    y = np.array([0.1, 0.5, -0.2, 0.4, 0.3, 0.0])
    s2 = y.var(ddof=1)  # 0.07066667
    m = S.meta_analysis(y, np.full(6, 0.02), method="reml")
    assert m["tau2"] == pytest.approx(s2 - 0.02, rel=1e-8)
    assert m["mu"] == pytest.approx(y.mean())
    assert S.meta_analysis(y, np.full(6, 0.5), method="reml")["tau2"] == 0.0
    # Q-profile CI: generalised Q at the ends equals the χ² quantiles
    lo, hi = m["tau2_ci_low"], m["tau2_ci_high"]
    assert lo < m["tau2"] < hi
    q_at = lambda t: float(np.sum((y - y.mean()) ** 2) / (0.02 + t))  # noqa: E731
    if lo > 0:
        assert q_at(lo) == pytest.approx(sst.chi2.ppf(0.975, 5))
    assert q_at(hi) == pytest.approx(sst.chi2.ppf(0.025, 5))


def test_meta_from_items_by_hand():
    # Prompt a: 1, 2, 3 → mean 2, s² = 1, v = 1/3; prompt b: 4, 6 → mean 5, s² = 2, v = 1;
    # prompt c: 0, 0, 3, 1 → mean 1, s² = 2, v = 1/2; prompt d: one item (dropped);
    # prompt e: 7, 7 (zero spread, dropped).
    f = pd.DataFrame({"prompt_id": list("aaabbccccdee"),
                      "v": [1, 2, 3, 4, 6, 0, 0, 3, 1, 9, 7, 7]}, dtype=object)
    f["v"] = f["v"].astype(float)
    m = S.meta_from_items(f, "v", method="dl")
    ref = S.meta_analysis([2.0, 5.0, 1.0], [1 / 3, 1.0, 0.5], method="dl")
    assert m == ref
    # DL by hand: w = 3, 1, 2; fixed mean = (6 + 5 + 2)/6 = 13/6; Q = 3(2 − 13/6)² +
    # (5 − 13/6)² + 2(1 − 13/6)² = 3/36 + 289/36 + 98/36 = 65/6; C = 6 − 14/6 = 11/3;
    # τ² = (Q − 2)/C = (53/6)·(3/11) = 53/22; I² = (Q − 2)/Q = 53/65.
    assert m["k"] == 3 and m["Q"] == pytest.approx(65 / 6)
    assert m["tau2"] == pytest.approx(53 / 22)
    assert m["I2"] == pytest.approx(100 * 53 / 65)


def _tau2_coverage(reps: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    k, tau2 = 30, 0.04
    v = rng.uniform(0.01, 0.08, size=k)
    cover_tau = cover_mu = 0
    for _ in range(reps):
        y = rng.normal(0.2, np.sqrt(v + tau2))
        m = S.meta_analysis(y, v, method="reml")
        cover_tau += m["tau2_ci_low"] <= tau2 <= m["tau2_ci_high"]
        cover_mu += m["ci_low"] <= 0.2 <= m["ci_high"]
    return cover_tau / reps, cover_mu / reps


def test_meta_tau2_coverage_quick():
    cov_tau, cov_mu = _tau2_coverage(300, seed=11)
    assert 0.91 <= cov_tau <= 0.985
    assert 0.90 <= cov_mu <= 0.985


@pytest.mark.slow
def test_meta_tau2_coverage_slow():
    # 4000 replicates: binomial SE of a 95 % coverage ≈ 0.0034
    cov_tau, cov_mu = _tau2_coverage(4000, seed=12)
    assert 0.94 <= cov_tau <= 0.96
    assert 0.93 <= cov_mu <= 0.96


def test_bh_and_holm_on_hand_list():
    # p = .01 .04 .03 .005 .20, m = 5. BH: sorted .005 .01 .03 .04 .2 → ×5/i = .025 .025
    # .05 .05 .2, running min from the top → same. Holm: ×(5,4,3,2,1) = .025 .04 .09 .08
    # .2, running max → .025 .04 .09 .09 .2.
    p = [0.01, 0.04, 0.03, 0.005, 0.20]
    bh = S.correct(p, "bh")
    np.testing.assert_allclose(bh["p_adj"], [0.025, 0.05, 0.05, 0.025, 0.2])
    assert bh["reject"].tolist() == [True, True, True, True, False]
    holm = S.correct(p, "holm")
    np.testing.assert_allclose(holm["p_adj"], [0.04, 0.09, 0.09, 0.025, 0.2])
    assert holm["reject"].tolist() == [True, False, False, True, False]
    with_nan = S.correct([0.01, np.nan, 0.04], "holm")
    np.testing.assert_allclose(with_nan["p_adj"], [0.02, np.nan, 0.04])


def test_mixed_model_balanced_one_way_by_hand():
    # Balanced one-way random effects, k groups × m: REML intercept = grand mean,
    # σ²_u = (MSB − MSW)/m, σ² = MSW, SE(intercept)² = MSB/(k·m).
    rng = np.random.default_rng(13)
    k, m = 12, 5
    g = np.repeat(np.arange(k), m)
    y = rng.normal(0, 1.0, size=k)[g] + rng.normal(0.3, 0.5, size=k * m)
    f = pd.DataFrame({"y": y, "prompt_id": g})
    means = f.groupby("prompt_id")["y"].mean().to_numpy()
    msb = m * np.sum((means - y.mean()) ** 2) / (k - 1)
    msw = np.sum((y - means[g]) ** 2) / (k * (m - 1))
    r = S.mixed_model(f, "y ~ 1")
    assert r.loc[0, "estimate"] == pytest.approx(y.mean(), rel=1e-5)
    assert r.loc[0, "se"] == pytest.approx(math.sqrt(msb / (k * m)), rel=1e-3)
    assert r.attrs["group_var"] == pytest.approx((msb - msw) / m, rel=1e-3)
    assert r.attrs["resid_var"] == pytest.approx(msw, rel=1e-3)
    assert r.attrs["n_groups"] == k


def test_power_sixty_prompts():
    # A 10-point effect at SD 27 needs ≈ 60 prompts for 80 % power (docs/statistics.md, "Power").
    assert S.n_for_power(10, 27) == 60
    assert S.power_paired(10, 27, 60) >= 0.8 > S.power_paired(10, 27, 59)
    # noncentral t by hand: df = n − 1, ncp = d·√n
    n, d = 60, 10 / 27
    crit = sst.t.ppf(0.975, n - 1)
    ncp = d * math.sqrt(n)
    hand = sst.nct.sf(crit, n - 1, ncp) + sst.nct.cdf(-crit, n - 1, ncp)
    assert S.power_paired(10, 27, 60) == pytest.approx(hand, rel=1e-6)
    assert S.power_paired(S.mde_paired(80, 27), 27, 80) == pytest.approx(0.8, abs=1e-6)
    assert S.mde_paired(80, 27) < 10  # the core suite (≥ 80) detects < 10 points


def test_pct_conversion():
    assert S.pct_from_log(0.0) == 0.0
    assert S.pct_from_log(math.log(0.5)) == pytest.approx(50.0)
    assert S.log_from_pct(50.0) == pytest.approx(math.log(0.5))


def test_summarize_family():
    rng = np.random.default_rng(14)
    rows = []
    for layer in range(2):
        for head in range(3):
            mu = -0.3 if (layer, head) == (1, 2) else 0.0
            for p in range(20):
                # two rows per prompt and head: averaged to one unit first
                for _ in range(2):
                    rows.append(dict(layer=layer, head=head, prompt_id=p,
                                     delta=mu + rng.normal(0, 0.2)))
    f = pd.DataFrame(rows)
    out = S.summarize_family(f, effect="delta", by=["layer", "head"], correction="bh",
                             n_boot=500, n_perm=2000)
    assert len(out) == 6 and (out["n"] == 20).all()
    row = out.set_index(["layer", "head"]).loc[(1, 2)]
    unit = f[(f.layer == 1) & (f["head"] == 2)].groupby("prompt_id")["delta"].mean()
    assert row["mean"] == pytest.approx(unit.mean())
    assert row["p"] == pytest.approx(sst.ttest_1samp(unit, 0).pvalue)
    assert row["p_wilcoxon"] == pytest.approx(sst.wilcoxon(unit).pvalue)
    assert row["mean_pct"] == pytest.approx(100 * (1 - math.exp(unit.mean())))
    assert row["ci_pct_low"] < row["mean_pct"] < row["ci_pct_high"]
    assert row["mean_pct"] > 0  # δ < 0 → e^δ < 1 → a positive reduction
    np.testing.assert_allclose(out["p_adj"], S.correct(out["p"], "bh")["p_adj"])
    assert row["reject"] and out["reject"].sum() == 1
    holm = S.summarize_family(f, by=["layer", "head"], correction="holm", correct_on="wilcoxon",
                              n_boot=200, n_perm=500)
    np.testing.assert_allclose(holm["p_adj"], S.correct(holm["p_wilcoxon"], "holm")["p_adj"])
    assert out.attrs["tost_bounds"] == pytest.approx((math.log(0.9), math.log(1.1)))
    one = S.summarize_family(f[(f.layer == 0) & (f["head"] == 0)], n_boot=200, n_perm=500)
    assert len(one) == 1 and one.loc[0, "n"] == 20


@pytest.mark.filterwarnings("ignore:`use_t=True` requires")  # about its per-item CIs, unused
def test_meta_hksj_matches_statsmodels_and_is_never_narrower():
    """HKSJ: the random-effects mean's variance scaled by the weighted residual variance
    q (statsmodels' "random effect wls" row, t with k − 1 df); floored at q = 1, so it is
    never narrower than the normal-theory interval."""
    from statsmodels.stats.meta_analysis import combine_effects

    y = np.array([0.1, -0.2, 0.05, 0.3, -0.1, 0.02])
    v = np.array([0.01, 0.02, 0.015, 0.03, 0.01, 0.02])
    m = S.meta_analysis(y, v, method="dl")
    ref = combine_effects(y, v, method_re="chi2", use_t=True)
    frame = ref.summary_frame()
    row = frame.loc["random effect wls"]
    assert m["hk_q"] > 1
    print(f"[HKSJ] attnvar se {m['hk_se']:.10f}, statsmodels {row['sd_eff']:.10f}")
    assert m["mu"] == pytest.approx(row["eff"], abs=1e-10)
    assert m["hk_se"] == pytest.approx(row["sd_eff"], abs=1e-10)
    assert m["hk_ci_low"] == pytest.approx(row["ci_low"], abs=1e-8)
    assert m["hk_ci_high"] == pytest.approx(row["ci_upp"], abs=1e-8)
    t = m["mu"] / m["hk_se"]
    assert m["hk_p"] == pytest.approx(2 * sst.t.sf(abs(t), len(y) - 1), abs=1e-12)
    # Homogeneous effects: q < 1, and the floor keeps the normal-theory width.
    tight = S.meta_analysis(np.array([0.0, 0.01, -0.01, 0.005]),
                             np.array([0.04, 0.04, 0.04, 0.04]), method="dl")
    assert tight["hk_q"] < 1 and tight["hk_se"] == pytest.approx(tight["se"], abs=1e-15)
    assert tight["hk_ci_high"] - tight["hk_ci_low"] > tight["ci_high"] - tight["ci_low"]
