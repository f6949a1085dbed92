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
from dataclasses import dataclass, field

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


@dataclass
class PairGroup:
    """Heads that count the same (query, key) pairs, with their responses demeaned within
    each query over those pairs: what every within-query fit of these heads shares,
    whatever its regressors. Built by :func:`pair_groups`.

    Attributes
    ----------
    heads : [h] rows of the response tensor the group holds, ascending
    qi, ki : [n] query and key index of each counted pair, query-major
    nq : [Q] counted pairs per query
    yd : [h, n] f64 responses demeaned within queries
    yty : [h] Σ yd²
    """

    heads: np.ndarray
    qi: torch.Tensor
    ki: torch.Tensor
    nq: torch.Tensor
    yd: torch.Tensor
    yty: np.ndarray

    @property
    def n(self) -> int:
        return int(self.qi.numel())

    def demean(self, x: torch.Tensor) -> torch.Tensor:
        """[n, p] regressors of the group's pairs (``x``: [Q, K, p]) demeaned within
        queries."""
        xr = x[self.qi, self.ki]
        xbar = torch.zeros(len(self.nq), xr.shape[1], dtype=torch.float64).index_add_(
            0, self.qi, xr)
        return xr - (xbar / self.nq.clamp(min=1)[:, None].double())[self.qi]


def pair_groups(y: torch.Tensor, masks, heads) -> list[PairGroup]:
    """One :class:`PairGroup` per pattern: ``masks[g]`` ([Q, K] bool) the pairs the heads
    ``heads[g]`` (rows of ``y``, [B, Q, K]) count. A head may sit in several groups (the
    same head counted under two rules)."""
    y = y.double()
    B, Q, K = y.shape
    flat = y.reshape(B, Q * K)
    out = []
    for mask, rows in zip(masks, heads, strict=True):
        rows = np.asarray(rows, dtype=np.int64)
        qi, ki = torch.nonzero(mask, as_tuple=True)
        nq = mask.sum(1)
        cols = qi * K + ki
        if len(rows) == B and np.array_equal(rows, np.arange(B)):
            yr = flat.index_select(1, cols)
        else:  # (the gather is the same either way round; the smaller copy first)
            yr = flat.index_select(0, torch.from_numpy(rows)).index_select(1, cols)
        ybar = torch.zeros(len(rows), Q, dtype=torch.float64).index_add_(1, qi, yr)
        yd = yr - (ybar / nq.clamp(min=1).double())[:, qi]
        out.append(PairGroup(rows, qi, ki, nq, yd, (yd * yd).sum(1).numpy()))
    return out


@dataclass
class GroupFit:
    """The within-query fit of some heads of one :class:`PairGroup` (rows ``rows`` of the
    group): per-head coefficients and the sums the pooled fit adds up."""

    rows: np.ndarray
    n: int
    n_q: int
    gram: np.ndarray
    xty: np.ndarray
    yty: np.ndarray
    df: float
    coef: np.ndarray
    se: np.ndarray
    influence: np.ndarray | None


def fit_group(group: PairGroup, xd: torch.Tensor, rows: np.ndarray | None = None,
              clusters: np.ndarray | None = None, n_clusters: int = 0,
              queries: np.ndarray | None = None) -> GroupFit | None:
    """Least squares of the group's demeaned responses (``rows`` of it, default all) on
    its demeaned regressors ``xd`` ([n, p], :meth:`PairGroup.design`), restricted to the
    pairs of ``queries`` ([Q] bool) when given (whole queries: the demeaning is
    unchanged). ``clusters`` ([Q]) adds each cluster's influence on the last
    coefficient. None when no pair counts."""
    p = xd.shape[1]
    yd, yty, qi, nq = group.yd, group.yty, group.qi, group.nq
    if rows is not None:
        index = torch.from_numpy(rows)
        yd, yty = yd.index_select(0, index), yty[rows]
    else:
        rows = np.arange(len(group.heads))
    if queries is not None:
        keep = torch.from_numpy(queries)
        sub = keep[qi]
        if not bool(sub.all()):
            idx = torch.nonzero(sub).flatten()
            yd, xd, qi = yd.index_select(1, idx), xd.index_select(0, idx), qi[idx]
            yty = (yd * yd).sum(1).numpy()
        nq = torch.where(keep, nq, torch.zeros((), dtype=nq.dtype))
    n = int(qi.numel())
    if n == 0:
        return None
    n_q = int((nq > 0).sum())
    gram = (xd.T @ xd).numpy()
    xty = (yd @ xd).numpy()  # (head, p)
    h = len(rows)
    sol = solve_within(gram, xty, yty, n, n_q)
    influence = np.full((h, n_clusters), np.nan) if clusters is not None else None
    if influence is not None and sol.kept and sol.kept[-1] == p - 1:
        # Residuals of each head, then each pair's share of the last coefficient, summed
        # per cluster.
        xk = xd[:, sol.kept].numpy()
        resid = yd.numpy() - sol.beta @ xk.T  # (head, pair)
        lever = xk @ sol.inv[:, -1]  # (pair,)
        onehot = np.zeros((n, n_clusters))
        onehot[np.arange(n), np.asarray(clusters)[qi.numpy()]] = 1.0
        influence = (resid * lever) @ onehot
    return GroupFit(rows, n, n_q, gram, xty, yty, sol.df, sol.coef, sol.se, influence)


