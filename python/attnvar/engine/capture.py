"""Capture specs: what a pass records about attention and which named hook points it
records (docs/engine.md, "Capture" and "Hook points")."""

from __future__ import annotations

import math
import numbers
import operator
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from .. import _core

DEFAULT_MEMORY_BUDGET = 4 * 1024**3  # bytes of dense capture per run

# Hook points read from the attention capture rather than recorded separately: name suffix
# -> the Capture field that must be on.
ATTENTION_POINTS = {"attn.hook_pattern": "probabilities", "attn.hook_attn_scores": "scores"}


def _block_points() -> tuple[str, ...]:
    """The points of one block in forward order: the engine's own (from the extension, so
    the two lists cannot drift), with the attention views after the post-RoPE q/k, where
    the scores and the pattern are computed."""
    engine = [hook_point(n) for n in _core.hook_point_names(1)[:-1]]
    at = engine.index("attn.hook_rot_k") + 1
    return (*engine[:at], "attn.hook_attn_scores", "attn.hook_pattern", *engine[at:])



HookNames = None | str | Sequence[str] | Callable[[str], bool]


def all_hook_names(num_layers: int) -> list[str]:
    """Every hook point name of a ``num_layers``-layer model, in forward order."""
    return [f"blocks.{layer}.{p}" for layer in range(num_layers) for p in BLOCK_POINTS] + [
        FINAL_POINT]


def hook_point(name: str) -> str:
    """The point of a hook name without its block: ``"blocks.3.attn.hook_q"`` ->
    ``"attn.hook_q"``."""
    return name.split(".", 2)[2] if name.startswith("blocks.") else name


def is_attention_view(name: str) -> bool:
    """Whether a hook name is read from the attention capture (pattern, scores)."""
    return hook_point(name) in ATTENTION_POINTS


BLOCK_POINTS = _block_points()
FINAL_POINT = _core.hook_point_names(0)[-1]  # ln_final.hook_normalized


