"""Statistics for a set of per-prompt effects (docs/statistics.md).

The unit of analysis is the prompt: one effect per prompt (per head where stated).
Everything scipy or statsmodels provides is delegated to them; written here are only the
pieces they lack: the Hodges–Lehmann confidence interval from the exact signed-rank
distribution, the rank-biserial correlation, the hierarchical (prompt, then step)
bootstrap, REML τ² with a Q-profile interval and prediction interval for a
random-effects meta-analysis, and :func:`summarize_family`, which returns one tidy row
per group of a family of effects with the multiple-testing correction applied.

Sign convention: effects in % are *reductions* (positive = parallel tokens receive less
attention). Log-scale effects δ keep their natural sign (negative = less) and convert as
``% = 100·(1 − e^δ)`` (:func:`pct_from_log`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

__all__ = [
    "pct_from_log",
    "log_from_pct",
    "tost_bounds",
    "paired_t",
    "wilcoxon_signed_rank",
    "hodges_lehmann",
    "signed_rank_null",
    "sign_flip_test",
    "bca_ci",
    "hierarchical_bootstrap",
    "tost",
    "meta_analysis",
    "meta_from_items",
    "correct",
    "mixed_model",
    "power_paired",
    "n_for_power",
    "mde_paired",
    "summarize_family",
]

ArrayLike = Sequence[float] | np.ndarray | pd.Series


# ---- scales --------------------------------------------------------------------------------
def pct_from_log(delta: float | np.ndarray) -> float | np.ndarray:
    """Reduction in % from a log-scale effect: ``100·(1 − e^δ)``.

    δ = log 0.9 (parallel tokens get 0.9× the attention) is a 10 % reduction; the map is
    decreasing, so a CI ``[lo, hi]`` on δ becomes ``[pct(hi), pct(lo)]`` in %.
    """
    return 100.0 * (1.0 - np.exp(delta))


def log_from_pct(pct: float | np.ndarray) -> float | np.ndarray:
    """Inverse of :func:`pct_from_log`: ``δ = log(1 − pct/100)``."""
    return np.log1p(-np.asarray(pct, dtype=float) / 100.0)


def tost_bounds(margin_pct: float = 10.0, scale: str = "log") -> tuple[float, float]:
    """Equivalence bounds for a margin of ±``margin_pct`` % on the reduction scale.

    Parameters
    ----------
    margin_pct : float
        The margin in percentage points of reduction (default 10).
    scale : {"log", "percent"}
        ``"percent"``: the effect is already a reduction in %, bounds ``(-m, m)``.
        ``"log"``: the effect is δ; ``+m`` % maps to ``log(1 − m/100)`` and ``−m`` % to
        ``log(1 + m/100)``, so the bounds are asymmetric: ±10 % gives
        ``(log 0.9, log 1.1) = (−0.10536, 0.09531)``.
    """
    m = float(margin_pct)
    if not 0 < m < 100:
        raise ValueError(f"margin_pct must be in (0, 100), got {margin_pct!r}")
    if scale == "percent":
        return -m, m
    if scale == "log":
        return math.log1p(-m / 100.0), math.log1p(m / 100.0)
    raise ValueError(f"scale must be 'log' or 'percent', got {scale!r}")


def _diffs(x: ArrayLike, y: ArrayLike | None = None) -> np.ndarray:
    d = np.asarray(x, dtype=float)
    if y is not None:
        yy = np.asarray(y, dtype=float)
        if yy.shape != d.shape:
            raise ValueError(f"paired samples differ in shape: {d.shape} vs {yy.shape}")
        d = d - yy
    if d.ndim != 1:
        raise ValueError(f"expected a 1-d sample, got shape {d.shape}")
    return d[np.isfinite(d)]


# ---- one-sample / paired tests ----------------------------------------------------------------
def paired_t(x: ArrayLike, y: ArrayLike | None = None, alpha: float = 0.05) -> dict[str, float]:
    """Paired (one-sample on differences ``x − y``) t test against 0 with a CI.

    Returns
    -------
    dict
        ``n, mean, sd, se, t, df, p, ci_low, ci_high`` (scipy.stats.ttest_1samp).
    """
    d = _diffs(x, y)
    n = d.size
    out = dict(n=n, mean=np.nan, sd=np.nan, se=np.nan, t=np.nan, df=n - 1, p=np.nan,
               ci_low=np.nan, ci_high=np.nan)
    if n == 0:
        return out
    out["mean"] = float(d.mean())
    if n < 2:
        return out
    out["sd"] = float(d.std(ddof=1))
    out["se"] = out["sd"] / math.sqrt(n)
    if out["sd"] == 0:
        return out
    res = stats.ttest_1samp(d, 0.0)
    ci = res.confidence_interval(1 - alpha)
    out.update(t=float(res.statistic), p=float(res.pvalue), ci_low=float(ci.low),
               ci_high=float(ci.high))
    return out


def signed_rank_null(n: int) -> np.ndarray:
    """Exact null distribution of the Wilcoxon signed-rank statistic T⁺ for ``n`` untied,
    non-zero differences: ``P(T⁺ = t)`` for ``t = 0 … n(n+1)/2``.

    Each rank r enters T⁺ with probability ½, so the distribution is the convolution of
    ``n`` two-point laws (computed in floating point; exact to rounding for n ≤ 1000).
    """
    m = n * (n + 1) // 2
    p = np.zeros(m + 1)
    p[0] = 1.0
    for r in range(1, n + 1):
        shifted = np.zeros_like(p)
        shifted[r:] = p[:-r]
        p = 0.5 * (p + shifted)
    return p


def hodges_lehmann(x: ArrayLike, y: ArrayLike | None = None,
                   alpha: float = 0.05) -> dict[str, float]:
    """One-sample Hodges–Lehmann estimate (median of the Walsh averages
    ``(d_i + d_j)/2, i ≤ j``) and its distribution-free CI.

    The CI is ``[W_(k), W_(M+1−k)]`` of the ``M = n(n+1)/2`` sorted Walsh averages, with
    ``k − 1`` the largest ``q`` such that ``P(T⁺ ≤ q) ≤ α/2`` under the exact signed-rank
    null (n ≤ 1000; normal approximation above). It is the set of shifts θ not rejected
    by the exact two-sided signed-rank test of ``d − θ``. With ties or zeros the
    coverage is approximate. The achieved confidence is returned as ``ci_level``.
    """
    d = _diffs(x, y)
    n = d.size
    out = dict(hl=np.nan, hl_ci_low=np.nan, hl_ci_high=np.nan, ci_level=np.nan)
    if n == 0:
        return out
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2.0)
    m = walsh.size
    out["hl"] = float(np.median(walsh))
    if n <= 1000:
        cdf = np.cumsum(signed_rank_null(n))
        q = int(np.searchsorted(cdf, alpha / 2 * (1 + 1e-12), side="right")) - 1
        k = q + 1
        tail = float(cdf[q]) if q >= 0 else 0.0
    else:
        mu, sd = m / 2.0, math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
        k = max(int(math.floor(mu - stats.norm.ppf(1 - alpha / 2) * sd)), 0)
        tail = float(stats.norm.cdf((k - 0.5 - mu) / sd))
    if k < 1:  # n too small for any interval at this level
        out.update(hl_ci_low=-np.inf, hl_ci_high=np.inf, ci_level=1.0)
        return out
    out.update(hl_ci_low=float(walsh[k - 1]), hl_ci_high=float(walsh[m - k]),
               ci_level=1.0 - 2.0 * tail)
    return out


def wilcoxon_signed_rank(x: ArrayLike, y: ArrayLike | None = None,
                         alpha: float = 0.05) -> dict[str, float]:
    """Wilcoxon signed-rank test of the differences against 0 (scipy.stats.wilcoxon,
    zeros dropped, exact p for small n without ties), with effect sizes.

    Returns
    -------
    dict
        ``n_nonzero, t_plus, t_minus, p``; ``r_rb`` the matched-pairs rank-biserial
        correlation ``(T⁺ − T⁻)/(T⁺ + T⁻)`` (zeros dropped, midranks for ties), in
        [−1, 1], positive when positive differences dominate; and the Hodges–Lehmann
        estimate with its CI (:func:`hodges_lehmann`, all differences).
    """
    d = _diffs(x, y)
    nz = d[d != 0]
    out: dict[str, float] = dict(n_nonzero=nz.size, t_plus=np.nan, t_minus=np.nan,
                                 p=np.nan, r_rb=np.nan)
    if nz.size:
        ranks = stats.rankdata(np.abs(nz))
        tp, tm = float(ranks[nz > 0].sum()), float(ranks[nz < 0].sum())
        out.update(t_plus=tp, t_minus=tm, r_rb=(tp - tm) / (tp + tm))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["p"] = float(stats.wilcoxon(nz).pvalue)
    out.update(hodges_lehmann(d, alpha=alpha))
    return out


def sign_flip_test(x: ArrayLike, y: ArrayLike | None = None, n_resamples: int = 10000,
                   seed: int = 0, alternative: str = "two-sided") -> dict[str, Any]:
    """Sign-flip permutation test of mean(d) = 0 (scipy.stats.permutation_test with one
    sample and ``permutation_type="samples"``).

    Exact (all ``2^n`` sign patterns) when ``2^n ≤ n_resamples``, otherwise Monte Carlo
    with ``n_resamples`` random flips drawn from ``seed``.

    Returns
    -------
    dict
        ``p`` and ``exact`` (bool).
    """
    d = _diffs(x, y)
    if d.size == 0 or np.all(d == 0):
        return dict(p=np.nan if d.size == 0 else 1.0, exact=True)
    exact = 2 ** min(d.size, 63) <= n_resamples
    res = stats.permutation_test(
        (d,), lambda a, axis=-1: np.mean(a, axis=axis), permutation_type="samples",
        vectorized=True, n_resamples=n_resamples, alternative=alternative,
        rng=np.random.default_rng(seed))
    return dict(p=float(res.pvalue), exact=bool(exact))


def bca_ci(x: ArrayLike, statistic: Callable[..., Any] = np.mean, alpha: float = 0.05,
           n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """BCa bootstrap CI (scipy.stats.bootstrap, ``method="BCa"``) for ``statistic`` of a
    1-d sample. A constant sample returns ``(c, c)``; n < 3 returns NaNs."""
    d = _diffs(x)
    if d.size < 3:
        return np.nan, np.nan
    if np.all(d == d[0]):
        v = float(statistic(d))
        return v, v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((d,), statistic, method="BCa", n_resamples=n_resamples,
                              confidence_level=1 - alpha, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def hierarchical_bootstrap(frame: pd.DataFrame, value: str, unit: str = "prompt_id",
                           step: str = "step", n_resamples: int = 2000, alpha: float = 0.05,
                           seed: int = 0) -> dict[str, float]:
    """Two-stage percentile bootstrap for query-level data: resample units (prompts) with
    replacement, then, independently for each drawn unit, its steps with replacement.

    The statistic is the mean over units of each unit's query mean (mean over queries,
    then over prompts); within a drawn unit the query mean is the pooled
    mean of the queries of the drawn steps.

    Returns
    -------
    dict
        ``estimate, ci_low, ci_high, se`` (SD of the bootstrap distribution), ``n_units``.
    """
    df = frame[[unit, step, value]].dropna()
    g = df.groupby([unit, step], sort=True)[value].agg(["sum", "count"]).reset_index()
    units = list(g[unit].unique())
    sums = [g.loc[g[unit] == u, "sum"].to_numpy() for u in units]
    counts = [g.loc[g[unit] == u, "count"].to_numpy() for u in units]
    unit_means = np.array([s.sum() / c.sum() for s, c in zip(sums, counts, strict=True)])
    n_units = len(units)
    if n_units == 0:
        return dict(estimate=np.nan, ci_low=np.nan, ci_high=np.nan, se=np.nan, n_units=0)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, n_units, size=(n_resamples, n_units))
    vals = np.empty(draw.shape)
    for u in range(n_units):
        mask = draw == u
        n_occ = int(mask.sum())
        if not n_occ:
            continue
        m = sums[u].size
        pick = rng.integers(0, m, size=(n_occ, m))
        vals[mask] = sums[u][pick].sum(axis=1) / counts[u][pick].sum(axis=1)
    boot = vals.mean(axis=1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return dict(estimate=float(unit_means.mean()), ci_low=float(lo), ci_high=float(hi),
                se=float(boot.std(ddof=1)), n_units=n_units)


def tost(x: ArrayLike, y: ArrayLike | None = None, bounds: tuple[float, float] | None = None,
         margin_pct: float = 10.0, scale: str = "log") -> dict[str, float]:
    """Two one-sided t tests for equivalence of mean(d) to 0 within ``bounds``
    (statsmodels ``DescrStatsW.ttost_mean``).

    ``bounds`` default to :func:`tost_bounds` (±``margin_pct`` % on the reduction scale,
    mapped to δ when ``scale="log"``). Equivalence is claimed when ``p`` (the larger of
    the two one-sided p values) ≤ α.
    """
    from statsmodels.stats.weightstats import DescrStatsW

    low, upp = bounds if bounds is not None else tost_bounds(margin_pct, scale)
    d = _diffs(x, y)
    out = dict(p=np.nan, p_lower=np.nan, p_upper=np.nan, low=low, upp=upp)
    if d.size < 2 or d.std(ddof=1) == 0:
        return out
    p, (_, p1, _), (_, p2, _) = DescrStatsW(d).ttost_mean(low, upp)
    out.update(p=float(p), p_lower=float(p1), p_upper=float(p2))
    return out


# ---- meta-analysis ----------------------------------------------------------------------------
def _q_gen(tau2: float, y: np.ndarray, v: np.ndarray) -> float:
    w = 1.0 / (v + tau2)
    mu = np.sum(w * y) / np.sum(w)
    return float(np.sum(w * (y - mu) ** 2))


def _tau2_reml(y: np.ndarray, v: np.ndarray, start: float, tol: float = 1e-10,
               max_iter: int = 500) -> float:
    """REML τ² by Fisher scoring (the iteration metafor uses), truncated at 0."""
    tau2 = max(start, 0.0)
    for _ in range(max_iter):
        w = 1.0 / (v + tau2)
        mu = np.sum(w * y) / np.sum(w)
        new = np.sum(w**2 * ((y - mu) ** 2 - v)) / np.sum(w**2) + 1.0 / np.sum(w)
        new = max(float(new), 0.0)
        if abs(new - tau2) < tol * max(1.0, tau2):
            return new
        tau2 = new
    return tau2


def _tau2_qprofile_ci(y: np.ndarray, v: np.ndarray, alpha: float) -> tuple[float, float]:
    """Q-profile CI for τ² (Viechtbauer 2007): the τ² at which the generalised Q equals
    the χ²_{k−1} quantiles. Exact when the within-unit variances are known."""
    k = y.size
    hi_target = stats.chi2.ppf(1 - alpha / 2, k - 1)
    lo_target = stats.chi2.ppf(alpha / 2, k - 1)

    def solve(target: float) -> float:
        if _q_gen(0.0, y, v) <= target:
            return 0.0
        top = max(float(np.var(y)), float(v.max()), 1e-12)
        while _q_gen(top, y, v) > target:
            top *= 4.0
        return float(optimize.brentq(lambda t: _q_gen(t, y, v) - target, 0.0, top,
                                     xtol=1e-14, rtol=1e-10))

    return solve(hi_target), solve(lo_target)


def meta_analysis(effects: ArrayLike, variances: ArrayLike, method: str = "reml",
                  alpha: float = 0.05) -> dict[str, float]:
    """Random-effects meta-analysis of per-unit effects with known sampling variances.

    Parameters
    ----------
    effects, variances : array_like
        One effect per prompt and its squared standard error.
    method : {"reml", "dl", "pm"}
        τ² estimator: REML (Fisher scoring), DerSimonian–Laird, or Paule–Mandel
        (statsmodels ``combine_effects(method_re="iterated")``).

    Returns
    -------
    dict
        ``k, mu, se, ci_low, ci_high, z, p`` (normal-theory random-effects mean),
        ``tau2, tau2_ci_low, tau2_ci_high`` (Q-profile), ``tau``, ``Q, Q_df, Q_p``
        (Cochran's Q on fixed-effect weights), ``I2`` (in %, ``max(0, (Q − df)/Q)``),
        ``H2``, the prediction interval for a new prompt's true effect
        ``pi_low, pi_high = mu ± t_{k−2} · sqrt(τ² + se²)`` (Higgins et al. 2009), and the
        Hartung–Knapp–Sidik–Jonkman interval ``hk_ci_low, hk_ci_high, hk_t, hk_p,
        hk_se, hk_q``: ``hk_q = Σ w*_i (y_i − mu)² / (k − 1)`` with the random-effects
        weights ``w*_i = 1 / (v_i + τ²)``, ``hk_se = se · sqrt(max(1, hk_q))`` (never
        narrower than the normal-theory interval) and t with k − 1 degrees of freedom.
        The normal-theory interval is liberal when k is small or the within-prompt
        variances are underestimated; the HKSJ one holds its level far better.
    """
    y = np.asarray(effects, dtype=float)
    v = np.asarray(variances, dtype=float)
    if y.shape != v.shape or y.ndim != 1:
        raise ValueError("effects and variances must be 1-d and of equal length")
    ok = np.isfinite(y) & np.isfinite(v) & (v > 0)
    y, v = y[ok], v[ok]
    k = y.size
    if k < 2:
        raise ValueError(f"meta-analysis needs ≥ 2 units with positive variance, got {k}")
    w = 1.0 / v
    mu_fe = np.sum(w * y) / np.sum(w)
    q = float(np.sum(w * (y - mu_fe) ** 2))
    df = k - 1
    c = np.sum(w) - np.sum(w**2) / np.sum(w)
    tau2_dl = max(0.0, (q - df) / c)
    if method == "dl":
        tau2 = tau2_dl
    elif method == "reml":
        tau2 = _tau2_reml(y, v, tau2_dl)
    elif method == "pm":
        from statsmodels.stats.meta_analysis import combine_effects

        tau2 = float(combine_effects(y, v, method_re="iterated").tau2)
    else:
        raise ValueError(f"method must be 'reml', 'dl' or 'pm', got {method!r}")
    wr = 1.0 / (v + tau2)
    mu = float(np.sum(wr * y) / np.sum(wr))
    se = float(math.sqrt(1.0 / np.sum(wr)))
    zc = stats.norm.ppf(1 - alpha / 2)
    t_lo, t_hi = _tau2_qprofile_ci(y, v, alpha)
    out = dict(k=k, method=method, mu=mu, se=se, ci_low=mu - zc * se, ci_high=mu + zc * se,
               z=mu / se, p=float(2 * stats.norm.sf(abs(mu / se))), tau2=tau2,
               tau2_ci_low=t_lo, tau2_ci_high=t_hi, tau=math.sqrt(tau2), Q=q, Q_df=df,
               Q_p=float(stats.chi2.sf(q, df)), I2=100.0 * max(0.0, (q - df) / q) if q > 0 else 0.0,
               H2=q / df, pi_low=np.nan, pi_high=np.nan)
    if k >= 3:
        tc = stats.t.ppf(1 - alpha / 2, k - 2)
        half = tc * math.sqrt(tau2 + se**2)
        out.update(pi_low=mu - half, pi_high=mu + half)
    hk_q = float(np.sum(wr * (y - mu) ** 2) / df)
    hk_se = se * math.sqrt(max(1.0, hk_q))
    tk = stats.t.ppf(1 - alpha / 2, df)
    out.update(hk_q=hk_q, hk_se=hk_se, hk_ci_low=mu - tk * hk_se, hk_ci_high=mu + tk * hk_se,
               hk_t=mu / hk_se, hk_p=float(2 * stats.t.sf(abs(mu / hk_se), df)))
    return out


def meta_from_items(frame: pd.DataFrame, value: str, unit: str = "prompt_id",
                    method: str = "reml", alpha: float = 0.05) -> dict[str, float]:
    """:func:`meta_analysis` on item-level data: each unit's effect is its item mean and
    its variance ``s²/n`` (units with fewer than 2 items or zero spread are dropped)."""
    g = frame.groupby(unit)[value].agg(["mean", "var", "count"])
    g = g[(g["count"] >= 2) & (g["var"] > 0)]
    return meta_analysis(g["mean"].to_numpy(), (g["var"] / g["count"]).to_numpy(),
                         method=method, alpha=alpha)


# ---- multiplicity, mixed models, power --------------------------------------------------------
_CORRECTIONS = {"bh": "fdr_bh", "holm": "holm", "bonferroni": "bonferroni", "by": "fdr_by"}


def correct(pvalues: ArrayLike, method: str = "bh", alpha: float = 0.05) -> pd.DataFrame:
    """Multiple-testing correction (statsmodels ``multipletests``).

    ``method``: ``"bh"`` (Benjamini–Hochberg FDR, the layer × head family), ``"holm"``
    (family-wise, H1–H4), ``"bonferroni"`` or ``"by"``. NaN p values are left out of the
    family and get NaN / False.

    Returns
    -------
    DataFrame
        ``p, p_adj, reject`` in input order.
    """
    from statsmodels.stats.multitest import multipletests

    if method not in _CORRECTIONS:
        raise ValueError(f"method must be one of {sorted(_CORRECTIONS)}, got {method!r}")
    p = np.asarray(pvalues, dtype=float)
    adj = np.full(p.shape, np.nan)
    rej = np.zeros(p.shape, dtype=bool)
    ok = np.isfinite(p)
    if ok.any():
        r, pa, _, _ = multipletests(p[ok], alpha=alpha, method=_CORRECTIONS[method])
        adj[ok], rej[ok] = pa, r
    return pd.DataFrame({"p": p, "p_adj": adj, "reject": rej})


def mixed_model(frame: pd.DataFrame, formula: str, groups: str = "prompt_id",
                re_formula: str | None = None, reml: bool = True,
                alpha: float = 0.05) -> pd.DataFrame:
    """Linear mixed model with a random effect per ``groups`` (statsmodels MixedLM).

    Returns
    -------
    DataFrame
        One row per fixed-effect term: ``term, estimate, se, z, p, ci_low, ci_high``.
        ``.attrs`` holds ``group_var`` (random-intercept variance), ``resid_var``,
        ``n_groups``, ``n_obs``, ``converged`` and ``formula``.
    """
    import statsmodels.formula.api as smf

    model = smf.mixedlm(formula, frame, groups=frame[groups], re_formula=re_formula)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = model.fit(reml=reml)
    names = list(res.fe_params.index)
    ci = res.conf_int(alpha).loc[names]
    out = pd.DataFrame({
        "term": names,
        "estimate": res.fe_params.to_numpy(),
        "se": res.bse_fe.to_numpy(),
        "z": res.tvalues.loc[names].to_numpy(),
        "p": res.pvalues.loc[names].to_numpy(),
        "ci_low": ci.iloc[:, 0].to_numpy(),
        "ci_high": ci.iloc[:, 1].to_numpy(),
    })
    out.attrs.update(group_var=float(np.asarray(res.cov_re)[0, 0]), resid_var=float(res.scale),
                     n_groups=int(model.n_groups), n_obs=int(res.nobs),
                     converged=bool(res.converged), formula=formula)
    return out


def power_paired(effect: float, sd: float, n: int, alpha: float = 0.05,
                 alternative: str = "two-sided") -> float:
    """Power of the paired t test for a mean difference ``effect`` with SD ``sd`` of the
    differences and ``n`` pairs (statsmodels ``TTestPower``, noncentral t)."""
    from statsmodels.stats.power import TTestPower

    return float(TTestPower().power(effect_size=effect / sd, nobs=n, alpha=alpha,
                                    alternative=alternative))


def n_for_power(effect: float, sd: float, power: float = 0.8, alpha: float = 0.05,
                alternative: str = "two-sided") -> int:
    """Smallest number of prompts giving at least ``power`` for the paired t test
    (10 points at SD 27 → 60)."""
    from statsmodels.stats.power import TTestPower

    n = TTestPower().solve_power(effect_size=effect / sd, power=power, alpha=alpha,
                                 alternative=alternative)
    n_int = int(math.ceil(float(np.squeeze(n)) - 1e-9))
    while power_paired(effect, sd, n_int, alpha, alternative) < power:
        n_int += 1
    return n_int


def mde_paired(n: int, sd: float, power: float = 0.8, alpha: float = 0.05,
               alternative: str = "two-sided") -> float:
    """Minimum detectable mean difference (same units as ``sd``) of the paired t test
    with ``n`` prompts at the given power."""
    from scipy.optimize import brentq
    from statsmodels.stats.power import TTestPower

    solver = TTestPower()

    def short(d: float) -> float:
        return float(solver.power(effect_size=d, nobs=n, alpha=alpha,
                                  alternative=alternative)) - power

    # statsmodels' own solver stops at 1e-5 on the standardised effect; its answer only
    # brackets the root, which brentq then finds to machine precision.
    guess = float(np.squeeze(solver.solve_power(effect_size=None, nobs=n, power=power,
                                                alpha=alpha, alternative=alternative)))
    lo, hi = guess * 0.9, guess * 1.1
    try:
        for _ in range(60):
            if not short(lo) > 0:
                break
            lo /= 2
        for _ in range(60):
            if not short(hi) < 0:
                break
            hi *= 2
        return brentq(short, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps) * sd
    except ValueError:
        # The noncentral t's tail is NaN far out (n = 2, one degree of freedom): keep the
        # solver's own answer there.
        return guess * sd


# ---- families -----------------------------------------------------------------------------------
P_COLUMNS = {"t": "p", "wilcoxon": "p_wilcoxon", "perm": "p_perm"}


def _summarize_one(d: np.ndarray, alpha: float, bounds: tuple[float, float], n_boot: int,
                   n_perm: int, seed: int) -> dict[str, Any]:
    t = paired_t(d, alpha=alpha)
    row: dict[str, Any] = {
        "n": t["n"], "mean": t["mean"], "sd": t["sd"], "se": t["se"],
        "ci_low": t["ci_low"], "ci_high": t["ci_high"], "t": t["t"], "p": t["p"],
    }
    if d.size >= 1:
        w = wilcoxon_signed_rank(d, alpha=alpha)
        row.update(p_wilcoxon=w["p"], r_rb=w["r_rb"], hl=w["hl"], hl_ci_low=w["hl_ci_low"],
                   hl_ci_high=w["hl_ci_high"])
        row["p_perm"] = sign_flip_test(d, n_resamples=n_perm, seed=seed)["p"]
    else:
        row.update(p_wilcoxon=np.nan, r_rb=np.nan, hl=np.nan, hl_ci_low=np.nan,
                   hl_ci_high=np.nan, p_perm=np.nan)
    row["bca_low"], row["bca_high"] = bca_ci(d, alpha=alpha, n_resamples=n_boot, seed=seed)
    row["p_tost"] = tost(d, bounds=bounds)["p"]
    return row


def summarize_family(frame: pd.DataFrame, effect: str = "delta",
                     by: str | Sequence[str] | None = None, unit: str = "prompt_id",
                     correction: str = "bh", alpha: float = 0.05, scale: str = "log",
                     margin_pct: float = 10.0, tost_bounds_: tuple[float, float] | None = None,
                     correct_on: str = "t", n_boot: int = 2000, n_perm: int = 10000,
                     seed: int = 0) -> pd.DataFrame:
    """One tidy row per group of a family of per-prompt effects, corrections applied.

    Parameters
    ----------
    frame : DataFrame
        Long data with columns ``effect``, ``unit`` and the ``by`` columns. Rows sharing a
        group and unit are averaged first, so the unit of analysis is always the prompt.
    effect : str
        The effect column; its scale is given by ``scale``.
    by : str or list of str, optional
        Grouping columns (e.g. ``["layer", "head"]``); None = one group.
    correction : {"bh", "holm", "bonferroni", "by"}
        Applied across all groups to the p value named by ``correct_on``
        (``"t"``, ``"wilcoxon"`` or ``"perm"``), and separately to ``p_tost``.
    scale : {"log", "percent"}
        ``"log"``: effects are δ; the table adds the mean as a reduction in %
        (``mean_pct``) with its t CI (``ci_pct_low``, ``ci_pct_high``, endpoints swapped
        by the decreasing map). ``"percent"``: effects are already reductions in %.
    margin_pct, tost_bounds_ :
        TOST margin in % of reduction (mapped with :func:`tost_bounds`) or explicit
        bounds on the effect's own scale.
    n_boot, n_perm, seed :
        BCa resamples, sign-flip resamples (exact when ``2^n ≤ n_perm``) and the seed
        (the same for every group, so each row is reproducible on its own).

    Returns
    -------
    DataFrame
        ``by…, n, mean, sd, se, ci_low, ci_high, t, p, p_wilcoxon, r_rb, hl, hl_ci_low,
        hl_ci_high, p_perm, bca_low, bca_high, p_tost`` (+ ``mean_pct, ci_pct_low,
        ci_pct_high`` for log scale), then ``p_adj, reject`` (from ``correct_on``) and
        ``p_tost_adj, equivalent``. ``.attrs`` records the settings.
    """
    if correct_on not in P_COLUMNS:
        raise ValueError(f"correct_on must be one of {sorted(P_COLUMNS)}, got {correct_on!r}")
    if scale not in ("log", "percent"):
        raise ValueError(f"scale must be 'log' or 'percent', got {scale!r}")
    by_cols = [] if by is None else ([by] if isinstance(by, str) else list(by))
    bounds = tost_bounds_ if tost_bounds_ is not None else tost_bounds(margin_pct, scale)
    per_unit = frame.groupby(by_cols + [unit], sort=True, dropna=False)[effect].mean()
    rows = []
    if by_cols:
        for key, sub in per_unit.groupby(level=list(range(len(by_cols))), sort=True):
            key = key if isinstance(key, tuple) else (key,)
            row = dict(zip(by_cols, key, strict=True))
            row.update(_summarize_one(_diffs(sub.to_numpy()), alpha, bounds, n_boot, n_perm,
                                      seed))
            rows.append(row)
    else:
        rows.append(_summarize_one(_diffs(per_unit.to_numpy()), alpha, bounds, n_boot,
                                   n_perm, seed))
    out = pd.DataFrame(rows)
    if scale == "log":
        out["mean_pct"] = pct_from_log(out["mean"])
        out["ci_pct_low"] = pct_from_log(out["ci_high"])
        out["ci_pct_high"] = pct_from_log(out["ci_low"])
    c = correct(out[P_COLUMNS[correct_on]], correction, alpha)
    out["p_adj"], out["reject"] = c["p_adj"].to_numpy(), c["reject"].to_numpy()
    ct = correct(out["p_tost"], correction, alpha)
    out["p_tost_adj"], out["equivalent"] = ct["p_adj"].to_numpy(), ct["reject"].to_numpy()
    out.attrs.update(effect=effect, by=by_cols, unit=unit, correction=correction,
                     correct_on=correct_on, alpha=alpha, scale=scale, tost_bounds=bounds,
                     n_boot=n_boot, n_perm=n_perm, seed=seed)
    return out
