"""What a run is made of on its way to and from disk: one pass's captured tensors
(:class:`PassRecord`) and the tree as plain JSON-able data."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import _core
from .._core import FormatError
from .tensor_file import write_tensor_file

FIELDS = ("attention", "scores", "value_norms")
# safetensors metadata key: the layers whose attention a pass file does not store, because
# it is exactly the softmax of the stored scores (written as comma-separated indices).
ATTENTION_FROM_SCORES = "attention_from_scores"
# safetensors metadata key: the tensors a pass file stores as the entries of the
# ``STORED_ENTRIES`` mask only ([H', n] instead of [H', T, S]), comma-separated names.
SPARSE_TENSORS = "sparse_tensors"
STORED_ENTRIES = "stored_entries"
# What each field holds outside the stored entries: a masked score is −∞, its α is 0.
MASKED_FILL = {"scores": float("-inf"), "attention": 0.0}
# Pass-file tensor names of hook points: this prefix, then the hook point's name.
HOOK_PREFIX = "hook."


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

    Per captured layer: ``attention`` and ``scores`` (H', T, S), ``value_norms`` (H', S);
    and ``hooks``, the recorded hook points by name, each with the pass's T queries first.
    A record read from disk (or streamed there during generation) loads its tensors on
    first access, so a long run need not hold every pass in memory.

    On disk a layer's attention is left out when it equals the softmax of its scores bit
    for bit (checked when writing; the file's metadata lists those layers) and recomputed
    on load with the same function: half the bytes of a run that captured both, nothing
    lost. Attention that differs from the softmax of the stored scores — f16 storage, or
    anything edited after the softmax — is stored as it is.

    Masked pairs are not stored either: the (query, key) entries whose score is −∞ in
    every captured layer and head (a causal replay's upper triangle, an isolated
    sibling) form the pass's mask, stored once as ``stored_entries`` [T, S], and each
    layer's scores are stored as ``[H', n]``, the n entries outside it. A stored α is
    sparse the same way when it is +0.0 at every masked entry (else dense). On load the
    masked entries are −∞ (scores) and 0 (α) again, bit for bit; NaN or a −∞ that some
    other layer or head does not share is an ordinary stored value.
    """

    def __init__(self, step: int, first_slot: int, num_queries: int,
                 tensors: dict[str, list[torch.Tensor]] | None = None,
                 source: Path | None = None, sha256: str | None = None) -> None:
        self.step = step
        self.first_slot = first_slot
        self.num_queries = num_queries
        self._tensors = tensors
        # Per field, the [layers, H', T, S] tensor whose rows are the loaded layers (a
        # file's dense layers are built as one block): see :meth:`block`.
        self._blocks: dict[str, torch.Tensor] = {}
        # A loaded file's attention still to derive from its scores: (tensors by name,
        # layers, blocks), see _fields.
        self._pending: tuple | None = None
        self.source = source
        self.sha256 = sha256  # of the source file, checked when it is read (None: not)

    @classmethod
    def from_core(cls, p) -> PassRecord:
        tensors: dict = {name: [] for name in FIELDS}
        for c in p.layers:
            for name, t in (("attention", c.probabilities), ("scores", c.scores),
                            ("value_norms", c.value_norms)):
                if t is not None:
                    tensors[name].append(t)
        tensors["hooks"] = dict(p.hooks)
        return cls(p.step, p.first_slot, p.num_queries, tensors)

    def _fields(self, attention: bool = True) -> dict[str, list[torch.Tensor]]:
        """The loaded tensors by field (the file read on first access). The attention a
        file leaves out (the softmax of its scores) is computed when first wanted: not for
        ``attention=False``, which readers of the other fields pass."""
        if self._tensors is None:
            meta: dict[str, str] = {}
            flat = load_tensors(self.source, meta, sha256=self.sha256)
            try:
                blocks = _densify(flat, meta.get(SPARSE_TENSORS, ""))
                derived = [int(x) for x in meta.get(ATTENTION_FROM_SCORES, "").split(",") if x]
                blocks.update(_scores_block(flat, derived, blocks))
            except (KeyError, ValueError, RuntimeError, IndexError) as e:
                raise self._inconsistent(e) from None
            self._tensors = {name: _layers(flat, name) for name in FIELDS}
            self._tensors["hooks"] = {k[len(HOOK_PREFIX):]: t for k, t in flat.items()
                                      if k.startswith(HOOK_PREFIX)}
            self._blocks = {}
            self._pending = (flat, derived, blocks)
            self._keep_blocks(blocks, ("scores", "value_norms"))
            if not derived:
                self._keep_blocks(blocks, ("attention",))
                self._pending = None
        if attention and self._pending is not None:
            flat, derived, blocks = self._pending
            try:
                blocks.update(_derive_attention(flat, derived, blocks))
            except (KeyError, ValueError, RuntimeError, IndexError) as e:
                raise self._inconsistent(e) from None
            self._tensors["attention"] = _layers(flat, "attention")
            self._keep_blocks(blocks, ("attention",))
            self._pending = None
        return self._tensors

    def _inconsistent(self, e: Exception) -> FormatError:
        return FormatError(f"{self.source}: capture file inconsistent with its metadata ({e})")

    def _keep_blocks(self, blocks: dict[str, tuple[torch.Tensor, list[str]]],
                     fields: tuple[str, ...]) -> None:
        """Keep the blocks of ``fields`` whose rows are exactly the field's layers."""
        for name in fields:
            if name in blocks and blocks[name][1] == _layer_names(name,
                                                                   len(self._tensors[name])):
                self._blocks[name] = blocks[name][0]

    def block(self, name: str) -> torch.Tensor | None:
        """The loaded layers of field ``name`` as one [layers, H', T, S] tensor when they
        were built as one (the dense fields of a pass file), else None: the same values
        as ``torch.stack(getattr(record, name))`` without the copy."""
        self._fields(attention=name == "attention")
        return self._blocks.get(name)

    def release(self) -> None:
        """Drop loaded tensors of a record backed by a file (they reload on access)."""
        if self.source is not None:
            self._tensors = None
            self._blocks = {}
            self._pending = None

    @property
    def attention(self) -> list[torch.Tensor]:
        return self._fields()["attention"]

    @property
    def scores(self) -> list[torch.Tensor]:
        return self._fields(attention=False)["scores"]

    @property
    def value_norms(self) -> list[torch.Tensor]:
        return self._fields(attention=False)["value_norms"]

    @property
    def hooks(self) -> dict[str, torch.Tensor]:
        return self._fields(attention=False).get("hooks", {})

    def write(self, path: Path, *, in_staging: bool = False) -> str:
        """Write this pass's tensors to one safetensors file, atomically (``in_staging``:
        into a run's staging directory, see :func:`attnvar.util.atomic.write_atomic`).
        Returns the file's SHA-256 (hex)."""
        fields = self._fields()
        flat = {f"layer{i:03d}.{name}": t.contiguous()
                for name in FIELDS for i, t in enumerate(fields[name])}
        flat.update({HOOK_PREFIX + name: t.contiguous()
                     for name, t in fields.get("hooks", {}).items()})
        scores = fields["scores"]
        # Every layer's scores as one [Σ H', T, S] tensor when their (T, S) agree: what the
        # attention check and the sparse cut both read.
        block = None
        if scores and len({tuple(t.shape[1:]) for t in scores}) == 1:
            block = scores[0] if len(scores) == 1 else torch.cat(scores)
        derived = _recomputable_layers(fields["attention"], scores, block)
        for i in derived:
            del flat[f"layer{i:03d}.attention"]
        meta = {ATTENTION_FROM_SCORES: ",".join(str(i) for i in derived)} if derived else {}
        sparse = _sparsify(flat, block)
        if sparse:
            meta[SPARSE_TENSORS] = ",".join(sparse)
        return write_tensor_file(path, flat, meta or None, in_staging=in_staging)


