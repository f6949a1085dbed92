"""Profiles of the within-query contrast, for the hypotheses (H1, H3, the dose–response).

All read counted pairs (counting.py), so the counting rules are the ones every metric
uses, and every profile comes in both M1 variants (column ``variant``), so the
hypotheses read the same metric as the primary effect:

- ``distance_matched`` — the within-query regression of contrast.py,
  s_ij = φ_i + ψ_{d_ij} + δ·[j ∈ P] + ε, with one distance profile ψ shared by every
  query of the run. Where a profile needs one δ per query step, δ becomes δ_{t(i)} (one
  coefficient per query step, the distance effects still shared), so each step's δ is
  compared at matched distances too.
- ``plain`` — δ_i = mean_{P_i} s − mean_{N_i} s per query, which the distance profile
  biases; kept for comparison (the robustness section), never for a verdict.

- :func:`step_profile` — δ by query step (H1), optionally with keys restricted to one
  phase (tercile of key steps). Per step and head, then the mean over heads.
- :func:`truncated_contrasts` — δ of the queries of steps < T for each T (the max_steps
  dose–response: queries of step t only read keys of steps < t, so this is what a run of
  T steps would give under deterministic selection).
- :func:`class_contrasts` — δ within one token class (H3): the class's parallel keys
  against its non-parallel keys, so the contrast compares like with like (distance-
  matched: the distance profile estimated from every key, the class's own offset fitted).
- :func:`distance_profile` — query-demeaned scores of P and N keys by logical distance,
  averaged over heads and queries (the distance profile figure).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import torch

from .contrast import contrast_estimates, distance_design
from .counting import CountedPairs
from .covariates import cached_covariates
from .fixed_effects import fit_within_query, mean_over_heads_se
from .frames import lead_columns, table

PHASES = ("early", "middle", "late")
VARIANTS = ("distance_matched", "plain")
# The lengths T of the max_steps dose–response (runs longer than T truncated to T steps).
MAX_STEPS_GRID = (2, 5, 10, 15, 20, 30, 40, 60)


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
    """Plain δ per query step: mean over the step's valid queries per head, then heads."""
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


def _matched_by_step(pairs: CountedPairs, include: torch.Tensor,
                     valid: torch.Tensor) -> list[dict]:
    """Distance-matched δ_t per query step: one within-query fit per head with the shared
    distance effects and one parallel coefficient per query step, then the mean over the
    heads where δ_t is identified."""
    L, H, Q, K = pairs.shape
    steps, step_index = np.unique(pairs.query_step, return_inverse=True)
    x, n_dist = distance_design(pairs, len(steps))
    q_all = np.arange(Q)[:, None]
    x[q_all, np.arange(K)[None, :], n_dist + step_index[:, None]] = pairs.key_parallel[None, :]
    fit = fit_within_query(pairs.values("scores").reshape(L * H, Q, K),
                           include.reshape(L * H, Q, K), torch.from_numpy(x))
    coef = fit.coef[:, n_dist:]
    rows = []
    for j, t in enumerate(steps):
        ok = np.isfinite(coef[:, j])
        if not ok.any():
            continue
        cols = torch.from_numpy(pairs.query_step == t)
        rows.append({"query_step": int(t), "estimate": float(coef[ok, j].mean()),
                     "n_queries": int(valid[:, :, cols].any((0, 1)).sum()),
                     "n_heads": int(ok.sum())})
    return rows


def _num_steps(pairs: CountedPairs) -> int:
    return int(pairs.view.step.max()) + 1 if (pairs.view.step >= 0).any() else 0


