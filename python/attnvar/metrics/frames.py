"""Tidy result tables: one row per prompt × layer × head × metric variant (× term).

Sign convention (METHODS.md), everywhere: ``effect_pct`` is a *reduction*, positive when
parallel tokens receive less attention. Log-scale estimates (M1, M1m, M1p, M2) keep their
natural sign (negative = less) in ``estimate`` and convert as
``effect_pct = 100·(1 − e^estimate)``; ``ratio = e^estimate`` (for M2, the attention odds
ratio e^β). M0 is a percentage already: ``estimate`` is the reduction %, ``ratio`` is
mean_P / mean_N.

Rows with ``layer == head == -1`` summarise the prompt (the mean over heads of the
per-head estimates, or one pooled fit where ``variant`` says so).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

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


def record(
    *,
    metric: str,
    variant: str,
    layer: int,
    head: int,
    estimate: float,
    se: float = math.nan,
    scale: str = "log",
    term: str = "parallel",
    n_queries: int = 0,
    n_pairs: int = 0,
    n_parallel_pairs: int = 0,
    **extra,
) -> dict:
    """One row with the derived columns (ratio, effect_pct and its 95 % interval)."""
    if scale == "log":
        ratio = math.exp(estimate) if np.isfinite(estimate) else math.nan
        pct = float(effect_pct(estimate))
        # The interval flips: a larger log effect is a smaller reduction.
        low = float(effect_pct(estimate + Z95 * se))
        high = float(effect_pct(estimate - Z95 * se))
    elif scale == "percent":
        ratio = 1.0 - estimate / 100.0
        pct = estimate
        low, high = estimate - Z95 * se, estimate + Z95 * se
    else:
        raise ValueError(f"scale must be 'log' or 'percent', got {scale!r}")
    return dict(metric=metric, variant=variant, layer=int(layer), head=int(head), term=term,
                scale=scale, estimate=float(estimate), se=float(se), ratio=ratio,
                effect_pct=pct, effect_pct_low=low, effect_pct_high=high,
                n_queries=int(n_queries), n_pairs=int(n_pairs),
                n_parallel_pairs=int(n_parallel_pairs), **extra)


def frame(rows: Iterable[dict], *, prompt: str | None, kind: str, encoding: str,
          sinks_excluded: bool):
    """A DataFrame with :data:`COLUMNS` first (extra metric-specific columns after)."""
    import pandas as pd

    df = pd.DataFrame(list(rows))
    if df.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    df["prompt"] = prompt
    df["kind"] = kind
    df["encoding"] = encoding
    df["sinks_excluded"] = sinks_excluded
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + extra]


def head_rows(metric: str, variant: str, layers, heads, est: np.ndarray, se: np.ndarray,
              n_queries: np.ndarray, n_pairs: np.ndarray, n_parallel: np.ndarray,
              prompt_se: float = math.nan, **extra_arrays) -> list[dict]:
    """Per-head rows plus the prompt row (mean over heads with a finite estimate).

    ``est`` etc. are [L, H]; ``extra_arrays`` are [L, H] metric-specific columns, averaged
    the same way for the prompt row.
    """
    rows = []
    for li, layer in enumerate(layers):
        for hi, head in enumerate(heads):
            rows.append(record(
                metric=metric, variant=variant, layer=layer, head=head,
                estimate=float(est[li, hi]), se=float(se[li, hi]),
                n_queries=n_queries[li, hi], n_pairs=n_pairs[li, hi],
                n_parallel_pairs=n_parallel[li, hi],
                **{k: float(v[li, hi]) for k, v in extra_arrays.items()},
            ))
    finite = np.isfinite(est)
    mean = float(est[finite].mean()) if finite.any() else math.nan
    rows.append(record(
        metric=metric, variant=variant, layer=ALL, head=ALL, estimate=mean, se=prompt_se,
        n_queries=int(n_queries.max(initial=0)), n_pairs=int(n_pairs.sum()),
        n_parallel_pairs=int(n_parallel.sum()),
        **{k: float(np.nanmean(v[finite])) if finite.any() else math.nan
           for k, v in extra_arrays.items()},
    ))
    return rows
