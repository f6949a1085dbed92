"""The one source of a run's visibility: which keys each query slot was allowed to see.

Every run carries the [N, N] bool mask (query row × key column) that the engine applied
when it computed the run. Generated and replayed runs take it from the layout of their
encoding (``_core.encode``). The compat preset ``tempo-2025`` feeds one token per pass
and the engine itself records every query's row as it applied it (``visibility`` of its
result): causal, the emulated isolation bug's rows (``_core.tempo_bug_visibility``) and
the stale-mask leak's rows from earlier prompts (``MaskLeak``) included; new compat runs
carry that record. :func:`applied_visibility` rebuilds the matrix only for compat runs
saved before runs carried their visibility: those ran without a leak, so each query's
row follows from the tree alone (it depends only on the sets chosen before it was fed,
and later sets start at or after its printed index), through that same engine function.
Counting, ``Run.to_frame`` and the plots all read ``run.visibility``; none assumes
causal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .. import _core

COMPAT_KIND = "tempo-2025"


def tempo2025_visibility(tree: _core.Tree, num_slots: int,
                         emulate_isolation_bug: bool) -> torch.Tensor:
    """The mask the ``tempo-2025`` preset applied to a run of ``num_slots`` slots: causal,
    and under ``emulate_isolation_bug`` each fed query's row as the engine built it."""
    vis = torch.tril(torch.ones(num_slots, num_slots, dtype=torch.bool))
    if emulate_isolation_bug:
        for q in range(tree.prompt_length, num_slots):
            vis[q, : q + 1] = _core.tempo_bug_visibility(tree, q)[0]
    return vis


def applied_visibility(kind: str, encoding: str, tree: _core.Tree, num_slots: int,
                       options: Mapping[str, Any]) -> torch.Tensor:
    """The [N, N] bool mask the engine applied to a run of this kind, encoding and tree,
    for runs saved without it.

    Raises ValueError for a compat run that had a stale-mask leak applied (its mask is
    not in its tree), and when the layout of ``encoding`` does not have ``num_slots``
    slots (a run whose slot table does not belong to its tree)."""
    if kind == COMPAT_KIND:
        if options.get("mask_leak"):
            raise ValueError("this tempo-2025 run ran with a stale-mask leak from earlier "
                             "prompts and has no stored visibility; it cannot be rebuilt "
                             "from its tree")
        return tempo2025_visibility(tree, num_slots,
                                    bool(options.get("emulate_isolation_bug", False)))
    vis = _core.encode(tree, encoding).visibility
    if vis.shape != (num_slots, num_slots):
        raise ValueError(f"the {encoding} layout of this tree has {vis.shape[0]} slots, the "
                         f"run has {num_slots}")
    return vis


__all__ = ["COMPAT_KIND", "applied_visibility", "tempo2025_visibility"]
