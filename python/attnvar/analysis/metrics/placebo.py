"""The placebo of the primary metric, many label draws at once.

A placebo relabels random steps of a run that has no parallel structure (a ``top_only``
replay) as parallel and asks whether the metric finds an effect; under such labels it
must find one at the test's nominal rate. Only the labels change between draws: the
counted pairs, the distances and the scores do not. So the distance-matched contrast of
every draw is one projection (Frisch–Waugh–Lovell): with the within-query demeaned
distance dummies A of a head group, scores ỹ and a draw's labels p̃ both residualised on
A, δ = ỹ·p̃ / p̃·p̃ — the last coefficient :func:`attnvar.metrics.fixed_effects.fit_within_query`
would give, for all draws with one matrix product. Two hundred draws of a 20-step run
cost milliseconds instead of a fit each.

:func:`placebo_contrasts` assumes the counted pairs do not depend on the labels, which
holds for runs whose steps have one member each (``top_only`` replays): there are no
siblings for the labels to hide.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .contrast import contrast_estimates, distance_levels
from .counting import CountedPairs
from .fixed_effects import COLLINEAR_TOL, select_columns, spd_inverse


def placebo_labels_matrix(pairs: CountedPairs, n_labelled: int, draws: int,
                          rng: np.random.Generator) -> np.ndarray:
    """[draws, K] key labels: in each draw ``n_labelled`` generated steps of the run
    (uniformly, without replacement) are parallel, every key slot of a chosen step too."""
    view = pairs.view
    steps = np.unique(view.step[view.step >= 0])
    n = min(int(n_labelled), len(steps))
    out = np.zeros((draws, len(pairs.key_step)), dtype=bool)
    for d in range(draws):
        out[d] = np.isin(pairs.key_step, rng.choice(steps, size=n, replace=False))
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
    ``contrast_estimates(replace(pairs, key_parallel=labels[d]), True).prompt_estimate``."""
    L, H, Q, K = pairs.shape
    B = L * H
    draws = labels.shape[0]
    index, levels = distance_levels(pairs)
    n_dist = max(len(levels) - 1, 0)
    y_all = pairs.values("scores").reshape(B, Q, K)
    w_all = pairs.include.reshape(B, Q, K)
    coef = np.full((B, draws), np.nan)
    if Q * K == 0:
        return np.full(draws, np.nan)
    lab = torch.from_numpy(labels.T.astype(np.float64))  # (K, D)
    patterns, group = torch.unique(w_all.reshape(B, -1), dim=0, return_inverse=True)
    for g in range(patterns.shape[0]):
        heads = torch.nonzero(group == g).flatten()
        wg = patterns[g].reshape(Q, K)
        qi, ki = torch.nonzero(wg, as_tuple=True)
        if qi.numel() == 0:
            continue
        nq = wg.sum(1)
        dummies = torch.zeros(qi.numel(), n_dist + 1, dtype=torch.float64)
        lev = torch.from_numpy(index)[qi, ki]
        hit = lev >= 1
        dummies[torch.nonzero(hit).flatten(), lev[hit] - 1] = 1.0
        a = _demean(dummies[:, :n_dist], qi, nq)
        p = _demean(lab[ki], qi, nq)  # (pairs, D)
        y = _demean(y_all[heads][:, qi, ki].T, qi, nq)  # (pairs, heads)
        # The column selection of fit_within_query, with the labels as the last column:
        # distance columns first (they do not depend on the labels), then each draw's.
        gram_a = (a.T @ a).numpy()
        own_p = (p * p).sum(0).numpy()
        scale = max(float(np.max(np.diag(gram_a), initial=0.0)), 1e-300)
        kept = select_columns(gram_a) if n_dist else []
        if kept:
            ak = a[:, kept]
            inv = torch.from_numpy(spd_inverse(gram_a[np.ix_(kept, kept)]))
            p = p - ak @ (inv @ (ak.T @ p))
            y = y - ak @ (inv @ (ak.T @ y))
        resid_p = (p * p).sum(0).numpy()
        ok = (own_p > COLLINEAR_TOL * np.maximum(scale, own_p)) & (resid_p > COLLINEAR_TOL * own_p)
        beta = (y.T @ p).numpy() / np.where(ok, resid_p, 1.0)[None, :]
        coef[np.ix_(heads.numpy(), np.flatnonzero(ok))] = beta[:, ok]
    finite = np.isfinite(coef)
    with np.errstate(invalid="ignore"):
        return np.where(finite.any(0), np.nansum(coef, 0) / finite.sum(0), np.nan)


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


__all__ = ["matched_under_labels", "placebo_contrasts", "placebo_labels_matrix"]
