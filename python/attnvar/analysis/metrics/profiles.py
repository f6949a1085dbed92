"""Profiles of the within-query contrast, for the hypotheses (METHODS.md, H1 and H3).

All read counted pairs (counting.py), so the counting rules are the ones every metric
uses, and all are built from the same per-query contrast as M1 plain:
δ_i = mean_{P_i} s − mean_{N_i} s, per head, for queries with both sets non-empty.

- :func:`step_profile` — δ by query step (H1, and the max_steps dose–response: queries
  of step t only read keys of steps < t, so the profile truncated at T is what a run of
  T steps would give under deterministic selection), optionally with keys restricted to
  one phase (tercile of key steps). Per step: the mean over the step's valid queries per
  head, then over heads.
- :func:`class_contrasts` — δ within one token class (H3): parallel and non-parallel
  keys both restricted to the class, so the contrast compares like with like.
- :func:`distance_profile` — query-demeaned scores of P and N keys by logical distance,
  averaged over heads and queries (the distance profile figure).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import torch

from .contrast import contrast_estimates
from .counting import CountedPairs
from .covariates import token_covariates

PHASES = ("early", "middle", "late")


def phase_of(step: np.ndarray, num_steps: int) -> np.ndarray:
    """Tercile of each step among ``num_steps`` steps: 0 early, 1 middle, 2 late."""
    if num_steps <= 0:
        return np.zeros_like(step)
    return np.minimum((3 * np.asarray(step)) // num_steps, 2)


def _per_query_delta(pairs: CountedPairs,
                     include: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[L, H, Q] δ_i and its validity under a restricted ``include``."""
    s = pairs.values("scores")
    lab = torch.from_numpy(pairs.key_parallel)
    p, n = include & lab, include & ~lab
    n_p, n_n = p.sum(-1), n.sum(-1)
    zero = torch.zeros((), dtype=s.dtype)
    mean_p = torch.where(p, s, zero).sum(-1) / n_p.clamp(min=1)
    mean_n = torch.where(n, s, zero).sum(-1) / n_n.clamp(min=1)
    return mean_p - mean_n, (n_p > 0) & (n_n > 0)


def _by_step(delta: torch.Tensor, valid: torch.Tensor, query_step: np.ndarray) -> list[dict]:
    rows = []
    for t in np.unique(query_step):
        cols = torch.from_numpy(query_step == t)
        v = valid[:, :, cols]
        count = v.sum(-1)  # (L, H)
        has = count > 0
        if not bool(has.any()):
            continue
        head_mean = torch.where(v, delta[:, :, cols], torch.zeros((), dtype=delta.dtype)).sum(-1)
        head_mean = head_mean / count.clamp(min=1)
        rows.append({"query_step": int(t), "estimate": float(head_mean[has].mean()),
                     "n_queries": int(v.any((0, 1)).sum()), "n_heads": int(has.sum())})
    return rows


def step_profile(pairs: CountedPairs, phases: bool = True) -> pd.DataFrame:
    """δ by query step, for all keys and (``phases``) for keys of each key-step tercile.

    Returns
    -------
    DataFrame with key_phase ("all", "early", "middle", "late"), query_step,
    query_phase, estimate (log scale, mean over heads), n_queries, n_heads.
    """
    num_steps = int(pairs.view.step.max()) + 1 if (pairs.view.step >= 0).any() else 0
    selections = [("all", None)]
    if phases:
        key_phase = phase_of(pairs.key_step, num_steps)
        selections += [(name, key_phase == i) for i, name in enumerate(PHASES)]
    rows = []
    for name, keys in selections:
        include = pairs.include
        if keys is not None:
            include = include & torch.from_numpy(keys)
        delta, valid = _per_query_delta(pairs, include)
        for row in _by_step(delta, valid, pairs.query_step):
            rows.append({"key_phase": name, **row})
    out = pd.DataFrame(rows, columns=["key_phase", "query_step", "estimate", "n_queries",
                                      "n_heads"])
    out.insert(2, "query_phase",
               [PHASES[i] for i in phase_of(out["query_step"].to_numpy(), num_steps)]
               if len(out) else pd.Series(dtype=object))
    return out


