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

from .contrast import _aggregate
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
    a = view.attention.double().mean(1)  # (layer, query, key)
    eye = torch.eye(view.num_slots, dtype=torch.float64)
    out = torch.empty_like(a)
    r = eye
    for layer in range(a.shape[0]):
        r = (0.5 * a[layer] + 0.5 * eye) @ r
        out[layer] = r
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
    steps = [int(t) for t in np.unique(view.step[view.step >= 0])]
    parallel = {t: bool(lab[view.step == t].any()) for t in steps}
    members = {t: np.flatnonzero(view.step == t) for t in steps}
    queries = [u for u in steps if (u, 0) in run_slot and (u, 0) in top_slot]
    Q = len(queries)
    w_run = np.zeros((2, Q, view.num_slots))  # (parallel | generated, query, key slot)
    w_top = np.zeros((2, Q, top.num_slots))
    n_pos = np.zeros(Q, dtype=np.int64)
    n_keys = np.zeros(Q, dtype=np.int64)
    for q, u in enumerate(queries):
        for t in steps:
            if t >= u or t in skip or (t, 0) not in top_slot:
                continue
            for kind in ((0, 1) if parallel[t] else (1,)):
                w_run[kind, q, members[t]] = 1.0
                w_top[kind, q, top_slot[(t, 0)]] = 1.0
            if parallel[t]:
                n_pos[q] += 1
                n_keys[q] += len(members[t])
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
    m = rollout_masses(run, top_only, sinks, exclude_sinks, labels)
    Q = m["mass_run"].shape[1]
    zero = torch.zeros((), dtype=torch.float64)
    groups = torch.eye(Q, dtype=torch.float64)  # one query per step
    blocks = []
    with np.errstate(divide="ignore", invalid="ignore"):
        share_run = m["mass_run"] / m["generated_run"]
        share_top = m["mass_top_only"] / m["generated_top_only"]
    pairs = {
        "position_mass": (m["mass_run"], m["mass_top_only"], ("mass_run", "mass_top_only")),
        "generated_share": (share_run, share_top, ("share_run", "share_top_only")),
    }
    for variant, (num, den, names) in pairs.items():
        valid = (m["n_positions"] > 0)[None, :] & (num > 0) & (den > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = np.where(valid, np.log(num) - np.log(den), 0.0)
        v = torch.from_numpy(valid)[:, None, :]  # (layer, 1, query)
        mean, se, nq, _ = _aggregate(torch.from_numpy(log_ratio)[:, None, :], v, groups)
        extras = {name: _aggregate(torch.where(v, torch.from_numpy(x)[:, None, :], zero),
                                   v, groups)[0][:, 0]
                  for name, x in zip(names, (num, den), strict=True)}
        n_pairs = (valid * m["n_positions"][None, :]).sum(-1)
        n_par = (valid * m["n_member_keys"][None, :]).sum(-1)

        def with_full(x):
            x = np.asarray(x, dtype=np.float64).reshape(-1)
            return np.append(x, x[-1] if len(x) else math.nan)

        blocks.append(block(
            "M4", variant, np.append(m["layers"], ALL), ALL, with_full(mean[:, 0]),
            with_full(se[:, 0]), n_queries=with_full(nq[:, 0]), n_pairs=with_full(n_pairs),
            n_parallel_pairs=with_full(n_par),
            **{name: with_full(x) for name, x in extras.items()}))
    return frame(blocks, prompt=prompt, kind=view.kind, encoding=view.encoding,
                 sinks_excluded=exclude_sinks)