def hook_shape(name: str, dims: dict) -> tuple[int, ...]:
    """The per-slot shape of a recorded hook point (without the slot axis). ``dims``:
    hidden, intermediate, heads, kv_heads, head_dim."""
    point = hook_point(name)
    if point in ("attn.hook_q", "attn.hook_rot_q", "attn.hook_z"):
        return (dims["heads"], dims["head_dim"])
    if point in ("attn.hook_k", "attn.hook_v", "attn.hook_rot_k"):
        return (dims["kv_heads"], dims["head_dim"])
    if point == "mlp.hook_post":
        return (dims["intermediate"],)
    return (dims["hidden"],)


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
        as that int), checked against the dense view of the run's N slots (L·H·N²·bytes
        per field, plus N·size of each hook point). A replay or a tempo-2025 run knows N
        and fails up front with the estimate. A generation checks the most slots its
        options allow (prompt + max_steps × the widest set θ and max_width permit); when
        that could pass the budget it tracks the slots pass by pass and stops with
        ValueError at the first pass that would take the capture past the budget
        (``generate_many``, which has no per-pass hook, refuses up front)
    names : hook points to record besides attention (TransformerLens names, e.g.
        ``"blocks.3.hook_resid_pre"``; ``model.hook_point_names()`` lists them):
        None (none), a list of names, a prefix of whole name components (``"blocks.3"``:
        every point of layer 3; ``"blocks.3.attn"``: its attention points), or a predicate
        ``name -> bool``. With ``probabilities``, ``scores`` and ``value_norms`` all off,
        only the hook points are recorded and attention keeps its fast path.
        ``blocks.{l}.attn.hook_pattern`` and
        ``attn.hook_attn_scores`` are views of the attention capture: a list naming one
        needs that layer captured with ``probabilities`` (resp. ``scores``) on; a prefix or
        predicate includes them where they are captured. Read back as ``run.hooks[name]``.

    Notes
    -----
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
    names: HookNames = None

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"Capture.dtype must be 'float32' or 'float16', got {self.dtype!r}")
        for name in ("layers", "heads"):
            _check_indices(name, getattr(self, name))
        object.__setattr__(self, "memory_budget", _check_budget(self.memory_budget))
        object.__setattr__(self, "names", _check_names(self.names))

    def hook_names(self, num_layers: int) -> list[str]:
        """The hook point names this spec selects for a ``num_layers``-layer model, in
        forward order (attention views included). ValueError for a name that is not a hook
        point, a prefix or predicate that selects nothing, or an attention view the
        attention capture does not record."""
        valid = all_hook_names(num_layers)
        if self.names is None:
            return []
        if isinstance(self.names, str):
            # Whole name components: "blocks.1" is layer 1, not 10 and 11.
            prefix = self.names.rstrip(".")
            chosen = [n for n in valid if (n == prefix or n.startswith(prefix + "."))
                      and self._covers(n)]
            what = f"prefix {self.names!r}"
        elif callable(self.names):
            chosen = [n for n in valid if self.names(n) and self._covers(n)]
            what = "the names predicate"
        else:
            known = set(valid)
            for n in self.names:
                if n not in known:
                    raise ValueError(
                        f"Capture.names: {n!r} is not a hook point of this {num_layers}-layer "
                        f"model (blocks.{{0..{num_layers - 1}}}.{{{', '.join(BLOCK_POINTS)}}}, "
                        f"{FINAL_POINT})")
                if not self._covers(n):
                    layer, point = int(n.split(".")[1]), hook_point(n)
                    raise ValueError(
                        f"Capture.names: {n!r} is read from the attention capture, which does "
                        f"not record it: capture layer {layer} (Capture.layers) with "
                        f"Capture.{ATTENTION_POINTS[point]}=True")
            wanted = set(self.names)
            chosen = [n for n in valid if n in wanted]
            what = "the names list"
        if not chosen:
            raise ValueError(f"Capture.names: {what} selects no hook point of this "
                             f"{num_layers}-layer model")
        return chosen

    def _covers(self, name: str) -> bool:
        """Whether a name is recorded: engine points always; attention views when the
        attention capture records that layer and field."""
        point = hook_point(name)
        if point not in ATTENTION_POINTS:
            return True
        layer = int(name.split(".")[1])
        return (getattr(self, ATTENTION_POINTS[point])
                and (isinstance(self.layers, str) or layer in {int(v) for v in self.layers}))

    def kwargs(self, num_layers: int | None = None) -> dict:
        """Keyword arguments of the _core generate/replay/forward calls (``num_layers``
        resolves the hook point names; without it, none are recorded)."""
        hooks = ([n for n in self.hook_names(num_layers) if not is_attention_view(n)]
                 if num_layers is not None else [])
        attention = self.probabilities or self.scores or self.value_norms
        return dict(
            # Hook points alone: the attention keeps its fast path (nothing to capture).
            capture=attention or not hooks,
            layers=None if isinstance(self.layers, str) else sorted(int(v) for v in self.layers),
            heads=None if isinstance(self.heads, str) else [int(v) for v in self.heads],
            probabilities=self.probabilities,
            scores=self.scores,
            value_norms=self.value_norms,
            capture_dtype=self.dtype,
            hooks=hooks or None,
        )

    def bytes_per_slot(self, num_layers: int, num_heads: int,
                       dims: dict | None = None) -> tuple[int, int]:
        """(a, b) with ``estimate_bytes(N) == a·N² + b·N``: the dense views' bytes per
        (query, key) pair, and the value norms' and hook points' bytes per slot."""
        # Validated at construction: the only string is "all", and lists are non-empty.
        layers = num_layers if isinstance(self.layers, str) else len(self.layers)
        heads = num_heads if isinstance(self.heads, str) else len(self.heads)
        per = 2 if self.dtype == "float16" else 4
        fields = int(self.probabilities) + int(self.scores)
        hooks = 0
        if self.names is not None:
            if dims is None:
                raise ValueError("estimate_bytes: Capture.names needs the model's dims")
            for n in self.hook_names(num_layers):
                if not is_attention_view(n):
                    hooks += math.prod(hook_shape(n, dims)) * per
        return layers * heads * per * fields, layers * heads * 4 + hooks  # value norms, f32

    def estimate_bytes(self, num_layers: int, num_heads: int, num_slots: int,
                       dims: dict | None = None) -> int:
        """Bytes of the dense [L, H, N, N] views this spec asks for, plus the recorded hook
        points ([N, ...] each; ``dims``: the model's hidden, intermediate, heads, kv_heads
        and head_dim, needed when ``names`` is set)."""
        quadratic, linear = self.bytes_per_slot(num_layers, num_heads, dims)
        return quadratic * num_slots * num_slots + linear * num_slots

    def check_budget(self, num_layers: int, num_heads: int, num_slots: int,
                     dims: dict | None = None) -> None:
        need = self.estimate_bytes(num_layers, num_heads, num_slots, dims)
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


def _check_names(value: object) -> HookNames:
    """None, a non-empty prefix string, a callable, or a non-empty sequence of distinct
    strings (kept as a tuple, so the spec stays hashable)."""
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        if not value:
            raise ValueError("Capture.names: an empty prefix would select every hook point; "
                             "pass it explicitly as a list, or a predicate")
        return value
    if isinstance(value, Iterator) or not hasattr(value, "__iter__"):
        raise ValueError("Capture.names must be None, a list of hook point names, a prefix "
                         f"string or a predicate, got {type(value).__name__}")
    names = tuple(value)
    if not names:
        raise ValueError("Capture.names is empty: pass None for no hook points")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f"Capture.names must hold strings, got {bad[0]!r}")
    if len(set(names)) != len(names):
        repeated = sorted(n for n, c in Counter(names).items() if c > 1)
        raise ValueError(f"Capture.names repeats {repeated}: each name may appear once")
    return names


def no_capture_kwargs() -> dict:
    return dict(capture=False)