@dataclass
class Solution:
    """The solved normal equations of one group: kept columns, (X'X)⁻¹ over them, β
    ([h, len(kept)]) and the per-head coef / se ([h, p], NaN where not kept)."""

    kept: list[int]
    inv: np.ndarray | None
    beta: np.ndarray | None
    coef: np.ndarray
    se: np.ndarray
    df: float


def solve_within(gram: np.ndarray, xty: np.ndarray, yty: np.ndarray, n: int,
                 n_q: int) -> Solution:
    """Coefficients and classical SEs of within-query fits from their sums: ``gram``
    [p, p] = X̃'X̃, ``xty`` [h, p] = ỹ'X̃ per head, ``yty`` [h], over ``n`` pairs of
    ``n_q`` queries (X̃, ỹ demeaned within queries). Columns are selected by
    :func:`select_columns`."""
    h, p = xty.shape
    kept, inv = _candidate_inverse(gram)
    if inv is not None and len(kept) == p:  # every column kept
        xk = xty
    else:
        if inv is None:  # a candidate column is a combination of others: the greedy way
            kept = select_columns(gram)
            if not kept:
                return Solution(kept, None, None, np.full((h, p), np.nan),
                                np.full((h, p), np.nan), float(n - n_q))
            inv = spd_inverse(gram[np.ix_(kept, kept)])
        xk = xty[:, kept]
    beta = xk @ inv
    rss = yty - np.einsum("bp,bp->b", beta, xk)
    dof = n - n_q - len(kept)
    sigma2 = np.where(dof > 0, np.maximum(rss, 0.0) / max(dof, 1), np.nan)
    se_kept = np.sqrt(sigma2[:, None] * np.diag(inv)[None, :])
    if len(kept) == p:
        return Solution(kept, inv, beta, beta, se_kept, float(dof))
    coef = np.full((h, p), np.nan)
    se = np.full((h, p), np.nan)
    coef[:, kept] = beta
    se[:, kept] = se_kept
    return Solution(kept, inv, beta, coef, se, float(dof))


def _candidate_inverse(gram: np.ndarray, tol: float = COLLINEAR_TOL
                       ) -> tuple[list[int], np.ndarray | None]:
    """:func:`select_columns`' fast path with its factor reused: the candidate columns
    (own sum of squares above ``tol`` times the largest) and, when each Cholesky pivot of
    their Gram matrix is above ``tol`` times its column's own (so that select_columns
    keeps exactly them), (X'X)⁻¹ over them as :func:`spd_inverse` gives it; else None
    (some candidate is a combination of others, or there is none)."""
    p = gram.shape[0]
    if not p:
        return [], None
    diag = gram.diagonal()
    scale = max(float(np.abs(diag).max()), 1e-300)
    cand = diag > tol * scale
    if cand.all():
        kept, sub, own = list(range(p)), gram, diag
    else:
        kept = np.flatnonzero(cand).tolist()
        if not kept:
            return kept, None
        sub, own = gram[np.ix_(kept, kept)], diag[kept]
    try:
        chol = np.linalg.cholesky(sub)
    except np.linalg.LinAlgError:
        return kept, None
    if not (chol.diagonal() ** 2 > tol * own).all():
        return kept, None
    linv = np.linalg.inv(chol)
    return kept, linv.T @ linv


