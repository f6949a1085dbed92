"""M4: attention rollout against the ``top_only`` replay of the same tree.

Rollout (Abnar & Zuidema 2020, with the residual): per layer l the heads' attention is
averaged, Â_l = ½·mean_h α[l, h] + ½·I, and R_l = Â_l · Â_{l−1} ··· Â_0. Row i of R_l
says how much of query slot i's representation after layer l traces back to each input
slot (rows sum to 1). The dense matrices are the run's assembled view (Run.attention):
each row from the pass that processed that query, masked entries exactly 0, so a key
invisible to i contributes only through slots that could see it.

Rollout needs every layer and every head: a partial capture is refused.

The comparison (metric "M4"). Queries are the rank-0 member of each step u (the printed
token), present in the run and in its ``top_only`` replay with the same token at the
same logical position; the only difference is the parallel siblings around it. For
such a query, the *parallel positions* are the earlier steps t < u whose set is parallel
(k_t ≥ 2, or labelled so by ``labels``). Per layer l:

- M_u = Σ_{t parallel, t<u} Σ_{j ∈ S_t} R_l[u, j] — rollout mass on every member of
  those sets in the run; M'_u = Σ_t R'_l[u, rank-0 slot of t] — the same positions in
  the ``top_only`` replay (one token each).
- ``position_mass``: estimate = mean over queries of log(M_u / M'_u) (negative: the
  parallel positions carry less of the query's rollout than the same positions do when
  only the printed token sits there; 0 if a position keeps its mass however many members
  share it).
- ``generated_share``: the same with each mass divided by the rollout mass on all
  earlier generated positions (G_u, G'_u), log((M_u/G_u) / (M'_u/G'_u)): the prompt and
  the sinks soak up most rollout mass, so this reads the parallel positions' share of the
  generated context.

Sinks: rollout mixes heads and layers, so a position leaves both P and the generated
context (in both runs) when its rank-0 member is a sink in any (layer, head) of
``sinks`` (``exclude_sinks=True``); ``False`` keeps every position.

Rows: one per layer (``layer = l``, ``head = −1``: rollout through layer l) and the
prompt row (``layer = head = −1``: the full rollout, equal to the last layer's row).
Extra columns: ``mass_run``, ``mass_top_only`` (means of M, M') for ``position_mass``;
``share_run``, ``share_top_only`` for ``generated_share``. Queries are one per step, so
the SE is over steps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .contrast import aggregate_batch
from .counting import CaptureView, Sinks, as_view
from .frames import ALL, block, frame

VARIANTS = ("position_mass", "generated_share")


def _check_complete(run: Any, view: CaptureView) -> None:
    if view.attention is None:
        raise ValueError("rollout needs attention probabilities (Capture(probabilities=True))")
    L, H = view.attention.shape[:2]
    model = getattr(run, "model", None)
    layers = model.get("num_layers", L) if isinstance(model, dict) else L
    heads = model.get("num_heads", H) if isinstance(model, dict) else H
    if list(view.layers) != list(range(layers)) or list(view.heads) != list(range(heads)):
        raise ValueError(
            f"rollout needs every layer and head captured; this run captured layers "
            f"{list(view.layers)} and heads {list(view.heads)} of {layers} × {heads}"
        )


def rollout(run: Any) -> torch.Tensor:
    """Attention rollout with the residual, through each layer.

    Parameters
    ----------
    run : a Run or CaptureView with attention captured for every layer and head

    Returns
    -------
    [L, N, N] f64: ``out[l]`` = Â_l ··· Â_0 with Â = ½·mean_h α + ½·I (rows sum to 1).
    """
    view = as_view(run)
    _check_complete(run, view)
    hit = view.cache.get("rollout")
    if hit is not None:  # a view's rollout is computed once (both sink rules read it)
        return hit
    a = view.attention.double().mean(1)  # (layer, query, key)
    eye = torch.eye(view.num_slots, dtype=torch.float64)
    out = torch.empty_like(a)
    r = eye
    for layer in range(a.shape[0]):
        r = (0.5 * a[layer] + 0.5 * eye) @ r
        out[layer] = r
    view.cache["rollout"] = out
    return out


def _sink_steps(sinks: Sinks | None) -> set[int]:
    if sinks is None:
        return set()
    any_head = sinks.mask.any((0, 1))
    return {key[0] for key, flag in zip(sinks.keys, any_head, strict=True)
            if flag and key[0] >= 0}


def rollout_masses(
    run: Any,
    top_only: Any,
    sinks: Sinks | None = None,
    exclude_sinks: bool = True,
    labels: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The per-query masses behind :func:`rollout_contrast`, as arrays.

    Returns
    -------
    dict with ``steps`` [Q] (query steps), ``mass_run``, ``mass_top_only``,
    ``generated_run``, ``generated_top_only`` ([L, Q] f64), ``n_positions`` [Q] (parallel
    positions per query) and ``n_member_keys`` [Q] (their members in the run).
    """
    view, top = as_view(run), as_view(top_only)
    if top.encoding != "top_only":
        raise ValueError(f"M4 compares against the top_only replay of the same tree; the "
                         f"second run's encoding is {top.encoding!r}")
    r_run, r_top = rollout(run), rollout(top_only)
    if r_run.shape[0] != r_top.shape[0]:
        raise ValueError("the run and its top_only replay have different numbers of layers")
    lab = view.is_parallel if labels is None else np.asarray(labels, dtype=bool)
    if lab.shape != (view.num_slots,):
        raise ValueError(f"labels must have one entry per slot ({view.num_slots})")
    top_slot = {key: i for i, key in enumerate(top.member_keys)}
    run_slot = {key: i for i, key in enumerate(view.member_keys)}
    for key, i in top_slot.items():
        j = run_slot.get(key)
        if j is None or view.token_id[j] != top.token_id[i]:
            raise ValueError(f"the top_only run is not a replay of this run's tree "
                             f"(member {key} differs)")
    skip = _sink_steps(sinks) if exclude_sinks else set()
    steps = np.unique(view.step[view.step >= 0])
    member = (view.step[None, :] == steps[:, None]).astype(np.float64)  # (step, run slot)
    parallel = (member.astype(bool) & lab[None, :]).any(1)
    in_top = np.array([(int(t), 0) in top_slot for t in steps], dtype=bool)
    top_member = np.zeros((len(steps), top.num_slots))  # (step, top slot): its rank-0 member
    top_member[np.flatnonzero(in_top), [top_slot[(int(t), 0)] for t in steps[in_top]]] = 1.0
    queries = [int(u) for u, ok in zip(steps, in_top, strict=True)
               if ok and (int(u), 0) in run_slot]
    # Each query reads the earlier steps that are not sinks and have a top_only member.
    reads = ((steps[None, :] < np.asarray(queries, dtype=np.int64)[:, None])
             & ~np.isin(steps, list(skip))[None, :] & in_top[None, :])  # (query, step)
    kinds = np.stack([reads & parallel[None, :], reads]).astype(np.float64)
    w_run = kinds @ member  # (parallel | generated, query, key slot)
    w_top = kinds @ top_member
    n_pos = (reads & parallel[None, :]).sum(1).astype(np.int64)
    n_keys = ((reads & parallel[None, :]) @ member.sum(1)).astype(np.int64)
    rows_run = r_run[:, [run_slot[(u, 0)] for u in queries]].numpy()  # (layer, query, key)
    rows_top = r_top[:, [top_slot[(u, 0)] for u in queries]].numpy()
    mass_run = np.einsum("lqk,wqk->wlq", rows_run, w_run)
    mass_top = np.einsum("lqk,wqk->wlq", rows_top, w_top)
    return dict(steps=np.asarray(queries, dtype=np.int64), mass_run=mass_run[0],
                mass_top_only=mass_top[0], generated_run=mass_run[1],
                generated_top_only=mass_top[1], n_positions=n_pos, n_member_keys=n_keys,
                layers=np.asarray(view.layers))


