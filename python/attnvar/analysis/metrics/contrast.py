"""M1 (within-query score contrast), M1m (mass ratio) and M1p (position level).

All read counted pairs (counting.py) and return tidy frames (frames.py): one row per
(layer, head) and a prompt row (layer = head = −1, the mean over heads).

- **M1 plain**: per query and head δ_i = mean_{P_i} s − mean_{N_i} s (queries with both
  sets non-empty).
- **M1 distance-matched**: all members of one step sit at one logical distance from a
  query, and a step is either parallel or not, so P and N never share a distance within
  one query. Matching is done across queries instead: s_ij = φ_i + ψ_{d_ij} + δ·[j ∈ P]
  + ε, with query effects φ and one effect ψ per distinct logical distance. δ compares P
  and N pairs at equal distances within query-demeaned scores; it is unbiased under any
  distance profile f(d).
- **M1m**: log(mean_P α / mean_N α) = LSE_P(s) − log|P| − LSE_N(s) + log|N| (``raw``,
  Jensen-biased when |P| ≠ |N|), and ``size_matched``: random subsets of equal size m =
  min(|P|, |N|) of P and N (``draws`` per query, averaged), where the log terms cancel.
- **M1p** (``position``): each parallel set's counted members combined into one key by
  LSE of their scores, against single (N) keys: δ_pos = mean over sets of LSE − mean_N s.
  If every member behaved like an independent token δ_pos ≈ mean log k; if a position
  kept its mass δ_pos ≈ 0. ``position_minus_log_k`` reports δ_pos − mean log k, so each
  hypothesis has a row whose null is 0; ``mean_log_k`` is a column of both.

Aggregation of the per-query metrics (M1 plain, M1m, M1p): ``weighting="step"``
(default) averages the queries of one step (the members of a set share their history,
hence their expected value), then the steps; ``weighting="query"`` averages the queries
directly. Each δ_i is unbiased under the null, but an average
whose weights depend on the labels is a ratio estimator, biased when scores depend on
distance: a parallel step adds queries to the denominator and moves the δ of the queries
after it. Toy null of docs/metrics.md (scores −1.5·log(1 + d) + noise), noise-free over
40,000 prompts: −0.039 (query weighting), −0.027 (step weighting); 0 with a flat
profile. Where distance matters, read the distance-matched variant beside it.
SE: over steps (or queries) per head; the prompt row's SE is over steps of the per-step
value averaged over heads.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .counting import CountedPairs, count_pairs
from .fixed_effects import fit_within_query, head_patterns, mean_over_heads_se
from .frames import HeadEstimates, frame, head_block


def _pairs(run: Any, kwargs: dict) -> CountedPairs:
    return run if isinstance(run, CountedPairs) else count_pairs(run, **kwargs)


def _sets(pairs: CountedPairs):
    inc = pairs.include
    lab = torch.from_numpy(pairs.key_parallel)
    return inc & lab, inc & ~lab


def _groups(pairs: CountedPairs, weighting: str) -> torch.Tensor:
    """[Q, G] one-hot: the aggregation unit of each query (its step, or itself)."""
    if weighting == "step":
        steps, index = np.unique(pairs.query_step, return_inverse=True)
        onehot = np.zeros((len(pairs.query_step), len(steps)))
        onehot[np.arange(len(index)), index] = 1.0
    elif weighting == "query":
        onehot = np.eye(len(pairs.query_step))
    else:
        raise ValueError(f"weighting must be 'step' or 'query', got {weighting!r}")
    return torch.from_numpy(onehot)


def _aggregate(per_query: torch.Tensor, valid: torch.Tensor, groups: torch.Tensor):
    """Mean over valid queries within each group, then mean and SE over the groups with
    a valid query, for [L, H, Q] values; also the prompt SE (group values averaged over
    heads). Returns (mean [L, H], se [L, H], valid queries [L, H], prompt SE)."""
    mean, se, nq, prompt_se = aggregate_batch(per_query[None], valid[None], groups)
    return mean[0], se[0], nq[0], prompt_se[0]


def aggregate_batch(per_query: torch.Tensor, valid: torch.Tensor, groups: torch.Tensor):
    """:func:`_aggregate` of a stack of [M, L, H, Q] values at once: mean, se and valid
    queries [M, L, H], and M prompt SEs."""
    zero = torch.zeros((), dtype=torch.float64)
    v = torch.where(valid, per_query, zero)
    count = valid.double() @ groups  # (M, L, H, G)
    has = count > 0
    g = torch.where(has, (v @ groups) / count.clamp(min=1), zero)
    n = has.sum(-1)
    mean = g.sum(-1) / n.clamp(min=1)
    dev = torch.where(has, g - mean[..., None], zero)
    se = ((dev * dev).sum(-1) / (n - 1).clamp(min=1) / n.clamp(min=1)).sqrt()
    mean = torch.where(n > 0, mean, torch.full_like(mean, math.nan))
    se = torch.where(n > 1, se, torch.full_like(se, math.nan))
    heads_per_group = has.sum((1, 2))  # (M, G)
    over_heads = g.sum((1, 2)) / heads_per_group.clamp(min=1)
    prompt_se = []
    for m in range(len(over_heads)):
        o = over_heads[m][heads_per_group[m] > 0]
        prompt_se.append(float(o.std() / math.sqrt(o.numel())) if o.numel() > 1 else math.nan)
    return mean.numpy(), se.numpy(), valid.sum(-1).numpy(), prompt_se


def _estimates(per_query, valid, groups, pairs, in_p, **extra) -> HeadEstimates:
    vq = valid[..., None]
    return estimates_from(per_query, valid, groups, (pairs.include & vq).sum((-1, -2)),
                          (in_p & vq).sum((-1, -2)), **extra)


def estimates_from(per_query, valid, groups, n_pairs, n_parallel_pairs,
                   **extra) -> HeadEstimates:
    """Per-head estimates of a per-query metric ([L, H, Q] values where ``valid``),
    aggregated over ``groups`` (:func:`_groups`), with the counted (parallel) pairs of
    the valid queries per head already summed ([L, H])."""
    mean, se, nq, prompt_se = _aggregate(per_query, valid, groups)
    return HeadEstimates(mean, se, nq, n_pairs.numpy(), n_parallel_pairs.numpy(),
                         prompt_se=prompt_se, extra=extra)


def plain_delta(s: torch.Tensor, in_p: torch.Tensor, in_n: torch.Tensor):
    """M1 plain per query, for scores ``s`` and key sets of any leading shape
    ([..., Q, K]): δ, |P|, |N| and whether both sets are non-empty."""
    n_p, n_n = in_p.sum(-1), in_n.sum(-1)
    delta = (s * in_p).sum(-1) / n_p.clamp(min=1) - (s * in_n).sum(-1) / n_n.clamp(min=1)
    return delta, n_p, n_n, (n_p > 0) & (n_n > 0)


def score_contrast(
    run: Any,
    distance_matched: bool = False,
    weighting: str = "step",
    prompt: str | None = None,
    **count_kwargs,
):
    """M1: the within-query score contrast δ = mean_P s − mean_N s, per head.

    Parameters
    ----------
    run : a Run, CaptureView or CountedPairs (scores captured)
    distance_matched : fit query and logical-distance fixed effects (see module doc)
    weighting : "step" or "query" (plain variant; see module doc)
    prompt : the prompt id written into the table
    **count_kwargs : sinks, exclude_sinks, labels (counting.count_pairs)

    Returns
    -------
    pandas.DataFrame (frames.COLUMNS); metric "M1", variant "plain" or
    "distance_matched"; estimate δ on the log scale.
    """
    pairs = _pairs(run, count_kwargs)
    view = pairs.view
    est = contrast_estimates(pairs, distance_matched, weighting)
    variant = "distance_matched" if distance_matched else "plain"
    return frame([head_block("M1", variant, view.layers, view.heads, est)], prompt=prompt,
                 kind=view.kind, encoding=view.encoding, sinks_excluded=pairs.sinks_excluded)


def contrast_estimates(
    pairs: CountedPairs,
    distance_matched: bool = False,
    weighting: str = "step",
) -> HeadEstimates:
    """M1 as arrays (no table): [L, H] estimates, SEs and counts plus the prompt value;
    for loops that evaluate it thousands of times (placebo, permutation, simulation)."""
    s = pairs.values("scores")
    in_p, in_n = _sets(pairs)
    if distance_matched:
        return _distance_matched(pairs, s, in_p)
    delta, _, _, valid = plain_delta(s, in_p, in_n)
    return _estimates(delta, valid, _groups(pairs, weighting), pairs, in_p)


def distance_levels(pairs: CountedPairs) -> tuple[np.ndarray, np.ndarray]:
    """[Q, K] level index of each pair's logical distance (rounded to 1e-6; −1 for pairs
    outside the rules) and the levels, most frequent first (level 0 is the reference)."""
    d = np.round(pairs.distance, 6)
    levels, inverse, counts = np.unique(d[pairs.base], return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    index = np.full(d.shape, -1)
    index[pairs.base] = rank[inverse]
    return index, levels[order]


def distance_design(pairs: CountedPairs, extra: int) -> tuple[np.ndarray, int]:
    """The [Q, K, n_dist + extra] design of a distance-matched fit: one dummy per logical
    distance but the most frequent (the query effects hold that level), then ``extra``
    zero columns for the caller's effects; and n_dist."""
    index, levels = distance_levels(pairs)
    n_dist = max(len(levels) - 1, 0)
    x = np.zeros((*index.shape, n_dist + extra))
    qi, ki = np.nonzero(index >= 1)
    x[qi, ki, index[qi, ki] - 1] = 1.0
    return x, n_dist


