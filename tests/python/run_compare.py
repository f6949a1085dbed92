"""Exact comparison of runs, for the tests that hold a batched run to its solo run."""

from __future__ import annotations

import torch


def same_captures(a, b, hooks: bool = False) -> bool:
    """Equal bit for bit: every pass's captured fields (and, with ``hooks``, its hook
    points), and the next-step distributions."""
    if len(a.passes) != len(b.passes):
        return False
    for pa, pb in zip(a.passes, b.passes, strict=True):
        for name in ("scores", "attention", "value_norms"):
            xs, ys = getattr(pa, name), getattr(pb, name)
            if len(xs) != len(ys) or not all(torch.equal(x, y) for x, y in zip(xs, ys,
                                                                                  strict=True)):
                return False
        if hooks and (pa.hooks.keys() != pb.hooks.keys() or not all(
                torch.equal(pa.hooks[k], pb.hooks[k]) for k in pa.hooks)):
            return False
    da, db = a.distributions, b.distributions
    return (da is None) == (db is None) and (da is None or torch.equal(da, db))
