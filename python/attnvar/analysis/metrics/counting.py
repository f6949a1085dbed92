"""The counting rules, implemented once for every metric except M0.

A metric never reads a run's dense capture directly. It reads a :class:`CountedPairs`:
the (query, key) pairs that count, with a per-(layer, head) inclusion mask, built by
:func:`count_pairs` from a :class:`CaptureView`. The rules:

- each (query, key) pair once, from the pass that processed the query (the dense view
  of a run already holds exactly that row);
- masked pairs (key not visible to the query) never count;
- queries are generated slots; keys are generated slots of strictly earlier steps (no
  sibling-on-sibling pairs, no same-step pairs);
- sinks are fixed before labels are looked at: the first slot (BOS when the tokenizer
  adds one) plus keys whose mean incoming attention exceeds 0.3 on a ``top_only`` replay
  of the same tree (:func:`find_sinks`). They leave both P and N; every metric can be
  computed with and without the exclusion;
- distance is logical: d_ij = position_i − position_j, never a slot difference;
- scores are read in f32 (as captured) and widened to f64 for the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ... import _core

SINK_THRESHOLD = 0.3
SINK_MIN_QUERIES = 4


@dataclass
class CaptureView:
    """A run's capture and slot table as plain arrays (N slots).

    Built from a :class:`attnvar.Run` by :meth:`from_run`, or directly from arrays (the
    synthetic toy-null model of the tests does this), so that every metric runs the same
    code on both.

    Attributes
    ----------
    layers, heads : model layer / query-head indices of the captured axes
    scores : [L, H, N, N] f32 pre-softmax scores, −inf where masked, or None
    attention : [L, H, N, N] f32 probabilities, 0 where masked, or None
    step : [N] int, −1 for prompt slots (and the compat preset's duplicate slot P)
    rank : [N] int, member rank (−1 for prompt slots)
    position : [N] float, logical (RoPE) position
    is_parallel : [N] bool, the slot's member belongs to a set with k ≥ 2
    set_width : [N] int
    probability : [N] float, selection probability (NaN for prompt slots)
    visibility : [N, N] bool, query row × key column
    prompt_length : P, the number of prompt slots of the tree (BOS included)
    token_id : [N] int
    pieces : N piece strings (leading spaces kept)
    kind : "generate", "replay", "tempo-2025" or "synthetic"
    encoding : the layout's encoding
    member_keys : per slot, (−1, slot) for prompt slots, (step, rank) for members: the
        identity that survives re-encoding (used to carry sinks across encodings)
    printed_set_starts, set_widths : compat runs only: printed-sequence index of each
        set's first member and the sets' widths (to rebuild the prototype's labels)
    cache : values derived from the view alone (token covariates, the gathered score
        grid of counted pairs), computed once; never copied by dataclasses.replace
    value_norms : [L, H, N] f32 ‖v_k W_O^h‖ per captured layer, head and key slot, or None
        (M3 reads it)
    """

    layers: list[int]
    heads: list[int]
    scores: torch.Tensor | None
    attention: torch.Tensor | None
    step: np.ndarray
    rank: np.ndarray
    position: np.ndarray
    is_parallel: np.ndarray
    set_width: np.ndarray
    probability: np.ndarray
    visibility: np.ndarray
    prompt_length: int
    token_id: np.ndarray
    pieces: list[str]
    kind: str = "synthetic"
    encoding: str = ""
    member_keys: list[tuple[int, int]] = field(default_factory=list)
    printed_set_starts: list[int] | None = None
    set_widths: list[int] | None = None
    # Not an init field: a copy made with dataclasses.replace starts with an empty cache.
    cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    value_norms: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.member_keys:
            self.member_keys = [
                (-1, i) if s < 0 else (int(s), int(r))
                for i, (s, r) in enumerate(zip(self.step, self.rank, strict=True))
            ]

    @property
    def num_slots(self) -> int:
        return len(self.step)

    @classmethod
    def from_run(cls, run: Any) -> CaptureView:
        """The arrays of an :class:`attnvar.Run` (generation, replay or compat preset).

        Scores and attention are taken when captured (a run without either can still
        be viewed, but metrics that need them raise). Visibility is the run's: the mask
        the engine applied (``attnvar.engine.visibility``), the emulated isolation bug
        included.
        """
        slots = run._slot_columns()
        # The three fields in one sweep over the passes (each pass file read once); a
        # field the run did not capture, or could not read, is None.
        value_norms, scores, attention = _captured(run, ("value_norms", "scores", "attention"))
        visibility = np.asarray(run.visibility, dtype=bool)  # what the engine applied
        dense = scores if scores is not None else attention
        heads = (list(run.capture_heads) if run.capture_heads is not None
                 else list(range(dense.shape[1] if dense is not None else 0)))
        compat = run.kind == "tempo-2025"
        return cls(
            layers=list(run.capture_layers),
            heads=heads,
            scores=scores,
            attention=attention,
            step=np.asarray(slots["step"], dtype=np.int64),
            rank=np.asarray(slots["rank"], dtype=np.int64),
            position=np.asarray(slots["position"], dtype=np.float64),
            is_parallel=np.asarray(slots["is_parallel"], dtype=bool),
            set_width=np.asarray(slots["set_width"], dtype=np.int64),
            probability=np.asarray(slots["probability"], dtype=np.float64),
            visibility=visibility,
            prompt_length=len(run.tree.prompt),
            token_id=np.asarray(slots["token_id"], dtype=np.int64),
            pieces=[str(p) for p in slots["piece"]],
            kind=run.kind,
            encoding=run.encoding,
            printed_set_starts=list(_core.printed_set_starts(run.tree)) if compat else None,
            set_widths=[len(s.members) for s in run.tree.steps] if compat else None,
            value_norms=value_norms,
        )


def _captured(run: Any, names: Sequence[str]) -> list[torch.Tensor | None]:
    """The run's dense capture fields ``names`` in f32, None for each one it did not
    capture or could not read (a ValueError reading it)."""
    found = run._assemble_fields(names)
    return [None if isinstance(found[n], ValueError) else found[n].float() for n in names]


def as_view(obj: Any) -> CaptureView:
    """A :class:`CaptureView` of a Run (or the view itself)."""
    return obj if isinstance(obj, CaptureView) else CaptureView.from_run(obj)


# ---- sinks -----------------------------------------------------------------------------

@dataclass
class Sinks:
    """Sink keys per captured (layer, head), keyed by member identity.

    ``mask[l, h, k]`` says whether ``keys[k]`` is a sink in layer ``layers[l]``, head
    ``heads[h]``. ``keys`` are member keys ((−1, prompt slot) or (step, rank)), so sinks
    found on a ``top_only`` replay apply to the same tree under any encoding.
    """

    layers: list[int]
    heads: list[int]
    keys: list[tuple[int, int]]
    mask: np.ndarray  # (layer, head, key) bool
    threshold: float = SINK_THRESHOLD

    def mask_for(self, view: CaptureView) -> np.ndarray:
        """[L, H, N] bool over ``view``'s slots and captured layers/heads; the first slot
        is always a sink; members the sink run did not have are never sinks."""
        out = np.zeros((len(view.layers), len(view.heads), view.num_slots), dtype=bool)
        li = [self.layers.index(layer) if layer in self.layers else -1 for layer in view.layers]
        hi = [self.heads.index(head) if head in self.heads else -1 for head in view.heads]
        if min(li, default=0) < 0 or min(hi, default=0) < 0:
            raise ValueError(
                f"sinks were found on layers {self.layers} / heads {self.heads}; the run "
                f"captured layers {view.layers} / heads {view.heads}"
            )
        index = {key: k for k, key in enumerate(self.keys)}
        for slot, key in enumerate(view.member_keys):
            k = index.get(key)
            if k is not None:
                out[:, :, slot] = self.mask[np.ix_(li, hi, [k])][:, :, 0]
        out[:, :, 0] = True
        return out


def find_sinks(
    run: Any,
    threshold: float = SINK_THRESHOLD,
    min_queries: int = SINK_MIN_QUERIES,
) -> Sinks:
    """Sinks of a (``top_only``) run: the first slot plus every key whose mean incoming
    attention from later generated queries exceeds ``threshold``, per layer and head.

    Parameters
    ----------
    run : a Run (or CaptureView) with attention captured; normally the ``top_only``
        replay of the tree being analysed, so that sinks are fixed before parallel labels
        are looked at
    threshold : mean incoming α above which a key is a sink (default 0.3)
    min_queries : keys seen by fewer later generated queries are never flagged (a key
        near the end has too few queries for a mean; recency is not a sink)

    Returns
    -------
    Sinks, keyed by member identity so it applies to other encodings of the tree.
    """
    view = as_view(run)
    if view.attention is None:
        raise ValueError("find_sinks needs attention probabilities (Capture(probabilities=True))")
    a = view.attention.double()  # (layer, head, query, key)
    n = view.num_slots
    later = np.triu(np.ones((n, n), dtype=bool), k=1).T  # later[q, k]: q > k
    counted = torch.from_numpy(later & view.visibility & (view.step >= 0)[:, None])
    nq = counted.sum(0)  # (key,)
    mean_in = (a * counted).sum(2) / nq.clamp(min=1)
    mask = (mean_in > threshold) & (nq >= min_queries)
    mask[:, :, 0] = True
    return Sinks(list(view.layers), list(view.heads), list(view.member_keys),
                 mask.numpy(), threshold)


# ---- pairs -----------------------------------------------------------------------------

@dataclass
class CountedPairs:
    """The pairs that count, as a dense (query, key) grid over generated slots.

    Attributes
    ----------
    view : the CaptureView counted
    query_slots : [Q] generated slots used as queries
    key_slots : [K] generated slots used as keys
    base : [Q, K] bool, the rules without sinks (visible, key step < query step)
    include : [L, H, Q, K] bool, ``base`` minus each head's sinks when excluded
    distance : [Q, K] f64 logical distance
    key_parallel : [K] bool labels used (the run's, or a placebo's)
    key_step, query_step : [K], [Q] int
    sinks_excluded : whether ``include`` removed sinks
    """

    view: CaptureView
    query_slots: np.ndarray
    key_slots: np.ndarray
    base: np.ndarray
    include: torch.Tensor
    distance: np.ndarray
    key_parallel: np.ndarray
    key_step: np.ndarray
    query_step: np.ndarray
    sinks_excluded: bool

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.include.shape)  # type: ignore[return-value]

    def _grid(self, name: str, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The [L, H, Q, K] f64 grid of ``name`` over this object's slots and where it is
        finite, gathered once per view and slot set (every metric, profile and placebo
        draw of a run reads the same grid; only ``include`` differs between them)."""
        key = ("grid", name)
        hit = self.view.cache.get(key)
        if hit is not None and np.array_equal(hit[0], self.query_slots) \
                and np.array_equal(hit[1], self.key_slots):
            return hit[2], hit[3]
        grid = gather_grid(dense, self.query_slots, self.key_slots)
        finite = torch.isfinite(grid)
        self.view.cache[key] = (self.query_slots.copy(), self.key_slots.copy(), grid, finite)
        return grid, finite

    def values(self, name: str = "scores") -> torch.Tensor:
        """[L, H, Q, K] f64 scores or attention on the grid; entries that do not count
        are 0 (read ``include`` to know which do)."""
        dense = getattr(self.view, name)
        if dense is None:
            raise ValueError(f"this run did not capture {name}; pass capture="
                             f"attnvar.Capture({'scores=True' if name == 'scores' else ''})")
        grid, finite = self._grid(name, dense)
        bad = self.include & ~finite
        if bool(bad.any()):
            raise ValueError("a counted pair has a non-finite score: the visibility and the "
                             "capture disagree")
        return torch.where(self.include, grid, torch.zeros((), dtype=grid.dtype))


def gather_grid(dense: torch.Tensor, query_slots: np.ndarray,
                key_slots: np.ndarray) -> torch.Tensor:
    """[L, H, Q, K] f64 copy of ``dense`` ([L, H, N, N]) at the given query and key slots
    (a slice when the slots are consecutive, as generated slots are)."""
    def span(slots: np.ndarray) -> slice | None:
        if len(slots) and np.array_equal(slots, np.arange(slots[0], slots[0] + len(slots))):
            return slice(int(slots[0]), int(slots[0]) + len(slots))
        return None

    q, k = span(query_slots), span(key_slots)
    if q is not None and k is not None:
        return dense[:, :, q, k].double().contiguous()
    return dense[:, :, torch.from_numpy(query_slots)][:, :, :, torch.from_numpy(key_slots)].double()


def count_pairs(
    run: Any,
    sinks: Sinks | None = None,
    exclude_sinks: bool = True,
    labels: np.ndarray | Sequence[bool] | None = None,
) -> CountedPairs:
    """Apply the counting rules to a run.

    Parameters
    ----------
    run : a Run or CaptureView
    sinks : sinks from :func:`find_sinks` on the ``top_only`` replay of the same tree;
        None means only the first slot (which is a prompt slot, so no generated key is
        removed)
    exclude_sinks : remove sinks from P and N (False: the "without exclusion" report)
    labels : [N] bool per slot overriding the run's parallel labels (placebo tests)

    Returns
    -------
    CountedPairs
    """
    view = as_view(run)
    n = view.num_slots
    generated = view.step >= 0
    query_slots = np.flatnonzero(generated)
    key_slots = np.flatnonzero(generated)
    qs, ks = view.step[query_slots], view.step[key_slots]
    base = (ks[None, :] < qs[:, None]) & view.visibility[np.ix_(query_slots, key_slots)]
    dense = view.scores if view.scores is not None else view.attention
    L = len(view.layers) if dense is None else dense.shape[0]
    H = len(view.heads) if dense is None else dense.shape[1]
    include = torch.from_numpy(base).expand(L, H, -1, -1).clone()
    if exclude_sinks:
        sink = sinks.mask_for(view) if sinks is not None else _first_slot_only(L, H, n)
        include &= ~torch.from_numpy(sink[:, :, key_slots])[:, :, None, :]
    lab = view.is_parallel if labels is None else np.asarray(labels, dtype=bool)
    if lab.shape != (n,):
        raise ValueError(f"labels must have one entry per slot ({n}), got shape {lab.shape}")
    distance = view.position[query_slots][:, None] - view.position[key_slots][None, :]
    return CountedPairs(
        view=view,
        query_slots=query_slots,
        key_slots=key_slots,
        base=base,
        include=include,
        distance=distance,
        key_parallel=lab[key_slots].copy(),
        key_step=ks,
        query_step=qs,
        sinks_excluded=exclude_sinks,
    )


def _first_slot_only(L: int, H: int, n: int) -> np.ndarray:
    out = np.zeros((L, H, n), dtype=bool)
    out[:, :, 0] = True
    return out


def placebo_labels(
    run: Any,
    fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Random steps labelled parallel: round(fraction × steps) generated steps chosen
    uniformly, every slot of a chosen step labelled. For ``top_only`` runs, whose real
    parallel structure is absent, so the labels carry no effect by construction.

    Returns
    -------
    [N] bool labels for :func:`count_pairs`.
    """
    view = as_view(run)
    steps = np.unique(view.step[view.step >= 0])
    chosen = rng.choice(steps, size=int(round(fraction * len(steps))), replace=False)
    return np.isin(view.step, chosen) & (view.step >= 0)