def _distance_matched(pairs: CountedPairs, s: torch.Tensor, in_p) -> HeadEstimates:
    L, H, Q, K = pairs.shape
    x, _ = distance_design(pairs, 1)  # a run without counted pairs: β only
    x[:, :, -1] = pairs.key_parallel[None, :]
    # Clusters: query steps (the members of a set share their history), as the SE of
    # every other M1 variant is over steps.
    _, step_index = np.unique(pairs.query_step, return_inverse=True)
    fit = fit_within_query(s.reshape(L * H, Q, K), pairs.include.reshape(L * H, Q, K),
                           torch.from_numpy(x), clusters=step_index)
    coef = fit.coef[:, -1]
    return HeadEstimates(coef.reshape(L, H), fit.se[:, -1].reshape(L, H),
                         fit.n_queries.reshape(L, H), fit.n_pairs.reshape(L, H),
                         in_p.sum((-1, -2)).numpy(),
                         prompt_se=mean_over_heads_se(coef, fit.influence))


def _masked_lse(s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(torch.where(mask, s, torch.full_like(s, -math.inf)), dim=-1)


def mass_ratio(
    run: Any,
    draws: int = 16,
    seed: int = 0,
    weighting: str = "step",
    prompt: str | None = None,
    **count_kwargs,
):
    """M1m: log(mean_P α / mean_N α) from scores, raw and against size-matched subsets.

    Parameters
    ----------
    run : a Run, CaptureView or CountedPairs (scores captured)
    draws : random size-matched subset pairs per query (the same subsets for all heads
        when their counted keys agree)
    seed : seed of the subsets
    weighting : "step" or "query" (see module doc)
    prompt : the prompt id written into the table
    **count_kwargs : sinks, exclude_sinks, labels

    Returns
    -------
    pandas.DataFrame, metric "M1m", variants "raw" and "size_matched".
    """
    pairs = _pairs(run, count_kwargs)
    view = pairs.view
    s = pairs.values("scores")
    in_p, in_n = _sets(pairs)
    raw, valid = raw_mass_ratio(s, in_p, in_n)
    groups = _groups(pairs, weighting)
    blocks = [head_block("M1m", "raw", view.layers, view.heads,
                         _estimates(raw, valid, groups, pairs, in_p))]
    L, H, Q, K = pairs.shape
    B = L * H
    # Heads differ only by their counted pairs (the sinks they exclude): the subsets of a
    # draw are chosen once per distinct pattern of counted pairs, not once per head.
    patterns, head_group = head_patterns(pairs.include.reshape(B, Q, K)) if Q * K else (
        torch.zeros(0, 0, dtype=torch.bool), torch.zeros(B, dtype=torch.long))
    e = matched_weights(s, pairs.include).reshape(B, Q, K)
    orders = draw_orders(Q, K, draws, seed)
    lab = torch.from_numpy(pairs.key_parallel)
    log_ratio = torch.zeros(B, draws, Q, dtype=torch.float64)
    for g in range(patterns.shape[0]):
        heads = torch.nonzero(head_group == g).flatten()
        log_ratio[heads] = matched_log_ratios(e[heads], patterns[g].reshape(Q, K), lab, orders)
    matched = average_draws(log_ratio.reshape(L, H, draws, Q), valid, draws)
    blocks.append(head_block("M1m", "size_matched", view.layers, view.heads,
                             _estimates(matched, valid, groups, pairs, in_p)))
    return frame(blocks, prompt=prompt, kind=view.kind, encoding=view.encoding,
                 sinks_excluded=pairs.sinks_excluded)


def raw_mass_ratio(s: torch.Tensor, in_p: torch.Tensor, in_n: torch.Tensor):
    """M1m raw per query (any leading shape): LSE_P − log|P| − LSE_N + log|N| where both
    sets are non-empty (0 elsewhere), and that validity."""
    n_p, n_n = in_p.sum(-1), in_n.sum(-1)
    valid = (n_p > 0) & (n_n > 0)
    raw = (_masked_lse(s, in_p) - torch.log(n_p.clamp(min=1).double())
           - _masked_lse(s, in_n) + torch.log(n_n.clamp(min=1).double()))
    return torch.where(valid, raw, torch.zeros((), dtype=raw.dtype)), valid


def matched_weights(s: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """exp(s − row max) over the counted keys, 0 elsewhere (any leading shape): each
    size-matched draw sums it over subsets (f64: no underflow for any realistic score
    range)."""
    if s.shape[-1] == 0:  # no generated key (EOS at the first step): nothing to draw from
        return torch.zeros_like(s)
    top = torch.where(counted, s, torch.full_like(s, -math.inf)).amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return torch.where(counted, (s - top).exp(), torch.zeros((), dtype=torch.float64))


def draw_orders(Q: int, K: int, draws: int, seed: int) -> torch.Tensor:
    """[draws, Q, K] one random key order per query and draw, shared by every head (and
    by both sink rules): the first m keys of P (and of N) in that order are a uniform
    random m-subset of each."""
    gen = torch.Generator().manual_seed(seed)
    if not draws:
        return torch.zeros(0, Q, K, dtype=torch.long)
    return torch.stack([torch.rand(Q, K, generator=gen).argsort(-1) for _ in range(draws)])


def matched_log_ratios(e: torch.Tensor, counted: torch.Tensor, lab: torch.Tensor,
                       orders: torch.Tensor) -> torch.Tensor:
    """[h, D, Q] log(mass of the P subset / mass of the N subset) of each draw, for heads
    whose counted pairs are ``counted`` ([Q, K]), from their weights ``e`` ([h, Q, K],
    :func:`matched_weights`): m = min(|P_i|, |N_i|) keys of each set, the first in the
    draw's order."""
    D, Q, K = orders.shape

    def first_m(keys: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        ordered = keys.expand(D, Q, K).gather(-1, orders)
        take = ordered & (ordered.cumsum(-1) <= m)
        return torch.zeros(D, Q, K, dtype=torch.bool).scatter_(-1, orders, take).double()

    in_p, in_n = counted & lab, counted & ~lab
    m = torch.minimum(in_p.sum(-1), in_n.sum(-1))[:, None]
    mass_p = torch.einsum("hqk,dqk->hdq", e, first_m(in_p, m))
    mass_n = torch.einsum("hqk,dqk->hdq", e, first_m(in_n, m))
    return (mass_p / mass_n).log()


def average_draws(log_ratio: torch.Tensor, valid: torch.Tensor, draws: int) -> torch.Tensor:
    """[..., Q] mean over draws of [..., D, Q] log ratios, 0 where not ``valid``."""
    zero = torch.zeros((), dtype=torch.float64)
    acc = torch.zeros(valid.shape, dtype=torch.float64)
    for d in range(draws):
        acc += torch.where(valid, log_ratio[..., d, :], zero)
    return acc / max(draws, 1)


def position_contrast(run: Any, weighting: str = "step", prompt: str | None = None,
                      **count_kwargs):
    """M1p: parallel sets combined into one key (LSE of members) against single keys.

    Parameters
    ----------
    run : a Run, CaptureView or CountedPairs (scores captured)
    weighting : "step" or "query" (see module doc)
    prompt : the prompt id written into the table
    **count_kwargs : sinks, exclude_sinks, labels

    Returns
    -------
    pandas.DataFrame, metric "M1p", variants "position" and "position_minus_log_k", with
    a ``mean_log_k`` column (mean over queries of the mean log of counted set sizes).
    """
    pairs = _pairs(run, count_kwargs)
    view = pairs.view
    s = pairs.values("scores")
    in_p, in_n = _sets(pairs)
    delta, log_k, valid = position_terms(s, in_p, in_n, pairs.key_step, pairs.key_parallel)
    groups = _groups(pairs, weighting)
    mean_log_k = _aggregate(log_k, valid, groups)[0]
    blocks = [
        head_block("M1p", "position", view.layers, view.heads,
                   _estimates(delta, valid, groups, pairs, in_p, mean_log_k=mean_log_k)),
        head_block("M1p", "position_minus_log_k", view.layers, view.heads,
                   _estimates(delta - log_k, valid, groups, pairs, in_p,
                              mean_log_k=mean_log_k)),
    ]
    return frame(blocks, prompt=prompt, kind=view.kind, encoding=view.encoding,
                 sinks_excluded=pairs.sinks_excluded)


def position_terms(s: torch.Tensor, in_p: torch.Tensor, in_n: torch.Tensor,
                   key_step: np.ndarray, key_parallel: np.ndarray):
    """M1p per query (any leading shape [..., Q, K]): δ_pos (each parallel set's counted
    members combined by LSE, their mean against the mean N score), the mean log of the
    counted set sizes, and where both are defined (0 elsewhere)."""
    *lead, Q, K = s.shape
    steps = np.unique(key_step[key_parallel])
    # Members of a set as a padded (set, width) table of key columns; pad = column K.
    width = max((int((key_step == t).sum()) for t in steps), default=0)
    table = np.full((len(steps), width), K)
    for i, t in enumerate(steps):
        cols = np.flatnonzero(key_step == t)
        table[i, : len(cols)] = cols
    idx = torch.from_numpy(table).reshape(-1)
    pad_mask = torch.cat([in_p, torch.zeros(*lead, Q, 1, dtype=torch.bool)], -1)
    pad_s = torch.cat([s, torch.zeros(*lead, Q, 1, dtype=torch.float64)], -1)
    grouped = pad_mask[..., idx].reshape(*lead, Q, len(steps), width)
    size = grouped.sum(-1).double()
    lse = _masked_lse(pad_s[..., idx].reshape(*lead, Q, len(steps), width), grouped)
    has = size > 0
    n_sets = has.sum(-1)
    n_n = in_n.sum(-1)
    valid = (n_sets > 0) & (n_n > 0)
    zero = torch.zeros((), dtype=torch.float64)
    pos_mean = torch.where(has, lse, zero).sum(-1) / n_sets.clamp(min=1)
    log_k = torch.where(has, size.clamp(min=1).log(), zero).sum(-1) / n_sets.clamp(min=1)
    single = (s * in_n).sum(-1) / n_n.clamp(min=1)
    delta = torch.where(valid, pos_mean - single, zero)
    return delta, torch.where(valid, log_k, zero), valid
