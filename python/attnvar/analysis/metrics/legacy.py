"""M0: the prototype's reduction % as its public code computes it, and its corrected form.

Legacy formula. Average the attention over layers and heads. Visit the accumulated matrix
of every step: the matrix of step t holds the rows of every slot up to the end of step t
(on compat runs: the prototype's S_i = P + 1 + i rows, the first of which has no pairs).
In each matrix take every query row r ≥ P and every key P ≤ c < r (P = prompt length, so
on compat runs the duplicated last prompt token in slot P is a key and a query) and put
the weight into "parallel" or "non-parallel". Masked pairs (weight 0) and same-step rows
count; a row of step t is visited once per matrix from step t on. Reduction % =
(mean non-parallel − mean parallel) / mean non-parallel × 100, positive = parallel less.

Labels: on compat runs a key is "parallel" when its *slot* index equals a recorded
*printed* index — every member's, L_t … L_t + k_t − 1, of every set with k_t ≥ 2, as
the prototype recorded and labelled them — the prototype's mismatch of index spaces; on
other runs, the slot's own label (every member of a set of k ≥ 2).

``corrected=True`` keeps the formula (a ratio of mean weights) but counts pairs by the
counting rules (each once, masked pairs out, later-step queries only, sinks out) with
the true labels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .counting import CountedPairs, Sinks, as_view, count_pairs
from .frames import ALL, block, frame


def legacy_labels(view) -> np.ndarray:
    """[N] bool: the prototype's labels on compat runs (slot index ∈ the recorded printed
    indices: every member of every set with k ≥ 2), the slots' own labels otherwise."""
    if view.kind != "tempo-2025":
        return view.is_parallel.copy()
    return np.isin(np.arange(view.num_slots), recorded_printed_indices(view))


def recorded_printed_indices(view) -> list[int]:
    """The printed-sequence indices the prototype recorded as parallel on a compat run:
    L_t, L_t + 1, …, L_t + k_t − 1 for every set S_t with k_t ≥ 2."""
    return [start + m for start, k in zip(view.printed_set_starts, view.set_widths, strict=True)
            if k >= 2 for m in range(k)]


def row_multiplicity(view) -> np.ndarray:
    """[N] how many accumulated step matrices contain each row: one matrix per fed step
    t, holding every slot up to the last slot of step t."""
    steps = view.step
    ends = [int(np.flatnonzero(steps == t).max()) + 1 for t in np.unique(steps[steps >= 0])]
    rows = np.arange(view.num_slots)
    return (np.asarray(ends)[None, :] > rows[:, None]).sum(1)


