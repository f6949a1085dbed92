"""Least squares with query fixed effects, batched over heads.

The model, per head b: y_bqk = φ_bq + x_qkᵀθ_b + ε over the counted pairs (w_bqk).
The query effects φ are removed by demeaning y and x within each query (the within
estimator); the normal equations of the demeaned problem then give θ. Heads whose
counted pairs are identical share one demeaned design, so a prompt with 270 heads and a
handful of distinct sink patterns costs a handful of factorisations.

Columns that are constant within every query, or a linear combination of columns
before them, are dropped (their coefficients are NaN), in column order: put the effect
of interest last, so it is reported only when it is identified beyond the other terms.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

COLLINEAR_TOL = 1e-9


@dataclass
class WithinFit:
    """Coefficients of one batch of within-query fits.

    Attributes
    ----------
    coef, se : [B, p] per head (NaN for dropped or unidentified columns)
    df : [B] residual degrees of freedom (pairs − queries − kept columns)
    n_pairs, n_queries : [B] counted pairs and queries with at least one pair
    pooled_coef, pooled_se : [p] one fit over all heads (head × query fixed effects,
        common slopes)
    pooled_df : residual degrees of freedom of the pooled fit
    influence : [B, G] with ``clusters`` given: each cluster's contribution to the last
        coefficient of each head, Σ_{pairs in g} [(X'X)⁻¹ x_pair]_last · e_pair, so that
        Σ_g influence² is the cluster-robust (sandwich) variance without small-sample
        correction; NaN for heads whose last coefficient is not identified
    """

    coef: np.ndarray
    se: np.ndarray
    df: np.ndarray
    n_pairs: np.ndarray
    n_queries: np.ndarray
    pooled_coef: np.ndarray
    pooled_se: np.ndarray
    pooled_df: float
    influence: np.ndarray | None = None


def select_columns(gram: np.ndarray, tol: float = COLLINEAR_TOL) -> list[int]:
    """Greedy, in column order: keep a column when its residual sum of squares given the
    kept ones is above ``tol`` times its own (and its own is not ~0)."""
    p = gram.shape[0]
    diag = np.diag(gram)
    scale = max(float(np.max(np.abs(diag), initial=0.0)), 1e-300)
    candidates = [j for j in range(p) if diag[j] > tol * scale]
    # Fast path: Cholesky's pivots L_jj² are the residual sums of squares of each column
    # given the ones before it, i.e. the greedy criterion, when no column is dropped.
    try:
        chol = np.linalg.cholesky(gram[np.ix_(candidates, candidates)])
        if np.all(np.diag(chol) ** 2 > tol * diag[candidates]):
            return candidates
    except np.linalg.LinAlgError:
        pass
    kept: list[int] = []
    for j in range(p):
        own = gram[j, j]
        if own <= tol * scale:
            continue
        if kept:
            g_ss = gram[np.ix_(kept, kept)]
            g_sj = gram[kept, j]
            resid = own - g_sj @ np.linalg.solve(g_ss, g_sj)
        else:
            resid = own
        if resid > tol * own:
            kept.append(j)
    return kept


def spd_inverse(gram: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive-definite Gram matrix (columns already selected to
    be independent) through its Cholesky factor. Cholesky and a triangular inverse, not an
    eigendecomposition: for these small matrices threaded LAPACK eigensolvers cost
    milliseconds on a busy machine where this costs microseconds."""
    linv = np.linalg.inv(np.linalg.cholesky(gram))
    return linv.T @ linv


_PATTERNS: OrderedDict = OrderedDict()
_PATTERNS_KEPT = 16


def head_patterns(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct [Q·K] pair patterns of the heads of ``w`` ([B, Q, K] bool) and each
    head's pattern index (torch.unique over heads). One run's metrics fit many models on
    the same counted pairs, so the last few results are kept, keyed by the tensor's
    storage, shape and version counter; the entry holds the tensor itself, so its storage
    cannot be freed and reused by another tensor while the entry exists."""
    key = (w.data_ptr(), tuple(w.shape), tuple(w.stride()), w._version, w.dtype)
    hit = _PATTERNS.get(key)
    if hit is not None:
        _PATTERNS.move_to_end(key)
        return hit[1], hit[2]
    patterns, group = torch.unique(w.reshape(w.shape[0], -1), dim=0, return_inverse=True)
    _PATTERNS[key] = (w, patterns, group)
    if len(_PATTERNS) > _PATTERNS_KEPT:
        _PATTERNS.popitem(last=False)
    return patterns, group


def fit_within_query(y: torch.Tensor, w: torch.Tensor, x: torch.Tensor,
                     clusters: np.ndarray | None = None) -> WithinFit:
    """Within-query least squares for every head, plus the pooled fit.

    Parameters
    ----------
    y : [B, Q, K] responses (any value where ``w`` is False)
    w : [B, Q, K] bool, pairs that count
    x : [Q, K, p] regressors shared by all heads
    clusters : [Q] int cluster index per query (0..G−1, e.g. the query's step); when
        given, the per-cluster influence on the last coefficient is returned

    Returns
    -------
    WithinFit
    """
    y = y.double()
    x = x.double()
    B, Q, K = y.shape
    p = x.shape[-1]
    coef = np.full((B, p), np.nan)
    se = np.full((B, p), np.nan)
    df = np.zeros(B)
    n_pairs = np.zeros(B, dtype=np.int64)
    n_queries = np.zeros(B, dtype=np.int64)
    pooled_xtx = np.zeros((p, p))
    pooled_xty = np.zeros(p)
    pooled_yty = 0.0
    pooled_n = 0
    pooled_q = 0
    n_clusters = int(clusters.max()) + 1 if clusters is not None and len(clusters) else 0
    influence = np.full((B, n_clusters), np.nan) if clusters is not None else None

    if Q * K == 0:  # no generated query or key (e.g. EOS at the first step): nothing counts
        patterns, group = w.reshape(B, 0)[:0], torch.zeros(B, dtype=torch.long)
    else:
        patterns, group = head_patterns(w)
    for g in range(patterns.shape[0]):
        heads = torch.nonzero(group == g).flatten()
        wg = patterns[g].reshape(Q, K)
        nq = wg.sum(1)  # (query,)
        qi, ki = torch.nonzero(wg, as_tuple=True)
        if qi.numel() == 0:
            continue
        xr = x[qi, ki]  # (pair, p)
        xbar = torch.zeros(Q, p, dtype=torch.float64).index_add_(0, qi, xr)
        xd = xr - (xbar / nq.clamp(min=1)[:, None].double())[qi]
        yr = y[heads][:, qi, ki]  # (head, pair)
        ybar = torch.zeros(len(heads), Q, dtype=torch.float64).index_add_(1, qi, yr)
        yd = yr - (ybar / nq.clamp(min=1).double())[:, qi]
        gram = (xd.T @ xd).numpy()
        xty = (yd @ xd).numpy()  # (head, p)
        yty = (yd * yd).sum(1).numpy()
        n = int(qi.numel())
        n_q = int((nq > 0).sum())
        kept = select_columns(gram)
        hs = heads.numpy()
        n_pairs[hs] = n
        n_queries[hs] = n_q
        pooled_xtx += gram * len(hs)
        pooled_xty += xty.sum(0)
        pooled_yty += float(yty.sum())
        pooled_n += n * len(hs)
        pooled_q += n_q * len(hs)
        if not kept:
            df[hs] = n - n_q
            continue
        inv = spd_inverse(gram[np.ix_(kept, kept)])
        beta = xty[:, kept] @ inv
        rss = yty - np.einsum("bp,bp->b", beta, xty[:, kept])
        dof = n - n_q - len(kept)
        df[hs] = dof
        sigma2 = np.where(dof > 0, np.maximum(rss, 0.0) / max(dof, 1), np.nan)
        coef[np.ix_(hs, kept)] = beta
        se[np.ix_(hs, kept)] = np.sqrt(sigma2[:, None] * np.diag(inv)[None, :])
        if influence is not None and kept[-1] == p - 1:
            # Residuals of each head, then each pair's share of the last coefficient.
            resid = yd.numpy() - beta @ xd[:, kept].numpy().T  # (head, pair)
            lever = xd[:, kept].numpy() @ inv[:, -1]  # (pair,)
            cl = torch.as_tensor(clusters)[qi].numpy()
            contrib = np.zeros((len(hs), n_clusters))
            np.add.at(contrib.T, cl, (resid * lever).T)
            influence[hs] = contrib

    pooled_coef = np.full(p, np.nan)
    pooled_se = np.full(p, np.nan)
    kept = select_columns(pooled_xtx) if pooled_n else []
    pooled_df = float(pooled_n - pooled_q - len(kept))
    if kept:
        inv = spd_inverse(pooled_xtx[np.ix_(kept, kept)])
        beta = inv @ pooled_xty[kept]
        rss = pooled_yty - float(beta @ pooled_xty[kept])
        sigma2 = max(rss, 0.0) / pooled_df if pooled_df > 0 else np.nan
        pooled_coef[kept] = beta
        pooled_se[kept] = np.sqrt(sigma2 * np.diag(inv))
    return WithinFit(coef, se, df, n_pairs, n_queries, pooled_coef, pooled_se, pooled_df,
                     influence)


def mean_over_heads_se(coef: np.ndarray, influence: np.ndarray) -> float:
    """Cluster-robust SE of the mean over heads of one coefficient ([B] ``coef``), from the
    per-cluster influences ([B, G]) of :func:`fit_within_query`: the influences of the
    heads with a finite coefficient are averaged per cluster, then
    SE² = G/(G−1) · Σ_g ψ̄_g². Heads share their clusters (the query steps), so their
    correlation is kept; NaN with fewer than 2 clusters."""
    ok = np.isfinite(coef) & np.isfinite(influence).all(axis=1)
    G = influence.shape[1]
    if not ok.any() or G < 2:
        return float("nan")
    psi = influence[ok].mean(axis=0)
    return float(np.sqrt(G / (G - 1) * np.sum(psi**2)))
