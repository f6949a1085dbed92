"""What a run is made of on its way to and from disk: one pass's captured tensors
(:class:`PassRecord`) and the tree as plain JSON-able data."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import _core
from ..util.atomic import write_with

FIELDS = ("attention", "scores", "value_norms")


class PassRecord:
    """What one forward pass recorded: queries are slots [first_slot, first_slot + T).

    Per captured layer: ``attention`` and ``scores`` (H', T, S), ``value_norms`` (H', S).
    A record read from disk (or streamed there during generation) loads its tensors on
    first access, so a long run need not hold every pass in memory.
    """

    def __init__(self, step: int, first_slot: int, num_queries: int,
                 tensors: dict[str, list[torch.Tensor]] | None = None,
                 source: Path | None = None) -> None:
        self.step = step
        self.first_slot = first_slot
        self.num_queries = num_queries
        self._tensors = tensors
        self.source = source

    @classmethod
    def from_core(cls, p) -> PassRecord:
        tensors: dict[str, list[torch.Tensor]] = {name: [] for name in FIELDS}
        for c in p.layers:
            for name, t in (("attention", c.probabilities), ("scores", c.scores),
                            ("value_norms", c.value_norms)):
                if t is not None:
                    tensors[name].append(t)
        return cls(p.step, p.first_slot, p.num_queries, tensors)

    def _fields(self) -> dict[str, list[torch.Tensor]]:
        if self._tensors is None:
            from safetensors.torch import load_file

            flat = load_file(str(self.source))
            self._tensors = {name: [] for name in FIELDS}
            for name in FIELDS:
                layer = 0
                while f"layer{layer:03d}.{name}" in flat:
                    self._tensors[name].append(flat[f"layer{layer:03d}.{name}"])
                    layer += 1
        return self._tensors

    def release(self) -> None:
        """Drop loaded tensors of a record backed by a file (they reload on access)."""
        if self.source is not None:
            self._tensors = None

    @property
    def attention(self) -> list[torch.Tensor]:
        return self._fields()["attention"]

    @property
    def scores(self) -> list[torch.Tensor]:
        return self._fields()["scores"]

    @property
    def value_norms(self) -> list[torch.Tensor]:
        return self._fields()["value_norms"]

    def write(self, path: Path) -> None:
        """Write this pass's tensors to one safetensors file, atomically."""
        from safetensors.torch import save_file

        flat = {f"layer{i:03d}.{name}": t.contiguous()
                for name, ts in self._fields().items() for i, t in enumerate(ts)}
        write_with(path, lambda tmp: save_file(flat, tmp))


def tree_to_dict(tree: _core.Tree) -> dict:
    return {
        "prompt": list(tree.prompt),
        "steps": [
            {
                "entropy": None if math.isnan(s.entropy) else s.entropy,
                "members": [
                    {
                        "token_id": m.token_id,
                        "probability": None if math.isnan(m.probability) else m.probability,
                        "rank": m.rank,
                        "is_eos": m.is_eos,
                        "slot": m.slot,
                    }
                    for m in s.members
                ],
            }
            for s in tree.steps
        ],
    }


def tree_from_dict(d: dict) -> _core.Tree:
    tree = _core.Tree()
    tree.prompt = [int(i) for i in d["prompt"]]
    steps = []
    for s in d["steps"]:
        step = _core.TreeStep()
        step.entropy = float("nan") if s.get("entropy") is None else float(s["entropy"])
        members = []
        for m in s["members"]:
            member = _core.Member()
            member.token_id = int(m["token_id"])
            member.probability = float("nan") if m.get("probability") is None else m["probability"]
            member.rank = int(m["rank"])
            member.is_eos = bool(m["is_eos"])
            member.slot = m.get("slot")
            members.append(member)
        step.members = members
        steps.append(step)
    tree.steps = steps
    return tree


__all__ = ["FIELDS", "PassRecord", "tree_from_dict", "tree_to_dict"]
