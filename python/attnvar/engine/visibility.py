"""The one source of a run's visibility: which keys each query slot was allowed to see.

Every run carries the [N, N] bool mask (query row × key column) that the engine applied
when it computed the run. Generated and replayed runs take it from the layout of their
encoding (``_core.encode``); the compat preset ``tempo-2025`` feeds one token per pass
and builds each query's row with ``_core.tempo_bug_visibility`` when it emulates the
prototype's isolation bug, causal otherwise, and :func:`applied_visibility` rebuilds the
full matrix from that same engine function. A query's row depends only on the sets
chosen before it was fed (later sets start at or after its printed index), so the
rebuild from the finished tree is the mask that was applied. Counting, ``Run.to_frame``
and the plots all read ``run.visibility``; none assumes causal.
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
    """The [N, N] bool mask the engine applied to a run of this kind, encoding and tree.

    Raises ValueError when the layout of ``encoding`` does not have ``num_slots`` slots
    (a run whose slot table does not belong to its tree)."""
    if kind == COMPAT_KIND:
        return tempo2025_visibility(tree, num_slots,
                                    bool(options.get("emulate_isolation_bug", False)))
    vis = _core.encode(tree, encoding).visibility
    if vis.shape != (num_slots, num_slots):
        raise ValueError(f"the {encoding} layout of this tree has {vis.shape[0]} slots, the "
                         f"run has {num_slots}")
    return vis


__all__ = ["COMPAT_KIND", "applied_visibility", "tempo2025_visibility"]
