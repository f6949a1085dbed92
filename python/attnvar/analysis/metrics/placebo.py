"""The placebo of the primary metric, many label draws at once.

A placebo relabels random steps of a run that has no parallel structure (a ``top_only``
replay) as parallel and asks whether the metric finds an effect; under such labels it
must find one at the test's nominal rate. Only the labels change between draws: the
counted pairs, the distances and the scores do not. So the distance-matched contrast of
every draw is one projection (Frisch–Waugh–Lovell): with the within-query demeaned
distance dummies A of a head group, scores ỹ and a draw's labels p̃ both residualised on
A, δ = ỹ·p̃ / p̃·p̃ — the last coefficient :func:`attnvar.metrics.fixed_effects.fit_within_query`
would give. Labels are per key, so both terms reduce to sums over each key's pairs
(:func:`matched_under_labels`): every draw costs products with the [keys, draws] label
matrix, never a [pairs, draws] one. A thousand draws of a 20-step run cost milliseconds
instead of a fit each.

:func:`placebo_contrasts` assumes the counted pairs do not depend on the labels, which
holds for runs whose steps have one member each (``top_only`` replays): there are no
siblings for the labels to hide.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from .contrast import contrast_estimates, distance_levels
from .counting import CountedPairs
from .fixed_effects import COLLINEAR_TOL, distinct_rows, select_columns, spd_inverse


def placebo_labels_matrix(pairs: CountedPairs, n_labelled: int, draws: int,
                          rng: np.random.Generator) -> np.ndarray:
    """[draws, K] key labels: in each draw ``n_labelled`` generated steps of the run
    (uniformly, without replacement) are parallel, every key slot of a chosen step too."""
    view = pairs.view
    steps = np.unique(view.step[view.step >= 0])
    n = min(int(n_labelled), len(steps))
    # rng.choice of the steps' indices draws what rng.choice of the steps would.
    chosen = choice_rows(rng, len(steps), n, draws)
    keys_of = steps[:, None] == pairs.key_step[None, :]  # (step, key)
    return keys_of[chosen].any(1) if n else np.zeros((draws, len(pairs.key_step)), dtype=bool)


FLOYD_MAX_POPULATION = 10000  # rng.choice without replacement samples by Floyd's up to here


def choice_rows(rng: np.random.Generator, population: int, size: int,
                draws: int) -> np.ndarray:
    """[draws, size] int64: the rows ``draws`` calls of ``rng.choice(population, size,
    replace=False)`` return, in order, leaving ``rng`` where they would; below
    FLOYD_MAX_POPULATION the random numbers are drawn at once (:func:`_floyd_rows`), and
    the first two rows checked against rng.choice itself (a generator that samples
    otherwise gets rng.choice called row by row)."""
    if not draws or not size or population > FLOYD_MAX_POPULATION:
        return _choice_loop(rng, population, size, draws)
    start = rng.bit_generator.state
    probe = copy.deepcopy(rng)
    out = _floyd_rows(rng, population, size, draws)
    if all(np.array_equal(out[d], probe.choice(population, size=size, replace=False))
           for d in range(min(draws, 2))):
        return out
    rng.bit_generator.state = start
    return _choice_loop(rng, population, size, draws)


def _choice_loop(rng: np.random.Generator, population: int, size: int,
                 draws: int) -> np.ndarray:
    return np.array([rng.choice(population, size=size, replace=False) for _ in range(draws)],
                    dtype=np.int64).reshape(draws, size)


def _floyd_rows(rng: np.random.Generator, population: int, size: int,
                draws: int) -> np.ndarray:
    """:func:`choice_rows` (size ≥ 1) as rng.choice samples without replacement from a
    population up to FLOYD_MAX_POPULATION: each call takes ``size`` bounded integers for
    Floyd's sample (the t-th in [0, population − size + t]; one already taken is replaced
    by that bound), then ``size − 1`` for its shuffle (a Fisher–Yates from the last
    position down), each as ``rng.integers(0, bound, endpoint=True)`` draws it; so every
    draw's integers are taken in one call and the sampling is done across draws."""
    floyd = np.arange(population - size, population)
    shuffle = np.arange(size - 1, 0, -1)
    bounds = np.concatenate([floyd, shuffle])
    drawn = rng.integers(0, np.tile(bounds, draws), endpoint=True).reshape(draws, len(bounds))
    out = np.empty((draws, size), dtype=np.int64)
    for t, bound in enumerate(floyd):
        value = drawn[:, t]
        if t:
            value = np.where((out[:, :t] == value[:, None]).any(1), bound, value)
        out[:, t] = value
    rows = np.arange(draws)
    for s, i in enumerate(shuffle):
        j = drawn[:, size + s]
        swapped = out[rows, j]
        out[rows, j] = out[:, i]
        out[:, i] = swapped
    return out


def _demean(values: torch.Tensor, qi: torch.Tensor, n_per_query: torch.Tensor) -> torch.Tensor:
    """Within-query demeaning of [pairs, m] ``values`` (pairs listed by query ``qi``)."""
    sums = torch.zeros(len(n_per_query), values.shape[1], dtype=values.dtype)
    sums.index_add_(0, qi, values)
    return values - (sums / n_per_query.clamp(min=1)[:, None].to(values.dtype))[qi]