@dataclass
class ClusterStats:
    """Sums of a group's within-query fit per cluster of queries (e.g. per query step),
    for some rows (heads) of the group: every fit on a subset of the regressors, on the
    queries of the first clusters, or with regressors split by cluster, follows from them
    without touching the pairs again (:func:`fit_columns`).

    Attributes
    ----------
    rows : [h] rows of the group
    gram : [C, p, p] X̃'X̃ of each cluster's pairs
    xty : [C, h, p] ỹ'X̃
    yty : [C, h] ỹ'ỹ
    n, n_q : [C] pairs, and queries with a pair
    """

    rows: np.ndarray
    gram: np.ndarray
    xty: np.ndarray
    yty: np.ndarray
    n: np.ndarray
    n_q: np.ndarray
    _prefix: tuple | None = field(default=None, repr=False)

    def first(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """(gram, xty, yty, n, n_q) summed over the first ``c`` clusters."""
        if self._prefix is None:
            self._prefix = tuple(np.cumsum(a, axis=0) for a in
                                 (self.gram, self.xty, self.yty, self.n, self.n_q))
        if c == 0:
            return (np.zeros(self.gram.shape[1:]), np.zeros(self.xty.shape[1:]),
                    np.zeros(self.yty.shape[1:]), 0, 0)
        g, xy, yy, n, nq = (a[c - 1] for a in self._prefix)
        return g, xy, yy, int(n), int(nq)


def cluster_stats(group: PairGroup, xd: torch.Tensor, clusters: np.ndarray,
                  n_clusters: int, rows: np.ndarray | None = None) -> ClusterStats:
    """:class:`ClusterStats` of ``group`` (its rows ``rows``, default all) with demeaned
    regressors ``xd`` ([n, p]) and ``clusters`` ([Q] cluster of each query)."""
    yd = group.yd.numpy() if rows is None else group.yd.numpy()[rows]
    rows = np.arange(len(group.heads)) if rows is None else rows
    x = xd.numpy()
    p = x.shape[1]
    clusters = np.asarray(clusters)
    cl = clusters[group.qi.numpy()]
    if np.any(np.diff(cl) < 0):  # pairs in cluster order (they come in query order)
        order = np.argsort(cl, kind="stable")
        cl, x, yd = cl[order], x[order], yd[:, order]
    bounds = np.searchsorted(cl, np.arange(n_clusters + 1))
    gram = np.zeros((n_clusters, p, p))
    xty = np.zeros((n_clusters, len(rows), p))
    yty = np.zeros((n_clusters, len(rows)))
    for c in range(n_clusters):
        a, b = bounds[c], bounds[c + 1]
        if b > a:
            xc, yc = x[a:b], yd[:, a:b]
            gram[c] = xc.T @ xc
            xty[c] = yc @ xc
            yty[c] = np.einsum("hn,hn->h", yc, yc)
    nq = group.nq.numpy()
    n_q = np.bincount(clusters[nq > 0], minlength=n_clusters)[:n_clusters]
    return ClusterStats(rows, gram, xty, yty, np.diff(bounds), n_q)


def fit_from_stats(stats: ClusterStats, gram: np.ndarray, xty: np.ndarray, yty: np.ndarray,
                   n: int, n_q: int, influence_of=None) -> GroupFit | None:
    """A :class:`GroupFit` from summed statistics (see :func:`solve_within`);
    ``influence_of(solution)`` gives the [h, C] cluster influences when wanted."""
    if n == 0:
        return None
    sol = solve_within(gram, xty, yty, n, n_q)
    influence = influence_of(sol) if influence_of is not None else None
    return GroupFit(stats.rows, n, n_q, gram, xty, yty, sol.df, sol.coef, sol.se, influence)


def fit_columns(stats: ClusterStats, cols, clusters: int | None = None,
                influence: bool = False) -> GroupFit | None:
    """The fit on regressor columns ``cols`` of ``stats`` (the effect of interest last)
    over the queries of the first ``clusters`` clusters (default all); ``influence``:
    each cluster's influence on the last coefficient, 0 for the clusters left out, as
    :func:`fit_group` gives it."""
    cols = np.asarray(cols)
    C = len(stats.n)
    c = C if clusters is None else clusters
    g, xty, yty, n, n_q = stats.first(c)

    def influence_of(sol: Solution) -> np.ndarray:
        out = np.full((len(stats.rows), C), np.nan)
        if sol.kept and sol.kept[-1] == len(cols) - 1:
            u = np.zeros(stats.gram.shape[1])
            u[cols[sol.kept]] = sol.inv[:, -1]
            own = stats.xty[:c] @ u  # (cluster, head)
            fitted = stats.gram[:c, cols[sol.kept]] @ u  # (cluster, kept)
            out[:, :c] = own.T - sol.beta @ fitted.T
            out[:, c:] = 0.0
        return out

    return fit_from_stats(stats, g[np.ix_(cols, cols)], xty[:, cols], yty, n, n_q,
                          influence_of if influence else None)


def collect_fits(parts, num_heads: int, p: int, n_clusters: int | None = None,
                 pooled: bool = True) -> WithinFit:
    """A :class:`WithinFit` of ``num_heads`` heads from group fits: ``parts`` lists
    (GroupFit or None, positions) with ``positions[i]`` the head that row i of the fit
    is; the pooled fit adds the parts up in order. Heads no part fills have no pair.
    ``pooled=False``: the pooled fit is not computed (its fields are NaN)."""
    coef = np.full((num_heads, p), np.nan)
    se = np.full((num_heads, p), np.nan)
    df = np.zeros(num_heads)
    n_pairs = np.zeros(num_heads, dtype=np.int64)
    n_queries = np.zeros(num_heads, dtype=np.int64)
    influence = np.full((num_heads, n_clusters), np.nan) if n_clusters is not None else None
    pooled_xtx = np.zeros((p, p))
    pooled_xty = np.zeros(p)
    pooled_yty = 0.0
    pooled_n = 0
    pooled_q = 0
    for fit, hs in parts:
        if fit is None or not len(hs):
            continue
        n_pairs[hs] = fit.n
        n_queries[hs] = fit.n_q
        df[hs] = fit.df
        coef[hs] = fit.coef
        se[hs] = fit.se
        if influence is not None and fit.influence is not None:
            influence[hs] = fit.influence
        if not pooled:
            continue
        pooled_xtx += fit.gram * len(hs)
        pooled_xty += fit.xty.sum(0)
        pooled_yty += float(fit.yty.sum())
        pooled_n += fit.n * len(hs)
        pooled_q += fit.n_q * len(hs)

    pooled_coef = np.full(p, np.nan)
    pooled_se = np.full(p, np.nan)
    if not pooled:
        return WithinFit(coef, se, df, n_pairs, n_queries, pooled_coef, pooled_se, np.nan,
                         influence)
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


def distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct rows of a 2-D array in order of first appearance, and each row's
    index among them (a dictionary of the rows' bytes: for a few hundred heads much
    faster than sorting them)."""
    rows = np.ascontiguousarray(rows)
    index: dict[bytes, int] = {}
    which = np.empty(len(rows), dtype=np.int64)
    distinct = []
    for b, row in enumerate(rows):
        key = row.tobytes()
        g = index.get(key)
        if g is None:
            g = index[key] = len(distinct)
            distinct.append(row)
        which[b] = g
    return which, distinct


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
    x = x.double()
    B, Q, K = y.shape
    p = x.shape[-1]
    n_clusters = int(clusters.max()) + 1 if clusters is not None and len(clusters) else 0
    if Q * K == 0:  # no generated query or key (e.g. EOS at the first step): nothing counts
        groups = []
    else:
        patterns, group = head_patterns(w)
        groups = pair_groups(y, [patterns[g].reshape(Q, K) for g in range(patterns.shape[0])],
                             [torch.nonzero(group == g).flatten().numpy()
                              for g in range(patterns.shape[0])])
    parts = [(fit_group(g, g.demean(x), clusters=clusters, n_clusters=n_clusters), g.heads)
             for g in groups]
    return collect_fits(parts, B, p, n_clusters if clusters is not None else None)


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
