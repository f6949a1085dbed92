"""The compat preset's stale-mask leak between prompts run in one process.

The prototype behind ``tempo-2025`` ran its prompt suites one prompt after another in one
process. Every run wrapped each layer's attention once more, and the wrappers of earlier
runs stayed in the chain holding the last mask their own run had set. So an isolated-mode
run left its last mask behind (``_core.tempo_leak_mask`` of its tree), and every forward
pass of every later run took one row of each such mask on top of its own. A
:class:`MaskLeak` is that process state: the kept masks, oldest first. Hand one to
``Model.tempo2025(mask_leak=...)`` for every prompt of a suite, in order, and each run
sees what the prototype's did and adds its own mask when it is isolated-mode. Without
one, every prompt starts clean, as in a fresh process (docs/generation.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .. import _core
from .visibility import COMPAT_KIND


class MaskLeak:
    """The masks earlier isolated-mode compat runs of one emulated process left behind."""

    def __init__(self) -> None:
        self._masks: list[torch.Tensor] = []

    @classmethod
    def from_runs(cls, runs: Iterable[Any]) -> MaskLeak:
        """The state after ``runs`` ran in this order (e.g. a resumed suite's saved runs)."""
        leak = cls()
        for run in runs:
            leak.record(run)
        return leak

    def record(self, run: Any) -> bool:
        """Keep the mask ``run`` left behind: its ``_core.tempo_leak_mask`` when it is an
        isolated-mode compat run (``emulate_isolation_bug``); a visible-mode run leaves
        none. Returns whether a mask was kept. Works with runs loaded from disk. Raises
        ValueError for a run that is not a ``tempo-2025`` run."""
        kind = getattr(run, "kind", None)
        if kind != COMPAT_KIND:
            raise ValueError(f"MaskLeak.record: a {kind!r} run; only {COMPAT_KIND} runs "
                             "take part in the stale-mask leak")
        if not bool(run.options.get("emulate_isolation_bug", False)):
            return False
        self._masks.append(_core.tempo_leak_mask(run.tree))
        return True

    @property
    def masks(self) -> tuple[torch.Tensor, ...]:
        """The kept [S_j, S_j] bool masks (true = visible), oldest first."""
        return tuple(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def clear(self) -> None:
        """Forget every kept mask: a fresh process."""
        self._masks.clear()

    def __repr__(self) -> str:
        sizes = ", ".join(str(m.shape[0]) for m in self._masks)
        return f"MaskLeak([{sizes}])"


__all__ = ["MaskLeak"]