def rollout_contrast(
    run: Any,
    top_only: Any,
    sinks: Sinks | None = None,
    exclude_sinks: bool = True,
    labels: np.ndarray | None = None,
    prompt: str | None = None,
):
    """M4: rollout mass of later queries on parallel positions, run vs ``top_only``.

    Parameters
    ----------
    run : a Run (or CaptureView) of the tree, attention captured for every layer and head
    top_only : the ``top_only`` replay of the same tree, captured the same way
    sinks : from :func:`find_sinks` on the ``top_only`` replay (a position is left out
        when its rank-0 member is a sink in any layer and head)
    exclude_sinks : leave sink positions out (False: keep every position)
    labels : [N] bool over the run's slots overriding the parallel labels (a step is
        parallel if any of its slots is labelled; placebo and identity checks)
    prompt : the prompt id written into the table

    Returns
    -------
    pandas.DataFrame (frames.COLUMNS), metric "M4", variants "position_mass" and
    "generated_share", one row per layer (head −1) plus the prompt row (the full
    rollout); log scale, negative = parallel positions carry less rollout mass.
    """
    view = as_view(run)
    return frame(rollout_blocks(run, top_only, sinks, exclude_sinks, labels), prompt=prompt,
                 kind=view.kind, encoding=view.encoding, sinks_excluded=exclude_sinks)


