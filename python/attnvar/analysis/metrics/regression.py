"""M2: conditional-logit regression of scores on parallel status, per head and pooled.

    s_ij = φ_i + β·[j ∈ P] + f(log(1 + d_ij)) + η·[d_ij = 1] + γ·z_j + ε

over the counted pairs, with query fixed effects φ_i (removed by demeaning: the softmax
normaliser of query i is a constant shift of its scores, so this is the conditional
logit of which key receives attention), f a natural cubic spline of log(1 + d) built
here, η a distance-1 step, and z_j token covariates (covariates.py). e^β is the
attention odds ratio of a parallel key against a non-parallel key at the same distance
with the same covariates.

The spline's knots depend on the pairs' distances only (quantiles over the counted
pairs of the prompt), never on scores or labels, so runs of one tree under different
labels or interventions share one design.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .contrast import _pairs
from .counting import CountedPairs
from .covariates import COVARIATES, cached_covariates, covariate_matrix
from .fixed_effects import WithinFit, fit_within_query
from .frames import ALL, block, frame

SPLINE_KNOTS = 4


def natural_spline_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Natural cubic spline basis without the constant: [x, N_1(x) … N_{K−2}(x)].

    The truncated-power construction: with d_k(x) = ((x − ξ_k)₊³ − (x − ξ_K)₊³)/(ξ_K − ξ_k),
    N_k = d_k − d_{K−1}; the function is cubic between knots and linear beyond the
    boundary knots. Fewer than 3 distinct knots give the linear term alone.
    """
    knots = np.unique(np.asarray(knots, dtype=np.float64))
    cols = [x]
    if len(knots) >= 3:
        last = knots[-1]

        def d(k: float) -> np.ndarray:
            return (np.clip(x - k, 0, None) ** 3 - np.clip(x - last, 0, None) ** 3) / (last - k)

        d_penult = d(knots[-2])
        cols += [d(k) - d_penult for k in knots[:-2]]
    return np.stack(cols, axis=-1)


def regression_design(
    pairs: CountedPairs,
    covariates: Sequence[str] | None = COVARIATES,
    knots: int = SPLINE_KNOTS,
) -> tuple[np.ndarray, list[str]]:
    """[Q, K, p] regressors and their names; ``parallel`` is the last column.

    Columns: ``spline[0..]`` of log(1 + d) (knots at quantiles of the counted pairs'
    distances), ``distance_1``, the key covariates, ``parallel``.
    """
    x = np.log1p(np.clip(pairs.distance, 0, None))
    counted = x[pairs.base]
    probs = np.linspace(0, 1, knots) if knots >= 2 else np.array([0.0, 1.0])
    knot_values = np.quantile(counted, probs) if counted.size else np.array([0.0])
    spline = natural_spline_basis(x, knot_values)
    cols = [spline, (np.abs(pairs.distance - 1.0) < 1e-9)[..., None].astype(np.float64)]
    names = [f"spline[{i}]" for i in range(spline.shape[-1])] + ["distance_1"]
    if covariates:
        key = ("covariates", tuple(covariates))
        if key not in pairs.view.cache:
            pairs.view.cache[key] = covariate_matrix(cached_covariates(pairs.view), covariates)
        z, znames = pairs.view.cache[key]
        Q = len(pairs.query_slots)
        cols.append(np.broadcast_to(z[pairs.key_slots][None], (Q, *z[pairs.key_slots].shape)))
        names += znames
    cols.append(np.broadcast_to(pairs.key_parallel[None, :, None],
                                (*pairs.distance.shape, 1)).astype(np.float64))
    names.append("parallel")
    return np.concatenate(cols, axis=-1), names