def matched_under_labels(pairs: CountedPairs, labels: np.ndarray) -> np.ndarray:
    """[D] prompt-level distance-matched M1 (mean over heads of the per-head δ) of
    ``pairs`` under each row of ``labels`` ([D, K] bool key labels); NaN for a draw
    where no head identifies δ. Equals
    ``contrast_estimates(replace(pairs, key_parallel=labels[d]), True).prompt_estimate``.

    Per group of heads counting the same pairs, with ỹ the scores residualised on the
    demeaned distance dummies A (ỹ sums to 0 within each query) and p a draw's labels
    demeaned within queries: ỹ·p̃ = ỹ·p = Σ_k (Σ of ỹ over key k's pairs)·label_k,
    p·p = Σ_q (c_q − c_q²/n_q) with c_q the labelled keys among query q's n_q, and
    p̃·p̃ = p·p − (A'p)'(A'A)⁻¹(A'p) with A'p = Σ_k (Σ of A over key k's pairs)·label_k:
    every draw's terms are products with the [K, D] labels, never a [pairs, D] array."""
    L, H, Q, K = pairs.shape
    B = L * H
    draws = labels.shape[0]
    index, levels = distance_levels(pairs)
    n_dist = max(len(levels) - 1, 0)
    if Q * K == 0:
        return np.full(draws, np.nan)
    y_all = pairs.values("scores").reshape(B, Q, K)
    w_all = pairs.include.reshape(B, Q, K)
    coef = np.full((B, draws), np.nan)
    lab = torch.from_numpy(labels.T.astype(np.float64))  # (K, D)
    which, patterns = distinct_rows(w_all.reshape(B, Q * K).numpy())
    for g, pattern in enumerate(patterns):
        heads = torch.from_numpy(np.flatnonzero(which == g))
        wg = torch.from_numpy(pattern.reshape(Q, K))
        qi, ki = torch.nonzero(wg, as_tuple=True)
        if qi.numel() == 0:
            continue
        nq = wg.sum(1)
        dummies = torch.zeros(qi.numel(), n_dist + 1, dtype=torch.float64)
        lev = torch.from_numpy(index)[qi, ki]
        hit = lev >= 1
        dummies[torch.nonzero(hit).flatten(), lev[hit] - 1] = 1.0
        a = _demean(dummies[:, :n_dist], qi, nq)
        y = _demean(y_all[heads][:, qi, ki].T, qi, nq)  # (pairs, heads)
        # The column selection of fit_within_query, with the labels as the last column:
        # distance columns first (they do not depend on the labels), then each draw's.
        gram_a = (a.T @ a).numpy()
        scale = max(float(np.max(np.diag(gram_a), initial=0.0)), 1e-300)
        kept = select_columns(gram_a) if n_dist else []
        counted = wg.double() @ lab  # (query, draw): labelled keys per query
        own_p = (counted - counted * counted / nq.clamp(min=1)[:, None].double()).sum(0)
        resid_p = own_p
        if kept:
            ak = a[:, kept]
            inv = torch.from_numpy(spd_inverse(gram_a[np.ix_(kept, kept)]))
            y = y - ak @ (inv @ (ak.T @ y))
            ap = _by_key(ak, ki, K).T @ lab  # (kept, draw)
            resid_p = own_p - (ap * (inv @ ap)).sum(0)
        own_p, resid_p = own_p.numpy(), resid_p.numpy()
        ok = (own_p > COLLINEAR_TOL * np.maximum(scale, own_p)) & (resid_p > COLLINEAR_TOL * own_p)
        beta = (_by_key(y, ki, K).T @ lab).numpy() / np.where(ok, resid_p, 1.0)[None, :]
        coef[np.ix_(heads.numpy(), np.flatnonzero(ok))] = beta[:, ok]
    finite = np.isfinite(coef)
    with np.errstate(invalid="ignore"):
        return np.where(finite.any(0), np.nansum(coef, 0) / finite.sum(0), np.nan)


def _by_key(values: torch.Tensor, ki: torch.Tensor, K: int) -> torch.Tensor:
    """[K, m] sums of [pairs, m] ``values`` over each key's pairs."""
    return torch.zeros(K, values.shape[1], dtype=values.dtype).index_add_(0, ki, values)


def placebo_contrasts(pairs: CountedPairs, n_labelled: int, draws: int,
                      rng: np.random.Generator, variant: str = "distance_matched") -> np.ndarray:
    """[draws] prompt-level M1 (``variant``: "distance_matched" or "plain") of ``pairs``
    under ``draws`` placebo labellings of ``n_labelled`` random steps each."""
    labels = placebo_labels_matrix(pairs, n_labelled, draws, rng)
    if variant == "distance_matched":
        return matched_under_labels(pairs, labels)
    if variant != "plain":
        raise ValueError(f"variant must be 'distance_matched' or 'plain', got {variant!r}")
    return np.array([contrast_estimates(dataclasses.replace(pairs, key_parallel=row),
                                        False, "step").prompt_estimate for row in labels])


__all__ = ["choice_rows", "matched_under_labels", "placebo_contrasts", "placebo_labels_matrix"]