def rollout_blocks(run: Any, top_only: Any, sinks: Sinks | None = None,
                   exclude_sinks: bool = True, labels: np.ndarray | None = None) -> list[dict]:
    """The M4 rows of :func:`rollout_contrast` as column blocks (no table)."""
    m = rollout_masses(run, top_only, sinks, exclude_sinks, labels)
    Q = m["mass_run"].shape[1]
    groups = torch.eye(Q, dtype=torch.float64)  # one query per step
    blocks = []
    with np.errstate(divide="ignore", invalid="ignore"):
        share_run = m["mass_run"] / m["generated_run"]
        share_top = m["mass_top_only"] / m["generated_top_only"]
    pairs = {
        "position_mass": (m["mass_run"], m["mass_top_only"], ("mass_run", "mass_top_only")),
        "generated_share": (share_run, share_top, ("share_run", "share_top_only")),
    }
    valid, stack = [], []
    for num, den, _ in pairs.values():
        ok = (m["n_positions"] > 0)[None, :] & (num > 0) & (den > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = np.where(ok, np.log(num) - np.log(den), 0.0)
        valid += [ok] * 3
        stack += [log_ratio, np.where(ok, num, 0.0), np.where(ok, den, 0.0)]
    # One aggregation (over layers × queries) for both variants and their extra columns.
    mean, se, nq, _ = aggregate_batch(torch.from_numpy(np.stack(stack))[:, :, None, :],
                                      torch.from_numpy(np.stack(valid))[:, :, None, :], groups)

    def with_full(x):
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return np.append(x, x[-1] if len(x) else math.nan)

    for i, (variant, (_, _, names)) in enumerate(pairs.items()):
        ok = valid[3 * i]
        n_pairs = (ok * m["n_positions"][None, :]).sum(-1)
        n_par = (ok * m["n_member_keys"][None, :]).sum(-1)
        blocks.append(block(
            "M4", variant, np.append(m["layers"], ALL), ALL, with_full(mean[3 * i][:, 0]),
            with_full(se[3 * i][:, 0]), n_queries=with_full(nq[3 * i][:, 0]),
            n_pairs=with_full(n_pairs), n_parallel_pairs=with_full(n_par),
            **{name: with_full(mean[3 * i + 1 + j][:, 0]) for j, name in enumerate(names)}))
    return blocks