def regression_fit(
    pairs: CountedPairs,
    covariates: Sequence[str] | None = COVARIATES,
    knots: int = SPLINE_KNOTS,
) -> tuple[WithinFit, list[str]]:
    """M2 as arrays (no table): the within-query fit of every head (``coef[b, -1]`` is β
    of head b = layer_index·H + head_index) and pooled, with the column names."""
    L, H, Q, K = pairs.shape
    x, names = regression_design(pairs, covariates, knots)
    fit = fit_within_query(pairs.values("scores").reshape(L * H, Q, K),
                           pairs.include.reshape(L * H, Q, K),
                           torch.from_numpy(np.ascontiguousarray(x)))
    return fit, names


def logit_regression(
    run: Any,
    covariates: Sequence[str] | None = COVARIATES,
    terms: str = "parallel",
    knots: int = SPLINE_KNOTS,
    prompt: str | None = None,
    **count_kwargs,
):
    """M2 per head and pooled over heads.

    Parameters
    ----------
    run : a Run, CaptureView or CountedPairs (scores captured)
    covariates : key covariates (covariates.COVARIATES or a subset; None for none)
    terms : "parallel" (β only) or "all" (every coefficient, e.g. for H3)
    knots : spline knots on log(1 + d)
    prompt : the prompt id written into the table
    **count_kwargs : sinks, exclude_sinks, labels

    Returns
    -------
    pandas.DataFrame: metric "M2", variant "per_head" (one row per layer × head × term,
    plus the prompt row: the mean over heads of β) and "pooled" (layer = head = −1: one
    fit with head × query effects and common slopes). ``estimate`` is the coefficient
    (β on the log scale: ratio = e^β), ``se`` its classical standard error, ``df`` the
    residual degrees of freedom.
    """
    if terms not in ("parallel", "all"):
        raise ValueError(f"terms must be 'parallel' or 'all', got {terms!r}")
    pairs = _pairs(run, count_kwargs)
    view = pairs.view
    fit, names = regression_fit(pairs, covariates, knots)
    lab = torch.from_numpy(pairs.key_parallel)
    n_par = (pairs.include & lab).sum((-1, -2)).reshape(-1).numpy()
    return frame(regression_blocks(view, fit, names, n_par, terms), prompt=prompt,
                 kind=view.kind, encoding=view.encoding, sinks_excluded=pairs.sinks_excluded)


def regression_blocks(view, fit: WithinFit, names: list[str], n_par: np.ndarray,
                      terms: str = "parallel") -> list[dict]:
    """The M2 rows of a fit of every (layer, head) of ``view`` (:func:`regression_fit`)
    with ``n_par`` [L·H] counted parallel pairs per head: per term, the per-head rows
    and the prompt row (mean over heads), then the pooled row."""
    if terms not in ("parallel", "all"):
        raise ValueError(f"terms must be 'parallel' or 'all', got {terms!r}")
    L, H = len(view.layers), len(view.heads)
    wanted = range(len(names)) if terms == "all" else [len(names) - 1]
    layer = np.repeat(np.asarray(view.layers, dtype=np.int64), H)
    head = np.tile(np.asarray(view.heads, dtype=np.int64), L)
    blocks = []
    for j in wanted:
        finite = np.isfinite(fit.coef[:, j])
        mean = float(fit.coef[finite, j].mean()) if finite.any() else float("nan")
        blocks.append(block(
            "M2", "per_head", np.append(layer, ALL), np.append(head, ALL),
            np.append(fit.coef[:, j], mean), np.append(fit.se[:, j], np.nan), term=names[j],
            n_queries=np.append(fit.n_queries, fit.n_queries.max(initial=0)),
            n_pairs=np.append(fit.n_pairs, fit.n_pairs.sum()),
            n_parallel_pairs=np.append(n_par, n_par.sum()), df=np.append(fit.df, np.nan)))
        blocks.append(block(
            "M2", "pooled", ALL, ALL, fit.pooled_coef[j], fit.pooled_se[j], term=names[j],
            n_queries=fit.n_queries.max(initial=0), n_pairs=fit.n_pairs.sum(),
            n_parallel_pairs=n_par.sum(), df=fit.pooled_df))
    return blocks
