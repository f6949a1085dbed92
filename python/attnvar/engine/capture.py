"""Capture specs: what a pass records about attention (docs/engine.md, "Capture")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

DEFAULT_MEMORY_BUDGET = 4 * 1024**3  # bytes of dense capture per run


@dataclass(frozen=True)
class Capture:
    """Which layers and heads to record, and what.

    Parameters
    ----------
    layers : "all" or a sequence of layer indices
    heads : "all" or a sequence of query-head indices
    probabilities : record α[h, q, k]
    scores : record pre-softmax scores s[h, q, k] after the bias (−inf where masked)
    value_norms : record ‖v_k W_O^h‖ per head and key
    dtype : "float32", or "float16" for storage only (small weights underflow to 0;
        metrics read f32 scores)
    memory_budget : bytes; a spec whose dense view (L·H·N²·bytes per field) would exceed
        it fails up front with the estimate
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
            value = getattr(self, name)
            if value != "all" and (
                isinstance(value, str) or any(int(v) < 0 for v in value)
            ):
                raise ValueError(f"Capture.{name} must be 'all' or non-negative indices")

    def kwargs(self) -> dict:
        """Keyword arguments of the _core generate/replay/forward calls."""
        return dict(
            capture=True,
            layers=None if self.layers == "all" else sorted(int(v) for v in self.layers),
            heads=None if self.heads == "all" else [int(v) for v in self.heads],
            probabilities=self.probabilities,
            scores=self.scores,
            value_norms=self.value_norms,
            capture_dtype=self.dtype,
        )

    def estimate_bytes(self, num_layers: int, num_heads: int, num_slots: int) -> int:
        """Bytes of the dense [L, H, N, N] views this spec asks for."""
        layers = num_layers if self.layers == "all" else len(self.layers)
        heads = num_heads if self.heads == "all" else len(self.heads)
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


def no_capture_kwargs() -> dict:
    return dict(capture=False)