def step_profile(pairs: CountedPairs, phases: bool = True,
                 variants: tuple[str, ...] = VARIANTS) -> pd.DataFrame:
    """δ by query step, for all keys and (``phases``) for keys of each key-step tercile,
    in each M1 variant of ``variants``.

    Returns
    -------
    DataFrame with variant, key_phase ("all", "early", "middle", "late"), query_step,
    query_phase, estimate (log scale, mean over heads), n_queries, n_heads.
    """
    num_steps = _num_steps(pairs)
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
        for variant in variants:
            found = (_matched_by_step(pairs, include, valid) if variant == "distance_matched"
                     else _by_step(delta, valid, pairs.query_step))
            rows += [{"variant": variant, "key_phase": name, **row} for row in found]
    out = pd.DataFrame(rows, columns=["variant", "key_phase", "query_step", "estimate",
                                      "n_queries", "n_heads"])
    out.insert(3, "query_phase",
               [PHASES[i] for i in phase_of(out["query_step"].to_numpy(), num_steps)]
               if len(out) else pd.Series(dtype=object))
    return out


def truncated_contrasts(pairs: CountedPairs, grid: tuple[int, ...] = MAX_STEPS_GRID,
                        variants: tuple[str, ...] = VARIANTS) -> pd.DataFrame:
    """The prompt-level M1 (each variant, step-weighted for plain) of the queries of steps
    < T, for each T of ``grid`` below the run's length and for the whole run
    (``max_steps`` = its number of steps): what the run would give had it stopped after
    T steps.

    Returns
    -------
    DataFrame with variant, max_steps, estimate (log scale), se (prompt level).
    """
    num_steps = _num_steps(pairs)
    rows = []
    for T in sorted({t for t in grid if t < num_steps} | {num_steps}):
        keep = torch.from_numpy(pairs.query_step < T)[:, None]
        sub = dataclasses.replace(pairs, include=pairs.include & keep)
        for variant in variants:
            est = contrast_estimates(sub, variant == "distance_matched", "step")
            rows.append({"variant": variant, "max_steps": int(T),
                         "estimate": float(est.prompt_estimate), "se": float(est.prompt_se)})
    return pd.DataFrame(rows, columns=["variant", "max_steps", "estimate", "se"])


def key_classes(pairs: CountedPairs) -> dict[str, np.ndarray]:
    """[K] bool masks of the H3 token classes over the counted key slots.

    Piece types (word_initial, continuation, punctuation, newline, …), closed-class and
    open-class word-initial pieces, and sibling rank (``rank_0``: top members and every
    non-parallel key; ``rank_1plus``: lower-ranked members, compared with all
    non-parallel keys since those have rank 0 by construction).
    """
    cov = cached_covariates(pairs.view)
    slots = pairs.key_slots
    piece = cov["piece_type"].array  # categorical: each type is a code
    codes = np.asarray(piece.codes)[slots]
    out = {f"piece:{t}": codes == i for i, t in enumerate(piece.categories)}
    initial = out["piece:word_initial"]
    closed = cov["closed_class"].to_numpy(dtype=bool)[slots]
    rank = cov["sibling_rank"].to_numpy()[slots]
    out["word:closed_class"] = initial & closed
    out["word:open_class"] = initial & ~closed
    out["rank:0"] = rank <= 0
    out["rank:1plus"] = (rank >= 1) | ~pairs.key_parallel
    return out


def _matched_class(pairs: CountedPairs, keys: np.ndarray) -> tuple[float, float]:
    """Distance-matched δ within one class: s_ij = φ_i + ψ_d + γ·[j ∈ c] + δ·[j ∈ c ∩ P],
    over every counted key, so the keys outside the class help estimate the distance
    profile ψ (assumed common to the classes up to the offset γ) and δ compares the
    class's parallel keys with its non-parallel ones at matched distances. Returns the
    mean of δ over the heads where it is identified and its cluster-robust SE (clusters:
    query steps)."""
    L, H, Q, K = pairs.shape
    x, n_dist = distance_design(pairs, 2)
    x[:, :, n_dist] = keys[None, :]
    x[:, :, n_dist + 1] = (keys & pairs.key_parallel)[None, :]
    _, step_index = np.unique(pairs.query_step, return_inverse=True)
    fit = fit_within_query(pairs.values("scores").reshape(L * H, Q, K),
                           pairs.include.reshape(L * H, Q, K), torch.from_numpy(x),
                           clusters=step_index)
    coef = fit.coef[:, -1]
    ok = np.isfinite(coef)
    if not ok.any():
        return math.nan, math.nan
    return float(coef[ok].mean()), mean_over_heads_se(coef, fit.influence)


