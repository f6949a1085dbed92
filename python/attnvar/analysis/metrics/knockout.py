"""M5: knockout — what the next-token prediction loses when later queries cannot read
the parallel keys, against knocking out as many matched non-parallel keys.

The knockout is an attention-edge knockout: in layers [a, b), every query of a step
strictly later than key j's step gets a bias of −inf on key j (the counting rules'
"later-step queries only"). The key's own row and its siblings' rows are untouched, so
j's own representation is computed as usual and only what later tokens read from it is
cut. The engine's intervention (KeyBias: layer window, key slots, delta = −inf) applies
to every query of a pass, so the tree is fed one pass per step (the prompt in one pass)
and each pass names only the knocked keys of earlier steps; without knocked keys this is
an ordinary chunked replay (it equals ``Model.replay``'s distributions, tested).
Knocking keys out in every layer equals running the tree without those tokens, at the
same positions for the rest (tested against HF transformers).

Next-token distributions follow the replay's next-step policy (``mixture`` by default:
q_{t+1} = Σ_i w_i softmax(logits_i / T) over step t's fed members, w ∝ selection
probability), computed in log space in f64 from the engine's f32 logits, so that KL and
log p never meet an f32 underflow. Per evaluated step u (q_{u+1} from step u's members):

- KL(q_base ‖ q_knocked) in nats;
- Δlog p = log q_knocked(x) − log q_base(x) of the actual continuation x, the rank-0
  member of step u + 1 (the printed next token).

Evaluated steps: every step u later than the earliest eligible parallel key's step
whose continuation exists (u + 1 < number of steps); the same steps for every knockout
of the tree, so the P and N effects are paired step by step.

Keys. P: the members of parallel steps (k ≥ 2); N: members of single-member steps;
generated slots only. Sinks (member-keyed, from ``find_sinks`` on the ``top_only``
replay) leave both when ``exclude_sinks`` and they are a sink in any layer and head.
Parallel keys outnumber non-parallel ones in most trees (62 % of steps parallel, mean
width ≈ 2.3 at θ = 0.1), so the comparison is made at equal counts m = min(|P|, |N|):
an optimal assignment (:func:`match_keys`) pairs m P keys with m distinct N keys at
least total cost |Δ position| + ``class_weight`` · [piece type differs] (position
matching makes the logical distance to every later query match at once; when |P| > |N|
the P keys that match best are the ones compared). Equal-cost alternatives are drawn at
random: ``draws`` assignments from ``seed``, effects averaged over draws per step.

Rows (metric "M5", ``layer = head = −1``, the window in extra columns ``layer_begin``,
``layer_end``), for ``term`` "kl" and "delta_logp", scale "nats":

- ``all_parallel``: every eligible P key knocked out at once (no counterpart);
- ``parallel``: the matched subset of P;
- ``matched_nonparallel``: their matched N keys;
- ``contrast``: ``parallel`` − ``matched_nonparallel`` per step (positive KL contrast:
  cutting parallel keys moves the prediction more). For term "kl", ``ratio`` =
  mean KL_P / mean KL_N and ``effect_pct`` = 100·(1 − ratio), a reduction in the sign
  convention: positive = later tokens depend less on parallel keys than on as many
  matched non-parallel keys.

``estimate`` is the mean over evaluated steps, ``se`` their SE (steps as units,
descriptive). ``n_queries``: evaluated steps; ``n_pairs`` and ``n_parallel_pairs``: the
parallel keys knocked out per knockout (the matched knockout removes as many N keys).
Extra: ``draws``, ``match_distance`` (mean |Δ position| of matched pairs),
``class_match`` (share of matched pairs with equal piece type).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import _core
from .counting import CaptureView, Sinks
from .covariates import token_covariates
from .frames import ALL, block, frame

VARIANTS = ("all_parallel", "parallel", "matched_nonparallel", "contrast")


@dataclass
class KnockoutReplay:
    """One teacher-forced pass-per-step replay of a tree, with keys knocked out.

    Attributes
    ----------
    layout : the tree's ``_core.Layout`` under the encoding
    logits : [N, V] f32, one row per slot
    log_next : [D, V] f64 log next-step distributions: row 0 is q_0 (last prompt slot),
        row t + 1 is q_{t+1} from step t's fed members (D = 1 + steps with a fed member)
    key_slots : the knocked-out key slots
    layer_begin, layer_end : the layer window
    """

    layout: Any
    logits: torch.Tensor
    log_next: torch.Tensor
    key_slots: np.ndarray
    layer_begin: int
    layer_end: int


def _core_model(model: Any):
    return model.core if hasattr(model, "core") else model


def _log_policy(logits: torch.Tensor, weights: Sequence[float], policy: str,
                temperature: float) -> torch.Tensor:
    """log q of the next-step policy (generate/next_step.cpp) in f64."""
    x = logits.double() / temperature
    if policy == "top":
        return torch.log_softmax(x[0], -1)
    if policy == "last":
        return torch.log_softmax(x[-1], -1)
    if policy == "mean_logits":
        return torch.log_softmax(x.mean(0), -1)
    if policy == "mixture":
        w = torch.tensor(weights, dtype=torch.float64)
        return torch.logsumexp(torch.log(w / w.sum())[:, None] + torch.log_softmax(x, -1), 0)
    raise ValueError(f"policy must be mixture, top, last or mean_logits; got {policy!r}")


def knockout_replay(
    model: Any,
    tree: Any,
    key_slots: Sequence[int] = (),
    layer_begin: int = 0,
    layer_end: int | None = None,
    encoding: str = "shared_isolated",
    policy: str = "mixture",
    temperature: float = 1.0,
) -> KnockoutReplay:
    """Replay ``tree`` one pass per step with ``key_slots`` hidden from the queries of
    strictly later steps in layers [layer_begin, layer_end).

    Parameters
    ----------
    model : an attnvar Model (or its ``_core.Model``)
    tree : the tree (``run.tree`` or a hand-built one)
    key_slots : slots in the encoding's layout; none: an ordinary replay
    layer_begin, layer_end : the window (default: every layer)
    encoding : the layout (docs/generation.md, "Trees and encodings")
    policy, temperature : the next-step policy of the distributions

    Returns
    -------
    KnockoutReplay
    """
    core = _core_model(model)
    layer_end = core.num_layers if layer_end is None else int(layer_end)
    layer_begin = int(layer_begin)
    if not 0 <= layer_begin < layer_end <= core.num_layers:
        raise ValueError(f"layer window [{layer_begin}, {layer_end}) is not inside "
                         f"[0, {core.num_layers})")
    layout = _core.encode(tree, encoding)
    slots = layout.slots
    n = len(slots)
    step = np.array([s.step for s in slots], dtype=np.int64)
    keys = np.unique(np.asarray(key_slots, dtype=np.int64))
    if len(keys) and (keys.min() < 0 or keys.max() >= n):
        raise ValueError(f"key slots must be in [0, {n}); got {keys.tolist()}")
    begins = list(layout.step_begin)
    prompt_length = tree.prompt_length
    bounds = [(-1, 0, prompt_length)] + [
        (t, begins[t], begins[t + 1]) for t in range(len(begins) - 1) if begins[t + 1] > begins[t]
    ]
    ids, positions, visibility = layout.token_ids, layout.positions, layout.visibility
    cache = core.new_cache(n)
    logits = []
    for t, b, e in bounds:
        hidden = [int(k) for k in keys if step[k] < t]
        interventions = ([dict(layer_begin=layer_begin, layer_end=layer_end, key_slots=hidden)]
                         if hidden else [])
        out = core.forward(cache, ids[b:e], positions[b:e], visibility[b:e, :e],
                           interventions=interventions)
        logits.append(out["logits"])
    logits = torch.cat(logits)
    log_next = [_log_policy(logits[prompt_length - 1 : prompt_length], [1.0], "top",
                            temperature)]
    for t, b, e in bounds[1:]:
        members = tree.steps[t].members
        weights = []
        for i in range(b, e):
            p = members[slots[i].member].probability
            weights.append(1.0 if math.isnan(p) else p)
        log_next.append(_log_policy(logits[b:e], weights, policy, temperature))
    return KnockoutReplay(layout, logits, torch.stack(log_next), keys, layer_begin, layer_end)


def next_token_effects(base: KnockoutReplay, knocked: KnockoutReplay, tree: Any,
                       steps: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """KL(q_base ‖ q_knocked) and Δlog p of the continuation for each step u in
    ``steps`` (q_{u+1} from step u's members; continuation: step u + 1's rank-0 member).

    Returns
    -------
    (kl [E], delta_logp [E]) f64
    """
    d = torch.as_tensor(np.asarray(steps, dtype=np.int64) + 1)
    lb, lk = base.log_next[d], knocked.log_next[d]
    kl = (lb.exp() * (lb - lk)).sum(-1)
    cont = torch.tensor([tree.steps[int(u) + 1].members[0].token_id for u in steps],
                        dtype=torch.long)
    dlogp = lk.gather(1, cont[:, None])[:, 0] - lb.gather(1, cont[:, None])[:, 0]
    return kl.numpy(), dlogp.numpy()


def match_keys(
    targets: np.ndarray,
    candidates: np.ndarray,
    position: np.ndarray,
    piece_class: np.ndarray,
    rng: np.random.Generator,
    class_weight: float = 2.0,
) -> np.ndarray:
    """Match target keys to distinct candidate keys at least total cost, cost =
    |Δ logical position| + ``class_weight`` · [piece class differs] (an optimal
    assignment, scipy's ``linear_sum_assignment``). Equal-cost alternatives are chosen
    at random: each cost gets a jitter below 10⁻⁶ drawn from ``rng``, far below the
    smallest real difference between costs of integer positions and a class weight.
    With more targets than candidates, the targets that match best get a partner.

    Returns
    -------
    [len(targets)] candidate slot per target (in ``targets``' order), −1 for targets
    left without a candidate.
    """
    from scipy.optimize import linear_sum_assignment

    targets = np.asarray(targets, dtype=np.int64)
    candidates = np.asarray(candidates, dtype=np.int64)
    out = np.full(len(targets), -1, dtype=np.int64)
    if not len(targets) or not len(candidates):
        return out
    cost = (np.abs(position[targets][:, None] - position[candidates][None, :])
            + class_weight * (piece_class[targets][:, None] != piece_class[candidates][None, :]))
    cost = cost + 1e-6 * rng.random(cost.shape)
    rows, cols = linear_sum_assignment(cost)
    out[rows] = candidates[cols]
    return out


def _layout_view(model: Any, tree: Any, layout: Any, encoding: str) -> CaptureView:
    """Slot arrays of a layout (no capture), for labels, positions and piece types."""
    slots = layout.slots
    step = np.array([s.step for s in slots], dtype=np.int64)
    member = [s.member for s in slots]
    width = np.array([len(tree.steps[s].members) if s >= 0 else 1 for s in step])
    rank = np.array([tree.steps[s].members[m].rank if s >= 0 else -1
                     for s, m in zip(step, member, strict=True)])
    prob = np.array([tree.steps[s].members[m].probability if s >= 0 else np.nan
                     for s, m in zip(step, member, strict=True)], dtype=np.float64)
    token = np.array([s.token_id for s in slots], dtype=np.int64)
    pieces = (model._pieces(tree) if hasattr(model, "_pieces")
              else {int(i): f"<{int(i)}>" for i in token})
    return CaptureView(
        layers=[], heads=[], scores=None, attention=None, step=step, rank=rank,
        position=layout.positions.numpy().astype(np.float64),
        is_parallel=(step >= 0) & (width >= 2), set_width=width, probability=prob,
        visibility=layout.visibility.numpy().astype(bool), prompt_length=tree.prompt_length,
        token_id=token, pieces=[pieces.get(int(i), "") for i in token], kind="replay",
        encoding=encoding)


def knockout(
    model: Any,
    run: Any,
    windows: Sequence[tuple[int, int]] | None = None,
    sinks: Sinks | None = None,
    exclude_sinks: bool = True,
    draws: int = 4,
    seed: int = 0,
    class_weight: float = 2.0,
    encoding: str | None = None,
    policy: str | None = None,
    temperature: float | None = None,
    prompt: str | None = None,
):
    """M5: knockout of parallel keys vs as many matched non-parallel keys.

    Parameters
    ----------
    model : the attnvar Model the run was made with
    run : a Run (generation or replay; its tree and encoding are used) or a tree
    windows : layer windows [a, b) (default: one window over every layer)
    sinks : from :func:`find_sinks` on the ``top_only`` replay; a key that is a sink in
        any layer and head is never knocked out (with ``exclude_sinks``)
    exclude_sinks : see ``sinks``
    draws : matchings drawn among equal-cost alternatives (see module doc)
    seed : seed of the tie-breaking among equal-cost matchings
    class_weight : cost of a piece-type mismatch, in logical positions
    encoding : the layout when ``run`` is a tree (default ``shared_isolated``); a Run's
        own encoding otherwise
    policy, temperature : next-step policy of the distributions (default: the run's own,
        else ``mixture`` at temperature 1)
    prompt : the prompt id written into the table

    Returns
    -------
    pandas.DataFrame (frames.COLUMNS), metric "M5"; empty when the tree has no eligible
    parallel key or no evaluated step.
    """
    if hasattr(run, "tree"):
        if run.kind == "tempo-2025":
            raise ValueError("M5 replays the tree; compat-preset runs are not replayable")
        tree, enc, kind = run.tree, run.encoding, run.kind
        if encoding is not None and encoding != enc:
            raise ValueError(f"the run was made under {enc!r}, not {encoding!r}")
    else:
        tree, enc, kind = run, encoding or "shared_isolated", "replay"
    options = getattr(run, "options", None) or {}
    policy = policy or options.get("policy", "mixture")
    temperature = float(temperature if temperature is not None
                        else options.get("temperature", 1.0))
    core = _core_model(model)
    windows = [(0, core.num_layers)] if windows is None else [tuple(w) for w in windows]
    layout = _core.encode(tree, enc)
    view = _layout_view(model, tree, layout, enc)
    generated = view.step >= 0
    eligible = generated.copy()
    if exclude_sinks and sinks is not None:
        flagged = sinks.mask.any((0, 1))
        sink_keys = {key for key, f in zip(sinks.keys, flagged, strict=True) if f}
        eligible &= np.array([key not in sink_keys for key in view.member_keys])
    p_keys = np.flatnonzero(eligible & view.is_parallel)
    n_keys = np.flatnonzero(eligible & ~view.is_parallel)
    if not len(p_keys):
        return frame([], prompt=prompt, kind=kind, encoding=enc, sinks_excluded=exclude_sinks)
    num_steps = len(tree.steps)
    first = int(view.step[p_keys].min())
    kw = dict(encoding=enc, policy=policy, temperature=temperature)
    base = knockout_replay(model, tree, (), 0, None, **kw)
    steps = [u for u in range(first + 1, num_steps - 1) if u + 1 < base.log_next.shape[0]]
    if not steps:
        return frame([], prompt=prompt, kind=kind, encoding=enc, sinks_excluded=exclude_sinks)

    piece_class = token_covariates(view)["piece_type"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    m = min(len(p_keys), len(n_keys))
    subsets, matches = [], []
    for _ in range(draws if m else 0):
        match = match_keys(p_keys, n_keys, view.position, piece_class, rng, class_weight)
        subsets.append(p_keys[match >= 0])
        matches.append(match[match >= 0])
    if subsets:
        sub_all, match_all = np.concatenate(subsets), np.concatenate(matches)
        match_distance = float(np.abs(view.position[sub_all] - view.position[match_all]).mean())
        class_match = float((piece_class[sub_all] == piece_class[match_all]).mean())
    else:
        match_distance = class_match = math.nan

    blocks = []
    for a, b in windows:
        def effects(keys, a=a, b=b):
            ko = knockout_replay(model, tree, keys, a, b, **kw)
            return next_token_effects(base, ko, tree, steps)

        per = {"all_parallel": [effects(p_keys)]}
        if subsets:
            per["parallel"] = [effects(s) for s in subsets]
            per["matched_nonparallel"] = [effects(mt) for mt in matches]
        # (variant, term) -> [E] per-step values averaged over draws
        values = {(v, term): np.mean([e[i] for e in runs], axis=0)
                  for v, runs in per.items() for i, term in enumerate(("kl", "delta_logp"))}
        if subsets:
            for term in ("kl", "delta_logp"):
                values[("contrast", term)] = (values[("parallel", term)]
                                              - values[("matched_nonparallel", term)])
        for (variant, term), x in values.items():
            knocked = len(p_keys) if variant == "all_parallel" else m
            se = x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
            b_ = block("M5", variant, ALL, ALL, float(x.mean()), se, scale="nats", term=term,
                       n_queries=len(x), n_pairs=knocked,
                       n_parallel_pairs=knocked,
                       layer_begin=a, layer_end=b,
                       draws=1 if variant == "all_parallel" else len(subsets),
                       match_distance=(math.nan if variant == "all_parallel"
                                       else match_distance),
                       class_match=math.nan if variant == "all_parallel" else class_match)
            if variant == "contrast" and term == "kl":
                mean_n = values[("matched_nonparallel", "kl")].mean()
                ratio = values[("parallel", "kl")].mean() / mean_n if mean_n > 0 else math.nan
                b_["ratio"][:] = ratio
                b_["effect_pct"][:] = 100.0 * (1.0 - ratio)
            blocks.append(b_)
    return frame(blocks, prompt=prompt, kind=kind, encoding=enc, sinks_excluded=exclude_sinks)
