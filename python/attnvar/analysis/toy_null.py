"""The metrics' toy null: a synthetic "model" in which parallel status plays no part.

Scores are f(logical distance) + a query offset + N(0, 1) noise + a large sink on the
first slot; parallel status plays no part. Sets are laid out as parallel generation lays
them out (one logical position per step, members in consecutive slots, siblings hidden
from each other in ``isolated`` mode and visible in ``visible`` mode), with set widths
drawn from what the bundled model produced.
"""

from __future__ import annotations

import numpy as np
import torch

from .metrics import CaptureView

# Set widths of 10 bundled-model runs (core suite prompts 0, 4, …, 36; threshold 0.1,
# isolated, 30 steps): 98 steps of width 1, 105 of 2, 45 of 3, 11 of 4 (62 % parallel).
WIDTHS = np.array([1, 2, 3, 4])
WIDTH_P = np.array([98, 105, 45, 11]) / 259.0
WORDS = [" the", " cat", " sat", " on", " a", " mat", ",", ".", " and", "ing", "\n", " of"]


def distance_profile(d: np.ndarray, slope: float = 1.5) -> np.ndarray:
    """Scores fall with log distance (recency), as in real heads."""
    return -slope * np.log1p(d)


def toy_view(
    rng: np.random.Generator,
    mode: str = "isolated",
    steps: int = 20,
    prompt_length: int = 6,
    layers: int = 1,
    heads: int = 2,
    sink: float = 8.0,
    placement: str = "random",
    slope: float = 1.5,
) -> CaptureView:
    """One simulated prompt.

    ``placement="early"`` puts every parallel set in the first half of the steps (the
    widths are drawn as usual, then sorted so wide sets come first): a distance confound
    that the plain M1 cannot remove and the distance-matched variants can. ``slope`` is
    the fall of scores per unit of log(1 + d); 0 makes every key exchangeable.
    """
    widths = rng.choice(WIDTHS, p=WIDTH_P, size=steps)
    if placement == "early":
        widths = np.sort(widths)[::-1]
    step = [-1] * prompt_length
    rank = [-1] * prompt_length
    prob = [np.nan] * prompt_length
    for t, k in enumerate(widths):
        step += [t] * k
        rank += list(range(k))
        p = np.sort(rng.dirichlet(np.ones(k)))[::-1] * (0.9 if k > 1 else 1.0)
        prob += list(p if k > 1 else rng.uniform(0.3, 1.0, 1))
    step = np.array(step)
    n = len(step)
    position = np.where(step < 0, np.arange(n), prompt_length + step).astype(np.float64)
    vis = np.tril(np.ones((n, n), dtype=bool))
    same = (step[:, None] == step[None, :]) & (step[:, None] >= 0)
    if mode == "isolated":
        vis &= ~same | np.eye(n, dtype=bool)
    elif mode == "visible":
        vis |= same
    else:
        raise ValueError(mode)
    d = position[:, None] - position[None, :]
    s = (distance_profile(np.abs(d), slope)[None, None]
         + rng.normal(size=(layers, heads, n, 1))
         + rng.normal(size=(layers, heads, n, n)))
    s[:, :, :, 0] += sink
    s = np.where(vis, s, -np.inf)
    scores = torch.from_numpy(s).float()
    width = np.concatenate([np.ones(prompt_length, dtype=int), np.repeat(widths, widths)])
    pieces = [WORDS[i] for i in rng.integers(0, len(WORDS), size=n)]
    return CaptureView(
        layers=list(range(layers)),
        heads=list(range(heads)),
        scores=scores,
        attention=torch.softmax(scores, -1),
        step=step,
        rank=np.array(rank),
        position=position,
        is_parallel=(step >= 0) & (width >= 2),
        set_width=width,
        probability=np.array(prob),
        visibility=vis,
        prompt_length=prompt_length,
        token_id=rng.integers(3, 90, size=n),
        pieces=pieces,
        kind="synthetic",
        encoding=f"shared_{mode}",
    )


__all__ = ["WIDTHS", "WIDTH_P", "distance_profile", "toy_view"]