def class_contrasts(pairs: CountedPairs,
                    variants: tuple[str, ...] = VARIANTS) -> pd.DataFrame:
    """The contrast within each token class of :func:`key_classes`, in each variant:
    ``distance_matched`` (:func:`_matched_class`: the class's parallel against its
    non-parallel keys at matched distances, the distance profile estimated from every
    key) and ``plain`` (M1 plain, step-weighted, on the class's keys alone).

    Returns
    -------
    DataFrame with variant, class, estimate (prompt level: mean over heads), se,
    n_parallel_keys, n_other_keys (counted key slots of the class).
    """
    rows = []
    for name, keys in key_classes(pairs).items():
        n_par = int((keys & pairs.key_parallel).sum())
        n_oth = int((keys & ~pairs.key_parallel).sum())
        counts = {"n_parallel_keys": n_par, "n_other_keys": n_oth}
        for variant in variants:
            est, se = math.nan, math.nan
            if n_par and n_oth and variant == "distance_matched":
                est, se = _matched_class(pairs, keys)
            elif n_par and n_oth:
                sub = dataclasses.replace(pairs, include=pairs.include & torch.from_numpy(keys))
                fit = contrast_estimates(sub, False, "step")
                est, se = float(fit.prompt_estimate), float(fit.prompt_se)
            rows.append({"variant": variant, "class": name, "estimate": est, "se": se,
                         **counts})
    return pd.DataFrame(rows, columns=["variant", "class", "estimate", "se",
                                       "n_parallel_keys", "n_other_keys"])


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
    return distance_table(dm.sum((0, 1)), inc.sum((0, 1)), pairs, decimals)


def distance_table(total: torch.Tensor, pairs_at: torch.Tensor, pairs: CountedPairs,
                   decimals: int = 3, lead: dict | None = None) -> pd.DataFrame:
    """The table of :func:`distance_profile` from the query-demeaned scores summed over
    heads (``total``, [Q, K]) and the heads counting each pair (``pairs_at``): every
    head's pair at one (query, key) has that pair's distance. ``lead``: constant columns
    put first."""
    total = total.numpy().reshape(-1)
    pairs_at = pairs_at.numpy().reshape(-1)
    d = np.round(pairs.distance, decimals)
    levels, index = np.unique(d, return_inverse=True)
    index = index.reshape(-1)
    key_p = np.broadcast_to(pairs.key_parallel[None, :], d.shape).reshape(-1)
    cols: dict[str, list] = {"distance": [], "set": [], "mean_score": [], "n_pairs": []}
    for label, is_p in (("parallel", True), ("non_parallel", False)):
        sel = key_p == is_p
        sums = np.bincount(index[sel], weights=total[sel], minlength=len(levels))
        counts = np.bincount(index[sel], weights=pairs_at[sel], minlength=len(levels))
        at = np.flatnonzero(counts > 0)
        cols["distance"].append(levels[at].astype(np.float64))
        cols["set"].append(np.full(len(at), label, dtype=object))
        cols["mean_score"].append(sums[at] / counts[at])
        cols["n_pairs"].append(counts[at].astype(np.int64))
    if not sum(len(a) for a in cols["set"]):
        return lead_columns(pd.DataFrame(columns=list(cols)), lead)
    return table({k: np.concatenate(v) for k, v in cols.items()}, lead)


__all__ = ["MAX_STEPS_GRID", "PHASES", "VARIANTS", "class_contrasts", "distance_profile",
           "key_classes", "phase_of", "step_profile", "truncated_contrasts"]