def _recomputable_layers(attention: list[torch.Tensor], scores: list[torch.Tensor],
                         block: torch.Tensor | None) -> list[int]:
    """The layers whose attention is :func:`recomputable` from their scores. When every
    layer has one shape and both are f32, all are checked together on ``block`` (the
    scores concatenated): one softmax of all their scores (a row's softmax is the same
    computed alone or in a batch, which is how :func:`_derive_attention` recomputes them
    on load)."""
    pairs = list(zip(attention, scores, strict=False))
    if (len(pairs) > 1 and len(pairs) == len(scores) and block is not None
            and len({(a.shape, s.shape) for a, s in pairs}) == 1
            and pairs[0][0].shape == pairs[0][1].shape
            and all(a.dtype == torch.float32 and s.dtype == torch.float32 for a, s in pairs)):
        a = torch.stack(attention)
        s = block.view(len(scores), *scores[0].shape)
        same = (attention_of(s) == a).flatten(1).all(1)
        return [i for i, ok in enumerate(same.tolist()) if ok]
    return [i for i, (a, s) in enumerate(pairs) if recomputable(a, s)]


def _is_fill(t: torch.Tensor, fill: float) -> torch.Tensor:
    """Elementwise: ``t`` holds exactly ``fill`` (−∞, or +0.0 by its bits: not −0.0)."""
    if fill == 0.0:
        return (t == 0) & ~torch.signbit(t)
    return t == fill


