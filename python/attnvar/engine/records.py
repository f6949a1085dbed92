"""What a run is made of on its way to and from disk: one pass's captured tensors
(:class:`PassRecord`) and the tree as plain JSON-able data."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import _core
from ..util.atomic import write_with

FIELDS = ("attention", "scores", "value_norms")
# safetensors metadata key: the layers whose attention a pass file does not store, because
# it is exactly the softmax of the stored scores (written as comma-separated indices).
ATTENTION_FROM_SCORES = "attention_from_scores"


def attention_of(scores: torch.Tensor) -> torch.Tensor:
    """α as the engine computes it from the pre-softmax scores (mask and key biases
    included in them): softmax over the key axis in f32."""
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


def recomputable(attention: torch.Tensor, scores: torch.Tensor) -> bool:
    """Whether ``attention`` is bit for bit the softmax of ``scores`` (both f32), so
    storing the scores alone loses nothing."""
    return (attention.dtype == torch.float32 and scores.dtype == torch.float32
            and attention.shape == scores.shape
            and torch.equal(attention_of(scores), attention))


class PassRecord:
    """What one forward pass recorded: queries are slots [first_slot, first_slot + T).

    Per captured layer: ``attention`` and ``scores`` (H', T, S), ``value_norms`` (H', S).
    A record read from disk (or streamed there during generation) loads its tensors on
    first access, so a long run need not hold every pass in memory.

    On disk a layer's attention is left out when it equals the softmax of its scores bit
    for bit (checked when writing; the file's metadata lists those layers) and recomputed
    on load with the same function: half the bytes of a run that captured both, nothing
    lost. Attention that differs from the softmax of the stored scores — f16 storage, or
    anything edited after the softmax — is stored as it is.
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
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(self.source), "pt") as f:
                derived = (f.metadata() or {}).get(ATTENTION_FROM_SCORES, "")
            flat = load_file(str(self.source))
            for i in (int(x) for x in derived.split(",") if x):
                flat[f"layer{i:03d}.attention"] = attention_of(flat[f"layer{i:03d}.scores"])
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

        fields = self._fields()
        flat = {f"layer{i:03d}.{name}": t.contiguous()
                for name, ts in fields.items() for i, t in enumerate(ts)}
        derived = [i for i, (a, s) in enumerate(zip(fields["attention"], fields["scores"],
                                                     strict=False)) if recomputable(a, s)]
        for i in derived:
            del flat[f"layer{i:03d}.attention"]
        meta = {ATTENTION_FROM_SCORES: ",".join(str(i) for i in derived)} if derived else None
        write_with(path, lambda tmp: save_file(flat, tmp, metadata=meta))


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


__all__ = ["ATTENTION_FROM_SCORES", "FIELDS", "PassRecord", "attention_of", "recomputable",
           "tree_from_dict", "tree_to_dict"]