def key_classes(pairs: CountedPairs) -> dict[str, np.ndarray]:
    """[K] bool masks of the H3 token classes over the counted key slots.

    Piece types (word_initial, continuation, punctuation, newline, …), closed-class and
    open-class word-initial pieces, and sibling rank (``rank_0``: top members and every
    non-parallel key; ``rank_1plus``: lower-ranked members, compared with all
    non-parallel keys since those have rank 0 by construction).
    """
    cov = token_covariates(pairs.view).iloc[pairs.key_slots]
    types = cov["piece_type"].astype(str).to_numpy()
    initial = types == "word_initial"
    closed = cov["closed_class"].to_numpy(dtype=bool)
    rank = cov["sibling_rank"].to_numpy()
    out = {f"piece:{t}": types == t for t in cov["piece_type"].cat.categories}
    out["word:closed_class"] = initial & closed
    out["word:open_class"] = initial & ~closed
    out["rank:0"] = rank <= 0
    out["rank:1plus"] = (rank >= 1) | ~pairs.key_parallel
    return out


def class_contrasts(pairs: CountedPairs) -> pd.DataFrame:
    """M1 (plain, step-weighted) within each token class of :func:`key_classes`.

    Returns
    -------
    DataFrame with class, estimate (prompt level: mean over heads), se (over steps),
    n_parallel_keys, n_other_keys (counted key slots of the class).
    """
    rows = []
    for name, keys in key_classes(pairs).items():
        n_par = int((keys & pairs.key_parallel).sum())
        n_oth = int((keys & ~pairs.key_parallel).sum())
        if n_par == 0 or n_oth == 0:
            rows.append({"class": name, "estimate": math.nan, "se": math.nan,
                         "n_parallel_keys": n_par, "n_other_keys": n_oth})
            continue
        sub = dataclasses.replace(pairs, include=pairs.include & torch.from_numpy(keys))
        est = contrast_estimates(sub, False, "step")
        rows.append({"class": name, "estimate": float(est.prompt_estimate),
                     "se": float(est.prompt_se), "n_parallel_keys": n_par,
                     "n_other_keys": n_oth})
    return pd.DataFrame(rows, columns=["class", "estimate", "se", "n_parallel_keys",
                                       "n_other_keys"])


def distance_profile(pairs: CountedPairs, decimals: int = 3) -> pd.DataFrame:
    """Mean query-demeaned score of parallel and non-parallel keys by logical distance.

    Scores are demeaned within each (head, query) over its counted keys, so query-level
    offsets (the softmax normaliser) cancel. Returns distance, set ("parallel",
    "non_parallel"), mean_score, n_pairs (pairs over all heads).
    """
    s = pairs.values("scores")
    inc = pairs.include
    count = inc.sum(-1, keepdim=True)
    qmean = s.sum(-1, keepdim=True) / count.clamp(min=1)
    dm = torch.where(inc, s - qmean, torch.zeros((), dtype=s.dtype))
    d = np.round(pairs.distance, decimals)
    levels, index = np.unique(d, return_inverse=True)
    index = torch.from_numpy(index.reshape(d.shape))
    lab = torch.from_numpy(pairs.key_parallel)[None, :].expand_as(index)
    rows = []
    for label, is_p in (("parallel", True), ("non_parallel", False)):
        sel = inc & (lab == is_p)
        flat_idx = index.expand_as(sel)[sel]
        sums = torch.zeros(len(levels), dtype=s.dtype).index_add_(0, flat_idx, dm[sel])
        counts = torch.bincount(flat_idx, minlength=len(levels))
        for i in torch.nonzero(counts).flatten().tolist():
            rows.append({"distance": float(levels[i]), "set": label,
                         "mean_score": float(sums[i] / counts[i]), "n_pairs": int(counts[i])})
    return pd.DataFrame(rows, columns=["distance", "set", "mean_score", "n_pairs"])


__all__ = ["PHASES", "class_contrasts", "distance_profile", "key_classes", "phase_of",
           "step_profile"]
