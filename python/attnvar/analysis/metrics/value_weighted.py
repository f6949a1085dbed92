"""M3: value-weighted attention — how much of a head's output comes from P vs N keys.

Attention weight is not contribution: head h adds Σ_j α_ij · v_j W_O^h to query i's
residual stream, so key j's contribution has norm c_ij = α_ij · ‖v_j W_O^h‖ (α is a
scalar). The capture's ``value_norms`` hold ‖v_j W_O^h‖ per layer, head and key slot
(cpp/model/attention.cpp: the value vector of the key's kv head through query head h's
slice of o_proj, without o_proj's bias, which no key owns). Pairs are counted by
count_pairs, like every other metric.

Variants (rows of the tidy table, metric "M3"):

- ``log_contrast`` (primary): per query and head
  δ_i = mean_{P_i} log c_ij − mean_{N_i} log c_ij, the log ratio of geometric-mean
  contributions. log c_ij = s_ij − LSE_i(s) + log‖v_j W_O^h‖ and the normaliser LSE_i is
  common to the query's keys, so δ_i = δ_i(M1 plain) + δ_i(value norm): it is M1 with
  each key's score shifted by its log value norm, and inherits M1's null behaviour
  (unbiased per query whatever |P_i| and |N_i|).
- ``value_norm``: the value part alone, mean_{P_i} log‖v_j W_O^h‖ − mean_{N_i} (the
  same per query, so it answers "do parallel tokens write smaller values?").
- ``share``: the share of counted contribution on P, S_i = Σ_P c / Σ_{P∪N} c, as a log
  odds against the key-count share: log(mean_P c / mean_N c)
  = logit(S_i) − logit(|P_i| / (|P_i| + |N_i|)). Jensen-biased when |P_i| ≠ |N_i| (like
  M1m raw); the shares themselves are extra columns: ``share`` (value-weighted),
  ``attention_share`` (Σ_P α / Σ_{P∪N} α) and ``key_share`` (|P_i| / (|P_i| + |N_i|)).

Aggregation, SEs and the prompt row as M1 plain (contrast.py): queries of a step
averaged, then steps (``weighting="step"``), or queries directly.
"""

from __future__ import annotations

from typing import Any

import torch

from .contrast import _aggregate, _estimates, _groups, _pairs, _sets
from .counting import CountedPairs
from .frames import frame, head_block

VARIANTS = ("log_contrast", "value_norm", "share")


def _value_norms(pairs: CountedPairs) -> torch.Tensor:
    """[L, H, 1, K] f64 value norms of the key slots."""
    vn = pairs.view.value_norms
    if vn is None:
        raise ValueError("M3 needs the value-contribution norms: this run did not capture "
                         "value_norms (pass capture=attnvar.Capture(value_norms=True))")
    if vn.shape[:2] != pairs.shape[:2]:
        raise ValueError(f"value_norms cover {tuple(vn.shape[:2])} (layer, head) but the "
                         f"attention capture covers {pairs.shape[:2]}")
    return vn[:, :, torch.from_numpy(pairs.key_slots)].double()[:, :, None, :]


def value_weighted(
    run: Any,
    weighting: str = "step",
    prompt: str | None = None,
    **count_kwargs,
):
    """M3: value-weighted contrast and share of contribution on parallel keys.

    Parameters
    ----------
    run : a Run, CaptureView or CountedPairs with value_norms and attention captured
        (``Capture(value_norms=True)``; scores too for the log contrast when some counted
        α underflows to 0 in f32)
    weighting : "step" or "query" (as M1, see contrast.py)
    prompt : the prompt id written into the table
    **count_kwargs : sinks, exclude_sinks, labels (counting.count_pairs)

    Returns
    -------
    pandas.DataFrame (frames.COLUMNS), metric "M3", variants "log_contrast",
    "value_norm", "share"; extra columns ``share``, ``attention_share``, ``key_share``
    (means over the aggregation units, per head; the prompt row averages the heads).
    """
    pairs = _pairs(run, count_kwargs)
    view = pairs.view
    return frame(value_weighted_blocks(pairs, weighting), prompt=prompt, kind=view.kind,
                 encoding=view.encoding, sinks_excluded=pairs.sinks_excluded)


def value_weighted_blocks(pairs: CountedPairs, weighting: str = "step") -> list[dict]:
    """The M3 rows of :func:`value_weighted` as column blocks (no table)."""
    view = pairs.view
    vn = _value_norms(pairs)
    if view.attention is None:
        raise ValueError("M3 needs attention probabilities (Capture(probabilities=True))")
    a = pairs.values("attention")
    in_p, in_n = _sets(pairs)
    counted = in_p | in_n
    if bool((counted & (vn <= 0)).any()):
        raise ValueError("M3: a counted key has a zero value norm; its log is undefined")
    zero = torch.zeros((), dtype=torch.float64)
    log_v = torch.where(counted, vn.log().expand_as(a), zero)
    if view.scores is not None:
        # log α_ij up to the query's normaliser, which cancels within the query.
        log_a = pairs.values("scores")
    else:
        if bool((counted & (a <= 0)).any()):
            raise ValueError("M3: a counted attention weight is 0 in f32, so its log is "
                             "undefined; capture scores too (Capture(scores=True))")
        log_a = torch.where(counted, a.clamp(min=1e-300).log(), zero)
    n_p, n_n = in_p.sum(-1), in_n.sum(-1)
    valid = (n_p > 0) & (n_n > 0)

    def contrast(x: torch.Tensor) -> torch.Tensor:
        return (x * in_p).sum(-1) / n_p.clamp(min=1) - (x * in_n).sum(-1) / n_n.clamp(min=1)

    groups = _groups(pairs, weighting)
    c = a * vn
    mass_p, mass_n = (c * in_p).sum(-1), (c * in_n).sum(-1)
    att_p, att_n = (a * in_p).sum(-1), (a * in_n).sum(-1)
    ok = valid & (mass_p > 0) & (mass_n > 0)
    log_odds = torch.where(
        ok, (mass_p.clamp(min=1e-300) / n_p.clamp(min=1)).log()
        - (mass_n.clamp(min=1e-300) / n_n.clamp(min=1)).log(), zero)

    def mean_of(x: torch.Tensor, where: torch.Tensor):
        return _aggregate(torch.where(where, x, zero), where, groups)[0]

    total = (mass_p + mass_n).clamp(min=1e-300)
    extra = dict(
        share=mean_of(mass_p / total, ok),
        attention_share=mean_of(att_p / (att_p + att_n).clamp(min=1e-300), ok),
        key_share=mean_of(n_p.double() / (n_p + n_n).clamp(min=1).double(), ok),
    )
    blocks = [
        head_block("M3", "log_contrast", view.layers, view.heads,
                   _estimates(contrast(log_a + log_v), valid, groups, pairs, in_p)),
        head_block("M3", "value_norm", view.layers, view.heads,
                   _estimates(contrast(log_v), valid, groups, pairs, in_p)),
        head_block("M3", "share", view.layers, view.heads,
                   _estimates(log_odds, ok, groups, pairs, in_p, **extra)),
    ]
    return blocks