def _sparsify(flat: dict[str, torch.Tensor], block: torch.Tensor | None) -> list[str]:
    """Replace in ``flat`` each layer's scores (and each stored α that is +0.0 wherever
    they are masked) by its entries outside the pass's mask; add the mask. ``block``: every
    layer's scores concatenated ([Σ H', T, S]), None when there are none or their (T, S)
    differ. Returns the names stored that way (none when nothing is masked, or no block).

    The tensors of one field and dtype are gathered at once (their heads concatenated,
    then the kept entries taken by one index), and each name then holds its rows of the
    result: the same values as taking each tensor's entries alone."""
    if block is None:
        return []
    masked = _is_fill(block, MASKED_FILL["scores"]).all(dim=0)
    if not masked.any():
        return []
    keep = ~masked
    candidates: dict[tuple[str, torch.dtype], list[str]] = {}
    for name in sorted(flat):
        field = name.rsplit(".", 1)[1]
        t = flat[name]
        if field in MASKED_FILL and t.dim() == 3 and tuple(t.shape[1:]) == tuple(keep.shape):
            candidates.setdefault((field, t.dtype), []).append(name)
    names = []
    for (field, _), group in candidates.items():
        parts = [flat[name] for name in group]
        whole = parts[0] if len(parts) == 1 else torch.cat(parts)
        rows = [t.shape[0] for t in parts]
        if field == "attention":  # stored sparse only where +0.0 at every masked entry
            at_mask = _is_fill(whole[:, masked], 0.0)
            ok = [bool(part.all()) for part in at_mask.split(rows)]
        else:
            ok = [True] * len(group)
        kept = whole[:, keep]
        for name, part, use in zip(group, kept.split(rows), ok, strict=True):
            if use:
                flat[name] = part
                names.append(name)
    flat[STORED_ENTRIES] = keep
    return sorted(names)


def _layer_names(field: str, layers: int) -> list[str]:
    return [f"layer{i:03d}.{field}" for i in range(layers)]


def _densify(flat: dict[str, torch.Tensor],
             sparse: str) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """Undo :func:`_sparsify` in place for the comma-separated tensor names ``sparse``.
    The layers of a field whose stored entries have one shape and dtype are filled as
    one [layers, H', T, S] block (each name then holds a row of it); returns those
    blocks by field, with the names of their rows."""
    names = [n for n in sparse.split(",") if n]
    if not names:
        return {}
    keep = flat.pop(STORED_ENTRIES)
    by_field: dict[str, list[str]] = {}
    for name in names:
        by_field.setdefault(name.rsplit(".", 1)[1], []).append(name)
    blocks = {}
    for field, group in by_field.items():
        fill = MASKED_FILL[field]
        values = [flat[name] for name in group]
        if len({(v.dtype, tuple(v.shape)) for v in values}) == 1 and values[0].dim() == 2:
            full = torch.full((len(group), values[0].shape[0], *keep.shape), fill,
                              dtype=values[0].dtype)
            full[:, :, keep] = torch.stack(values)
            for i, name in enumerate(group):
                flat[name] = full[i]
            blocks[field] = (full, group)
            continue
        for name, v in zip(group, values, strict=True):
            full = torch.full((v.shape[0], *keep.shape), fill, dtype=v.dtype)
            full[:, keep] = v
            flat[name] = full
    return blocks