def _legacy_sums(view, attention: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Sums and counts of the legacy pooling for [..., N, N] attention (f64)."""
    n = view.num_slots
    P = view.prompt_length
    rows = np.arange(n)
    pair = (rows[None, :] < rows[:, None]) & (rows[:, None] >= P) & (rows[None, :] >= P)
    weight = torch.from_numpy(pair * row_multiplicity(view)[:, None]).double()
    lab = torch.from_numpy(legacy_labels(view))
    wp = weight * lab[None, :]
    wn = weight * ~lab[None, :]
    a = attention.double()
    return ((a * wp).sum((-1, -2)).numpy(), float(wp.sum()),
            (a * wn).sum((-1, -2)).numpy(), float(wn.sum()))


def _reduction(sum_p, n_p, sum_n, n_n):
    mean_p = sum_p / n_p if n_p else np.nan
    mean_n = sum_n / n_n if n_n else np.nan
    return (mean_n - mean_p) / mean_n * 100.0


def legacy_reduction(
    run: Any,
    corrected: bool = False,
    sinks: Sinks | None = None,
    exclude_sinks: bool = True,
    by_head: bool = False,
    prompt: str | None = None,
):
    """M0, the prototype's reduction % (or its ``corrected`` form).

    Parameters
    ----------
    run : a Run or CaptureView with attention captured
    corrected : count pairs by the counting rules with true labels (else the legacy way)
    sinks, exclude_sinks : for ``corrected`` only (the legacy formula has no sinks)
    by_head : also one row per (layer, head), the formula applied to that head alone
    prompt : the prompt id written into the table

    Returns
    -------
    pandas.DataFrame (frames.COLUMNS; scale "percent"; ``mean_parallel`` and
    ``mean_nonparallel`` columns)
    """
    view = as_view(run)
    if view.attention is None:
        raise ValueError("M0 needs attention probabilities (Capture(probabilities=True))")
    if not corrected:
        return frame(legacy_blocks(view, by_head), prompt=prompt, kind=view.kind,
                     encoding=view.encoding, sinks_excluded=False)

    pairs = count_pairs(view, sinks=sinks, exclude_sinks=exclude_sinks)
    return frame(corrected_rows(pairs, by_head), prompt=prompt, kind=view.kind,
                 encoding=view.encoding, sinks_excluded=exclude_sinks)


def legacy_blocks(view, by_head: bool = False) -> list[dict]:
    """M0 ``legacy`` rows of a view with attention: the prompt row, then (``by_head``)
    one per head."""
    rows = []
    mean_a = view.attention.double().mean((0, 1))
    sp, n_p, sn, n_n = _legacy_sums(view, mean_a)
    rows.append(block(metric="M0", variant="legacy", layer=ALL, head=ALL,
                      estimate=float(_reduction(sp, n_p, sn, n_n)), scale="percent",
                      n_pairs=int(n_p + n_n), n_parallel_pairs=int(n_p),
                      mean_parallel=float(sp / n_p) if n_p else math.nan,
                      mean_nonparallel=float(sn / n_n) if n_n else math.nan))
    if by_head:
        sp, n_p, sn, n_n = _legacy_sums(view, view.attention)
        L, H = sp.shape
        rows.append(block(
            "M0", "legacy", np.repeat(view.layers, H), np.tile(view.heads, L),
            _reduction(sp, n_p, sn, n_n).reshape(-1), scale="percent",
            n_pairs=int(n_p + n_n), n_parallel_pairs=int(n_p),
            mean_parallel=(sp / n_p).reshape(-1) if n_p else math.nan,
            mean_nonparallel=(sn / n_n).reshape(-1) if n_n else math.nan))
    return rows


def corrected_rows(pairs: CountedPairs, by_head: bool = False) -> list[dict]:
    """M0 ``corrected`` rows from counted pairs (true labels, counting rules)."""
    return corrected_blocks(pairs.view, *corrected_sums(pairs.values("attention"),
                                                        pairs.include, pairs.key_parallel),
                            by_head)


def corrected_sums(a: torch.Tensor, include: torch.Tensor, key_parallel: np.ndarray):
    """The sums behind M0 ``corrected`` for [..., L, H, Q, K] attention and counted
    pairs: attention and pair counts on P and N per head, and counted queries per head."""
    inc = include.double()
    lab = torch.from_numpy(key_parallel).double()
    wp = inc * lab
    wn = inc * (1 - lab)
    sp, n_p = (a * wp).sum((-1, -2)), wp.sum((-1, -2))
    sn, n_n = (a * wn).sum((-1, -2)), wn.sum((-1, -2))
    return sp, n_p, sn, n_n, include.any(-1).sum(-1)


def corrected_blocks(view, sp, n_p, sn, n_n, q_any, by_head: bool = False) -> list[dict]:
    """M0 ``corrected`` rows from :func:`corrected_sums` of one run ([L, H] each)."""
    tot_p, tot_n = float(n_p.sum()), float(n_n.sum())
    rows = [block(metric="M0", variant="corrected", layer=ALL, head=ALL,
                  estimate=float(_reduction(float(sp.sum()), tot_p, float(sn.sum()), tot_n)),
                  scale="percent", n_queries=int(q_any.max()) if q_any.numel() else 0,
                  n_pairs=int(tot_p + tot_n), n_parallel_pairs=int(tot_p),
                  mean_parallel=float(sp.sum() / tot_p) if tot_p else math.nan,
                  mean_nonparallel=float(sn.sum() / tot_n) if tot_n else math.nan)]
    if by_head:
        L, H = sp.shape
        with np.errstate(invalid="ignore", divide="ignore"):
            mp = (sp / n_p).reshape(-1).numpy()
            mn = (sn / n_n).reshape(-1).numpy()
        rows.append(block(
            "M0", "corrected", np.repeat(view.layers, H), np.tile(view.heads, L),
            (mn - mp) / mn * 100.0, scale="percent", n_queries=q_any.reshape(-1).numpy(),
            n_pairs=(n_p + n_n).reshape(-1).numpy(), n_parallel_pairs=n_p.reshape(-1).numpy(),
            mean_parallel=mp, mean_nonparallel=mn))
    return rows
