"""Capture specs: what a pass records about attention (docs/engine.md, "Capture")."""

from __future__ import annotations

import math
import numbers
import operator
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

DEFAULT_MEMORY_BUDGET = 4 * 1024**3  # bytes of dense capture per run


@dataclass(frozen=True)
class Capture:
    """Which layers and heads to record, and what.

    Parameters
    ----------
    layers : "all" or a non-empty sequence of distinct layer indices
    heads : "all" or a non-empty sequence of distinct query-head indices
    probabilities : record α[h, q, k]
    scores : record pre-softmax scores s[h, q, k] after the bias (−inf where masked)
    value_norms : record ‖v_k W_O^h‖ per head and key
    dtype : "float32", or "float16" for storage only (small weights underflow to 0;
        metrics read f32 scores)
    memory_budget : bytes, a non-negative integer (an integral float such as 8e9 is taken
        as that int); a spec whose dense view (L·H·N²·bytes per field) would exceed it
        fails up front with the estimate

    An empty ``layers``/``heads`` list, a repeated index, a non-integer index and a
    NaN, infinite, negative or fractional ``memory_budget`` raise ValueError: the engine
    reads an empty list as "all", so it would escape the budget estimate.
    """

    layers: Literal["all"] | Sequence[int] = "all"
    heads: Literal["all"] | Sequence[int] = "all"
    probabilities: bool = True
    scores: bool = False
    value_norms: bool = False
    dtype: Literal["float32", "float16"] = "float32"
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"Capture.dtype must be 'float32' or 'float16', got {self.dtype!r}")
        for name in ("layers", "heads"):
            _check_indices(name, getattr(self, name))
        object.__setattr__(self, "memory_budget", _check_budget(self.memory_budget))

    def kwargs(self) -> dict:
        """Keyword arguments of the _core generate/replay/forward calls."""
        return dict(
            capture=True,
            layers=None if isinstance(self.layers, str) else sorted(int(v) for v in self.layers),
            heads=None if isinstance(self.heads, str) else [int(v) for v in self.heads],
            probabilities=self.probabilities,
            scores=self.scores,
            value_norms=self.value_norms,
            capture_dtype=self.dtype,
        )

    def estimate_bytes(self, num_layers: int, num_heads: int, num_slots: int) -> int:
        """Bytes of the dense [L, H, N, N] views this spec asks for."""
        # Validated at construction: the only string is "all", and lists are non-empty.
        layers = num_layers if isinstance(self.layers, str) else len(self.layers)
        heads = num_heads if isinstance(self.heads, str) else len(self.heads)
        per = 2 if self.dtype == "float16" else 4
        fields = int(self.probabilities) + int(self.scores)
        dense = layers * heads * num_slots * num_slots * per * fields
        return dense + layers * heads * num_slots * 4  # value norms, f32

    def check_budget(self, num_layers: int, num_heads: int, num_slots: int) -> None:
        need = self.estimate_bytes(num_layers, num_heads, num_slots)
        if need > self.memory_budget:
            raise ValueError(
                f"capture would need about {need / 1e9:.2f} GB for up to {num_slots} slots "
                f"(L·H·N²·bytes), over the memory budget of {self.memory_budget / 1e9:.2f} GB; "
                "capture fewer layers/heads, use dtype='float16', or raise memory_budget"
            )


def _check_indices(name: str, value: object) -> None:
    """"all", or a non-empty sequence of distinct non-negative integers."""
    if isinstance(value, str):
        if value == "all":
            return
        raise ValueError(f"Capture.{name} must be 'all' or a sequence of indices, got {value!r}")
    if isinstance(value, Iterator) or not hasattr(value, "__iter__"):
        raise ValueError(f"Capture.{name} must be 'all' or a sequence (list, tuple) of indices, "
                         f"got {type(value).__name__}")
    try:
        indices = [operator.index(v) for v in value]
    except TypeError:
        raise ValueError(f"Capture.{name} must hold integers, got {list(value)!r}") from None
    if not indices:
        raise ValueError(f"Capture.{name} is empty: pass 'all' or at least one index")
    if any(v < 0 for v in indices):
        raise ValueError(f"Capture.{name} must be 'all' or non-negative indices, got {indices}")
    if len(set(indices)) != len(indices):
        repeated = sorted(v for v, n in Counter(indices).items() if n > 1)
        raise ValueError(f"Capture.{name} repeats {repeated}: each index may appear once")


def _check_budget(value: object) -> int:
    """memory_budget as a non-negative int; bools, NaN, infinities and fractions refused."""
    if isinstance(value, bool):
        raise ValueError(f"Capture.memory_budget must be a number of bytes, got {value!r}")
    if isinstance(value, numbers.Integral):
        budget = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        budget = int(value)
    else:
        raise ValueError(
            f"Capture.memory_budget must be a non-negative integer number of bytes, got {value!r}"
        )
    if budget < 0:
        raise ValueError(f"Capture.memory_budget must be non-negative, got {budget}")
    return budget


def no_capture_kwargs() -> dict:
    return dict(capture=False)