def _layers(flat: dict[str, torch.Tensor], field: str) -> list[torch.Tensor]:
    """``layer000.<field>``, ``layer001.<field>``, … of ``flat`` while they exist."""
    out = []
    while f"layer{len(out):03d}.{field}" in flat:
        out.append(flat[f"layer{len(out):03d}.{field}"])
    return out


def _scores_block(flat: dict[str, torch.Tensor], layers: list[int],
                  blocks: dict[str, tuple[torch.Tensor, list[str]]]
                  ) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """The scores of ``layers`` (those whose attention a file leaves out; each must be
    there) as one block when no block holds them yet and they share a shape and dtype,
    so that their softmax is computed at once (:func:`_derive_attention`); each name of
    ``flat`` then holds a row of it. Returns the block made, by field, as
    :func:`_densify`."""
    names = [f"layer{i:03d}.scores" for i in layers]
    values = [flat[name] for name in names]
    if (not layers or "scores" in blocks
            or len({(v.dtype, tuple(v.shape)) for v in values}) != 1):
        return {}
    block = torch.stack(values)
    for i, name in enumerate(names):
        flat[name] = block[i]
    return {"scores": (block, names)}


def _derive_attention(flat: dict[str, torch.Tensor], layers: list[int],
                      blocks: dict[str, tuple[torch.Tensor, list[str]]]
                      ) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """Put into ``flat`` the attention of ``layers`` (those a pass file leaves out), the
    softmax of their scores: of their block at once when one holds exactly them (the
    softmax of each row is the same computed alone or in a batch), else layer by layer.
    Returns the block made, by field, as :func:`_densify`."""
    names = [f"layer{i:03d}.attention" for i in layers]
    scores = blocks.get("scores")
    if layers and scores is not None and scores[1] == [f"layer{i:03d}.scores" for i in layers]:
        block = attention_of(scores[0])
        for i, name in enumerate(names):
            flat[name] = block[i]
        return {} if "attention" in blocks else {"attention": (block, names)}
    for i, name in zip(layers, names, strict=True):
        flat[name] = attention_of(flat[f"layer{i:03d}.scores"])
    return {}


def load_tensors(path: Path, metadata: dict | None = None,
                 sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file ``path`` (and its metadata into ``metadata``);
    a file that is not valid safetensors raises FormatError naming it. With ``sha256``
    the file's bytes are read once, checked against it (FormatError on a mismatch) and
    parsed from memory."""
    import hashlib

    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load as load_bytes

    try:
        if sha256 is None:
            with safe_open(str(path), "pt") as f:
                if metadata is not None:
                    metadata.update(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}
        data = Path(path).read_bytes()
        found = hashlib.sha256(data).hexdigest()
        if found != sha256:
            raise FormatError(f"{path}: checksum mismatch — the file changed after it was "
                              f"written (run.json records sha256 {sha256[:16]}…, the file "
                              f"has {found[:16]}…)")
        if metadata is not None:
            metadata.update(_header_metadata(data, path))
        return load_bytes(data)
    except SafetensorError as e:
        raise FormatError(f"{path}: not a valid safetensors file ({e})") from None
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise _core.MissingError(f"{path}: capture file is missing") from None
        raise FormatError(f"{path}: cannot be read ({e})") from None


def _header_metadata(data: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in memory (8-byte little-endian
    header length, then the JSON header)."""
    import json
    import struct

    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n].decode("utf-8"))
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("__metadata__ is not an object")
        return {str(k): str(v) for k, v in meta.items()}
    except (struct.error, ValueError, UnicodeDecodeError, AttributeError) as e:
        raise FormatError(f"{path}: not a valid safetensors file ({e})") from None


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


__all__ = ["ATTENTION_FROM_SCORES", "FIELDS", "MASKED_FILL", "SPARSE_TENSORS", "STORED_ENTRIES",
           "PassRecord", "attention_of", "load_tensors", "recomputable", "tree_from_dict",
           "tree_to_dict"]
