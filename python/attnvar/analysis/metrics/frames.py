"""Tidy result tables: one row per prompt × layer × head × metric variant (× term).

Sign convention, everywhere: ``effect_pct`` is a *reduction*, positive when
parallel tokens receive less attention. Log-scale estimates (M1, M1m, M1p, M2) keep their
natural sign (negative = less) in ``estimate`` and convert as
``effect_pct = 100·(1 − e^estimate)``; ``ratio = e^estimate`` (for M2, the attention odds
ratio e^β). M0 is a percentage already: ``estimate`` is the reduction %, ``ratio`` is
mean_P / mean_N. M5 (knockout) estimates are in nats (``scale == "nats"``): KL and
Δlog p carry no reduction %, so ratio and effect_pct are NaN except where knockout.py
fills them. ``effect_pct_low``/``effect_pct_high`` are the 95 % normal interval of
the estimate in %, so ``low ≤ effect_pct ≤ high`` on both scales.

Rows with ``layer == head == -1`` summarise the prompt (the mean over heads of the
per-head estimates, or one pooled fit where ``variant`` says so).

Tables are assembled column-wise (blocks of numpy arrays, one DataFrame at the end): the
placebo and toy-null loops build thousands of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

COLUMNS = (
    "prompt", "kind", "encoding", "metric", "variant", "sinks_excluded", "layer", "head",
    "term", "scale", "estimate", "se", "ratio", "effect_pct", "effect_pct_low",
    "effect_pct_high", "n_queries", "n_pairs", "n_parallel_pairs",
)

ALL = -1  # layer / head value of prompt-level rows
Z95 = 1.959963984540054


def effect_pct(estimate: float | np.ndarray) -> float | np.ndarray:
    """100·(1 − e^δ): the reduction in % of a log-scale effect (positive = less)."""
    return 100.0 * (1.0 - np.exp(estimate))


@dataclass
class HeadEstimates:
    """Per-head values of one metric variant ([L, H] arrays) and its prompt summary."""

    estimate: np.ndarray
    se: np.ndarray
    n_queries: np.ndarray
    n_pairs: np.ndarray
    n_parallel_pairs: np.ndarray
    prompt_estimate: float = math.nan
    prompt_se: float = math.nan
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if math.isnan(self.prompt_estimate):
            finite = np.isfinite(self.estimate)
            if finite.any():
                self.prompt_estimate = float(self.estimate[finite].mean())


def block(metric: str, variant: str, layer, head, estimate, se=math.nan, *, scale: str = "log",
          term="parallel", n_queries=0, n_pairs=0, n_parallel_pairs=0, **extra) -> dict:
    """Columns of a run of rows with the derived ones (ratio, effect_pct and interval).
    Scalars broadcast against the estimate array."""
    est = np.atleast_1d(np.asarray(estimate, dtype=np.float64))
    n = len(est)

    def col(v, dtype=None):
        a = np.asarray(v, dtype=dtype)
        if a.ndim == 0:  # a scalar, the common case: filled without a broadcast view
            return np.full(n, a, dtype=a.dtype)
        return a.copy() if a.shape == (n,) else np.broadcast_to(a, (n,)).copy()

    se = col(se, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if scale == "log":
            ratio = np.exp(est)
            pct = effect_pct(est)
            low, high = effect_pct(est + Z95 * se), effect_pct(est - Z95 * se)
        elif scale == "percent":
            ratio = 1.0 - est / 100.0
            pct = est.copy()
            low, high = est - Z95 * se, est + Z95 * se
        elif scale == "nats":
            # A quantity in nats that is not a log ratio of attention (M5's KL and Δlog p):
            # no ratio or reduction % is implied.
            ratio, pct, low, high = (np.full(n, np.nan) for _ in range(4))
        else:
            raise ValueError(f"scale must be 'log', 'percent' or 'nats', got {scale!r}")
    out = dict(metric=col(metric, object), variant=col(variant, object),
               layer=col(layer, np.int64), head=col(head, np.int64), term=col(term, object),
               scale=col(scale, object), estimate=est, se=se, ratio=ratio, effect_pct=pct,
               effect_pct_low=low, effect_pct_high=high,
               n_queries=col(n_queries, np.int64), n_pairs=col(n_pairs, np.int64),
               n_parallel_pairs=col(n_parallel_pairs, np.int64))
    for k, v in extra.items():
        out[k] = col(v, np.float64)
    return out


def record(**kwargs) -> dict:
    """One row as a plain dict (see :func:`block`)."""
    return {k: v[0].item() if hasattr(v[0], "item") else v[0] for k, v in block(**kwargs).items()}


def head_block(metric: str, variant: str, layers, heads, est: HeadEstimates) -> dict:
    """Per-head rows in (layer, head) order, then the prompt row."""
    L, H = est.estimate.shape
    layer = np.append(np.repeat(np.asarray(layers, dtype=np.int64), H), ALL)
    head = np.append(np.tile(np.asarray(heads, dtype=np.int64), L), ALL)
    finite = np.isfinite(est.estimate)

    def with_prompt(values, prompt_value):
        return np.append(np.asarray(values, dtype=np.float64).reshape(-1), prompt_value)

    extra = {k: with_prompt(v, float(np.nanmean(v[finite])) if finite.any() else math.nan)
             for k, v in est.extra.items()}
    return block(
        metric, variant, layer, head,
        with_prompt(est.estimate, est.prompt_estimate), with_prompt(est.se, est.prompt_se),
        n_queries=with_prompt(est.n_queries, est.n_queries.max(initial=0)),
        n_pairs=with_prompt(est.n_pairs, est.n_pairs.sum()),
        n_parallel_pairs=with_prompt(est.n_parallel_pairs, est.n_parallel_pairs.sum()),
        **extra,
    )


def frame(blocks: Iterable[dict], *, prompt: str | None, kind: str, encoding: str,
          sinks_excluded: bool):
    """One DataFrame from column blocks: :data:`COLUMNS` first, extra columns after
    (NaN in blocks that lack them)."""
    import pandas as pd

    blocks = [b for b in blocks if len(b["estimate"])]
    if not blocks:
        return pd.DataFrame(columns=list(COLUMNS))
    names = [c for c in COLUMNS if c not in ("prompt", "kind", "encoding", "sinks_excluded")]
    extra = sorted({k for b in blocks for k in b} - set(names))
    cols = {}
    for name in names + extra:
        parts = [b[name] if name in b else np.full(len(b["estimate"]), np.nan) for b in blocks]
        cols[name] = np.concatenate(parts)
    n = len(cols["estimate"])
    df = pd.DataFrame(cols)
    df.insert(0, "prompt", pd.Series([prompt] * n, dtype=object))
    df.insert(1, "kind", kind)
    df.insert(2, "encoding", encoding)
    df.insert(5, "sinks_excluded", sinks_excluded)
    return df[list(COLUMNS) + extra]


def table(columns: dict, lead: dict | None = None):
    """A DataFrame of equal-length ``columns``, after the constant columns ``lead`` (a
    cell's id and source, say) built in the same constructor."""
    import pandas as pd

    if lead:
        n = len(next(iter(columns.values()))) if columns else 0
        columns = {**{k: np.full(n, v, dtype=object) for k, v in lead.items()}, **columns}
    return pd.DataFrame(columns)


def lead_columns(frame, lead: dict | None = None):
    """``frame`` with the constant columns ``lead`` inserted first (for tables built
    another way, such as empty ones)."""
    for i, (k, v) in enumerate((lead or {}).items()):
        frame.insert(i, k, v)
    return frame
