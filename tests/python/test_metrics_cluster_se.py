"""The prompt-level SE of the distance-matched M1: cluster-robust by query step, heads
averaged within each cluster (metrics/fixed_effects.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnvar.analysis.toy_null import toy_view
from attnvar.metrics import count_pairs, score_contrast
from attnvar.metrics.contrast import distance_levels
from attnvar.metrics.fixed_effects import fit_within_query, mean_over_heads_se


def test_cluster_influence_equals_statsmodels_cluster_robust_ols():
    sm = pytest.importorskip("statsmodels.api")
    view = toy_view(np.random.default_rng(11), steps=16, heads=1)
    pairs = count_pairs(view)
    s = pairs.values("scores")[0, 0].numpy()
    inc = pairs.include[0, 0].numpy()
    index, levels = distance_levels(pairs)
    qi, ki = np.nonzero(inc)
    # Explicit regression: query dummies, one dummy per distance level but the most
    # frequent, the parallel indicator last; clusters = query steps.
    q_dummies = (qi[:, None] == np.unique(qi)[None, :]).astype(float)
    d_dummies = (index[qi, ki][:, None] == np.arange(1, len(levels))[None, :]).astype(float)
    par = pairs.key_parallel[ki].astype(float)[:, None]
    design = np.hstack([q_dummies, d_dummies, par])
    keep = design.std(0) > 0
    keep[: q_dummies.shape[1]] = True
    design = design[:, keep]
    _, steps = np.unique(pairs.query_step, return_inverse=True)
    ref = sm.OLS(s[qi, ki], design).fit(cov_type="cluster",
                                        cov_kwds={"groups": steps[qi], "use_correction": False})

    x = np.zeros((*index.shape, len(levels)))
    a, b = np.nonzero(index >= 1)
    x[a, b, index[a, b] - 1] = 1.0
    x[:, :, -1] = pairs.key_parallel[None, :]
    fit = fit_within_query(pairs.values("scores").reshape(1, *inc.shape),
                           pairs.include.reshape(1, *inc.shape), torch.from_numpy(x),
                           clusters=steps)
    beta_diff = abs(fit.coef[0, -1] - ref.params[-1])
    var_diff = abs(np.sum(fit.influence[0] ** 2) - ref.cov_params()[-1, -1])
    print(f"β vs statsmodels {beta_diff:.1e}; cluster-robust variance {var_diff:.1e} "
          f"(variance {ref.cov_params()[-1, -1]:.3e})")
    assert beta_diff < 1e-10 and var_diff < 1e-10 * max(1.0, ref.cov_params()[-1, -1])


def test_mean_over_heads_se_keeps_the_heads_correlation():
    # Two identical heads: the SE of their mean equals one head's SE (not / sqrt 2).
    infl = np.array([[0.3, -0.1, 0.2], [0.3, -0.1, 0.2]])
    one = mean_over_heads_se(np.array([1.0]), infl[:1])
    assert abs(mean_over_heads_se(np.array([1.0, 2.0]), infl) - one) < 1e-15
    assert abs(one - np.sqrt(1.5 * (0.09 + 0.01 + 0.04))) < 1e-15
    assert np.isnan(mean_over_heads_se(np.array([np.nan, np.nan]), infl))


def test_prompt_intervals_of_distance_matched_m1_cover_zero_under_the_toy_null():
    rng = np.random.default_rng(2026)
    z = []
    for _ in range(200):
        t = score_contrast(toy_view(rng, steps=20, heads=2), distance_matched=True)
        row = t[t["layer"] < 0].iloc[0]
        if np.isfinite(row["se"]) and row["se"] > 0:
            z.append(row["estimate"] / row["se"])
    rate = float(np.mean(np.abs(z) > 1.959964))
    print(f"toy null, {len(z)} prompts: |z| > 1.96 in {100 * rate:.1f} %")
    assert len(z) >= 190 and 0.01 <= rate <= 0.10
