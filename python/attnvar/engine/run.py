"""Run: one generation, replay or compat-preset run — its tree, slot table and capture."""

from __future__ import annotations

import html
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from .. import _core
from .._core import FormatError
from . import run_store
from .capture import hook_point, is_attention_view
from .records import MASKED_FILL, PassRecord
from .visibility import applied_visibility


class Run:
    """A run's tree, slots and capture, with tidy views for analysis.

    Attributes
    ----------
    kind : "generate" | "replay" | "tempo-2025"
    encoding : the layout's encoding (generation: ``shared_<mode>``)
    tree : the prompt plus every set (``attnvar._core.Tree``)
    slot_records : list of dicts (token_id, position, step, member), one per slot
    options : the options the run was made with
    model : the model's identity (path, sha256, quantization, note) and shape
    """

    def __init__(
        self,
        *,
        kind: str,
        encoding: str,
        tree: _core.Tree,
        slot_records: list[dict],
        passes: list[PassRecord],
        options: dict,
        model: dict,
        pieces: dict[int, str],
        capture_layers: list[int],
        capture_heads: list[int] | None,
        capture_hooks: Sequence[str] = (),
        stop_reason: str = "",
        timings: dict | None = None,
        distributions: torch.Tensor | None = None,
        visibility: torch.Tensor | None = None,
        capture_removed: str = "",
    ) -> None:
        self.kind = kind
        self.encoding = encoding
        self.tree = tree
        self.slot_records = slot_records
        self.passes = passes
        self.options = options
        self.model = model
        self.pieces = pieces  # token id -> piece text, for every id in the tree
        self.capture_layers = capture_layers
        self.capture_heads = capture_heads
        self.capture_hooks = list(capture_hooks)  # hook point names (Capture.names)
        self.stop_reason = stop_reason
        self.timings = timings or {}
        self.distributions = distributions
        # Why this saved run has no capture any more (run_store.remove_capture), or "".
        self.capture_removed = capture_removed
        # What the engine applied: stored with the run, or rebuilt by the engine's one
        # function for runs that were saved without it (visibility.py).
        self.visibility = (visibility.to(torch.bool) if visibility is not None else
                           applied_visibility(kind, encoding, tree, len(slot_records),
                                              options))
        self._dense: dict[str, torch.Tensor] = {}

    # ---- text -------------------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        return len(self.slot_records)

    @property
    def prompt_text(self) -> str:
        return self.options.get("prompt_text") or "".join(
            self.pieces.get(i, "") for i in self.tree.prompt[self._shown_prompt_start():]
        )

    def _shown_prompt_start(self) -> int:
        bos = self.model.get("bos_id")
        return 1 if self.tree.prompt and bos is not None and self.tree.prompt[0] == bos else 0

    @property
    def bracketed(self) -> str:
        """``The cat sat on the[ mat/ floor] and…``: sets of k ≥ 2 in brackets, members by
        rank, each with its leading space."""
        out = [self.prompt_text]
        for step in self.tree.steps:
            ps = [self.pieces[m.token_id] for m in step.members]
            out.append(ps[0] if len(ps) == 1 else "[" + "/".join(ps) + "]")
        return "".join(out)

    @property
    def text(self) -> str:
        """The top path: the prompt and every set's rank-0 member."""
        return self.prompt_text + "".join(self.pieces[s.members[0].token_id]
                                          for s in self.tree.steps)

    @property
    def entropies(self) -> list[float]:
        return [s.entropy for s in self.tree.steps]

    # ---- tables -----------------------------------------------------------------------
    @property
    def slots(self):
        """pandas DataFrame, one row per slot: step, rank, token_id, piece, position,
        is_prompt, is_parallel, probability, set_width."""
        import pandas as pd

        return pd.DataFrame(self._slot_columns()).set_index("slot")

    def _slot_columns(self) -> dict[str, list]:
        """The columns of :attr:`slots` (``slot`` first) as lists, without the frame."""
        cols: dict[str, list] = {k: [] for k in (
            "slot", "step", "rank", "token_id", "piece", "position", "is_prompt",
            "is_parallel", "probability", "set_width")}
        steps = self.tree.steps
        for i, s in enumerate(self.slot_records):
            step = s["step"]
            member = steps[step].members[s["member"]] if s["member"] >= 0 else None
            width = len(steps[step].members) if member is not None else 1
            cols["slot"].append(i)
            cols["step"].append(step)
            cols["rank"].append(member.rank if member is not None else -1)
            cols["token_id"].append(s["token_id"])
            cols["piece"].append(self.pieces.get(s["token_id"], ""))
            cols["position"].append(s["position"])
            cols["is_prompt"].append(step < 0)
            cols["is_parallel"].append(member is not None and width >= 2)
            cols["probability"].append(member.probability if member is not None
                                       else float("nan"))
            cols["set_width"].append(width)
        return cols

    # ---- capture ----------------------------------------------------------------------
    def _assemble(self, name: str) -> torch.Tensor:
        found = self._assemble_fields((name,))[name]
        if isinstance(found, BaseException):
            raise found
        return found

    def _assemble_fields(self, names: Sequence[str]) -> dict[str, torch.Tensor | ValueError]:
        """Each of the capture fields ``names`` (attention, scores, value_norms) as
        :meth:`attention`, :meth:`scores` and :meth:`value_norms` give it, or the
        ValueError (FormatError included) reading it raised, in one sweep over the
        passes: a pass file is read once for all the fields, then released."""
        out: dict[str, torch.Tensor | ValueError] = {n: self._dense[n] for n in names
                                                     if n in self._dense}
        todo = [n for n in dict.fromkeys(names) if n not in out]
        if not todo:
            return out
        # Per dense field: (the tensor being filled, layers, heads); value_norms: None.
        live: dict[str, tuple[torch.Tensor, int, int] | None] = {}
        for name in todo:
            try:
                if self.capture_removed:
                    raise ValueError(f"this run's capture was removed: {self.capture_removed}")
                if not self.passes or not getattr(self.passes[0], name):
                    raise ValueError(f"this run did not capture {name} (pass "
                                     "capture=Capture(...))")
            except ValueError as e:
                out[name] = e
                continue
            if name == "value_norms":
                live[name] = None
            else:
                first = getattr(self.passes[0], name)
                n = self.num_slots
                live[name] = (torch.full((len(first), first[0].shape[0], n, n),
                                         MASKED_FILL[name]), len(first), first[0].shape[0])
        # A slot's values never change: the pass that saw the most slots has them all.
        widest = (max(self.passes, key=lambda p: p.first_slot + p.num_queries)
                  if "value_norms" in live else None)
        # Pass by pass, so records backed by files are loaded one at a time. Pairs no pass
        # recorded read like masked ones: 0 attention, −inf score.
        for p in self.passes:
            wanted = [n for n in live if n != "value_norms" or p is widest]
            if not wanted:
                continue
            for name in wanted:
                try:
                    tensors = getattr(p, name)
                    if name == "value_norms":
                        out[name] = torch.stack([t.float() for t in tensors])
                        del live[name]
                        continue
                    dense, layers, heads = live[name]
                    self._check_pass(p, name, tensors, layers, heads)
                except ValueError as e:
                    out[name] = e
                    del live[name]
                    continue
                block = p.block(name)
                if block is not None:
                    dense[:, :, p.first_slot : p.first_slot + block.shape[2],
                          : block.shape[3]] = block
                else:
                    for layer, t in enumerate(tensors):
                        dense[layer, :, p.first_slot : p.first_slot + t.shape[1],
                              : t.shape[2]] = t
            p.release()
        for name, entry in live.items():  # the dense fields every pass filled
            out[name] = entry[0]
        for name in todo:
            if not isinstance(out[name], BaseException):
                self._dense[name] = out[name]
        return out

    def _check_pass(self, p: PassRecord, name: str, tensors: list, layers: int,
                    heads: int) -> None:
        """A pass's tensors agree with the run: as many layers as the run captured (and as
        the first pass), its heads, its queries, keys within the run's slots. A stored run
        whose run.json and pass files disagree raises FormatError naming the file."""
        where = p.source if p.source is not None else f"pass {p.step}"
        expected_layers = len(self.capture_layers) if self.capture_layers else layers
        expected_heads = len(self.capture_heads) if self.capture_heads else heads
        if len(tensors) != layers or layers != expected_layers:
            raise FormatError(f"{where}: {name} of {len(tensors)} layers, but the run "
                              f"captured {expected_layers} (run.json capture.layers)")
        checked = set()  # (each shape is checked once: the test depends on nothing else)
        for layer, t in enumerate(tensors):
            if t.shape in checked:
                continue
            checked.add(t.shape)
            if (t.dim() != 3 or t.shape[0] != expected_heads or t.shape[1] != p.num_queries
                    or p.first_slot + t.shape[1] > self.num_slots
                    or t.shape[2] > self.num_slots):
                raise FormatError(
                    f"{where}: layer {layer} {name} has shape {tuple(t.shape)}; the run "
                    f"expects ({expected_heads} heads, {p.num_queries} queries, ≤ "
                    f"{self.num_slots} keys) from slot {p.first_slot}")

    @property
    def attention(self) -> torch.Tensor:
        """[L', H', N, N] f32 attention probabilities; masked and unrecorded pairs are 0."""
        return self._assemble("attention")

    @property
    def scores(self) -> torch.Tensor:
        """[L', H', N, N] f32 pre-softmax scores after the bias; −inf where masked."""
        return self._assemble("scores")

    @property
    def value_norms(self) -> torch.Tensor:
        """[L', H', N] ‖v_k W_O^h‖ per captured layer, head and key slot."""
        return self._assemble("value_norms")

    @property
    def hooks(self) -> HookPoints:
        """The hook points this run recorded (``Capture(names=...)``), by name, slots first
        in slot order: ``run.hooks["blocks.3.hook_resid_pre"]`` is [N, hidden]; per-head
        points are [N, heads, head_dim]; ``attn.hook_pattern`` / ``attn.hook_attn_scores``
        are that layer's [H', N, N] from the attention capture."""
        return HookPoints(self)

    def _assemble_hook(self, name: str) -> torch.Tensor:
        key = "hook:" + name
        if key in self._dense:
            return self._dense[key]
        if name not in self.capture_hooks:
            recorded = ", ".join(self.capture_hooks[:6]) or "none"
            raise KeyError(f"this run did not record hook point {name!r} (recorded: "
                           f"{recorded}{', ...' if len(self.capture_hooks) > 6 else ''}); "
                           "pass Capture(names=[...])")
        if self.capture_removed:
            raise ValueError(f"this run's capture was removed: {self.capture_removed}")
        if is_attention_view(name):
            layer = int(name.split(".")[1])
            field = "attention" if hook_point(name) == "attn.hook_pattern" else "scores"
            layers = self.capture_layers or []
            return self._assemble(field)[layers.index(layer) if layers else layer]
        # Each slot is a query of exactly one pass: the passes' rows, in slot order.
        parts, covered = [], 0
        for p in sorted(self.passes, key=lambda p: p.first_slot):
            t = p.hooks.get(name)
            where = p.source if p.source is not None else f"pass {p.step}"
            if t is None or t.shape[0] != p.num_queries or p.first_slot != covered:
                raise FormatError(f"{where}: hook point {name!r} missing or not "
                                  f"{p.num_queries} rows from slot {covered}")
            parts.append(t.float())
            covered += p.num_queries
            p.release()
        if covered != self.num_slots:
            raise FormatError(f"hook point {name!r} covers {covered} of {self.num_slots} slots")
        out = torch.cat(parts)
        self._dense[key] = out
        return out

    def to_frame(
        self,
        field: str = "attention",
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        steps: Sequence[int] | None = None,
        include_masked: bool = False,
    ):
        """Tidy long table: one row per (layer, head, query slot, key slot).

        Columns: layer, head, query, key, value, query_step, key_step, key_is_parallel,
        distance (logical), visible. Filter with ``layers``/``heads`` (model indices) and
        ``steps`` (query steps). Masked pairs are left out unless ``include_masked``.
        """
        import numpy as np
        import pandas as pd

        dense = self._assemble(field)
        slots = self.slots
        layer_ids = np.array(self.capture_layers)
        head_ids = np.array(self.capture_heads if self.capture_heads is not None
                            else range(dense.shape[1]))
        li = (np.arange(len(layer_ids)) if layers is None
              else np.flatnonzero(np.isin(layer_ids, layers)))
        hi = np.arange(len(head_ids)) if heads is None else np.flatnonzero(np.isin(head_ids, heads))
        sub = dense[li][:, hi].numpy()
        n = self.num_slots
        L, H = len(li), len(hi)
        q, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        vis = self.visibility.numpy()
        keep = np.ones((n, n), dtype=bool) if include_masked else vis.copy()
        step_arr = slots["step"].to_numpy()
        if steps is not None:
            keep &= np.isin(step_arr, steps)[:, None]
        qs, ks = q[keep], k[keep]
        pos = slots["position"].to_numpy()
        frame = pd.DataFrame(
            {
                "layer": np.repeat(layer_ids[li], H * len(qs)),
                "head": np.tile(np.repeat(head_ids[hi], len(qs)), L),
                "query": np.tile(qs, L * H),
                "key": np.tile(ks, L * H),
                "value": sub[:, :, keep].reshape(-1),
            }
        )
        frame["query_step"] = step_arr[frame["query"]]
        frame["key_step"] = step_arr[frame["key"]]
        frame["key_is_parallel"] = slots["is_parallel"].to_numpy()[frame["key"]]
        frame["distance"] = pos[frame["query"]] - pos[frame["key"]]
        frame["visible"] = vis[frame["query"], frame["key"]]
        return frame

    def hook_frame(self, name: str, slots: Sequence[int] | None = None,
                   heads: Sequence[int] | None = None):
        """Tidy long table of one recorded hook point: one row per (slot, [head,]
        component). Columns: slot, step, rank, token_id, piece, position, is_parallel, then
        ``head`` for per-head points (q, k, v, rot_q, rot_k, z), then component (the index
        along the last axis) and value. Filter with ``slots`` and ``heads``. Attention
        views (``attn.hook_pattern``, ``attn.hook_attn_scores``) are tables of pairs:
        read them with :meth:`to_frame`."""
        import numpy as np
        import pandas as pd

        if is_attention_view(name):
            raise ValueError(f"{name} is a table of (query, key) pairs: use "
                             "run.to_frame(field='attention' or 'scores', layers=[...])")
        t = self.hooks[name].numpy()
        rows = np.arange(t.shape[0]) if slots is None else np.asarray(list(slots), dtype=int)
        if rows.size and (rows.min() < 0 or rows.max() >= t.shape[0]):
            raise ValueError(f"slots: outside [0, {t.shape[0]})")
        t = t[rows]
        per_head = t.ndim == 3
        if per_head and heads is not None:
            head_ids = np.asarray(list(heads), dtype=int)
            if head_ids.size and (head_ids.min() < 0 or head_ids.max() >= t.shape[1]):
                raise ValueError(f"heads: outside [0, {t.shape[1]})")
            t = t[:, head_ids]
        elif per_head:
            head_ids = np.arange(t.shape[1])
        elif heads is not None:
            raise ValueError(f"heads: {name} has no head axis")
        per_slot = int(np.prod(t.shape[1:]))
        info = self.slots.iloc[rows]
        frame = pd.DataFrame({"slot": np.repeat(rows, per_slot)})
        for col in SLOT_COLUMNS:
            frame[col] = np.repeat(info[col].to_numpy(), per_slot)
        if per_head:
            frame["head"] = np.tile(np.repeat(head_ids, t.shape[2]), len(rows))
        frame["component"] = np.tile(np.arange(t.shape[-1]), per_slot // t.shape[-1]
                                     * len(rows))
        frame["value"] = t.reshape(-1)
        return frame

    def capture_summary(self) -> dict[str, Any]:
        """What the run captured, as Capture names it: ``fields`` (probabilities, scores,
        value_norms), ``layers``, ``heads`` (None: all), ``hooks`` (hook point names),
        ``dtype`` and ``passes``; ``removed`` instead when the capture was removed.
        Reads the first pass only."""
        if self.capture_removed:
            return {"removed": self.capture_removed}
        out: dict[str, Any] = {"fields": [], "layers": list(self.capture_layers),
                               "heads": self.capture_heads, "hooks": list(self.capture_hooks),
                               "passes": len(self.passes)}
        if not self.passes:
            return out
        first = self.passes[0]
        stored = {"probabilities": first.attention, "scores": first.scores,
                  "value_norms": first.value_norms}
        out["fields"] = [name for name, tensors in stored.items() if tensors]
        if out["fields"]:
            out["dtype"] = str(stored[out["fields"][0]][0].dtype).replace("torch.", "")
        first.release()
        return out

    # ---- display ----------------------------------------------------------------------
    def _repr_html_(self) -> str:
        parts = [html.escape(self.prompt_text)]
        for step in self.tree.steps:
            ps = [html.escape(self.pieces[m.token_id]) for m in step.members]
            if len(ps) == 1:
                parts.append(ps[0])
            else:
                members = "/".join(
                    f'<span title="p={m.probability:.3f}">{p}</span>'
                    for p, m in zip(ps, step.members, strict=True)
                )
                parts.append(
                    '<span style="background:#fde68a;border-radius:3px;padding:0 2px">'
                    f"[{members}]</span>"
                )
        width = sum(1 for s in self.tree.steps if len(s.members) > 1)
        head = (f"<div style='font-size:smaller;color:#555'>attnvar {self.kind} · "
                f"{self.encoding} · {len(self.tree.steps)} steps · {width} parallel · "
                f"stop: {self.stop_reason}</div>")
        return (head + "<div style='white-space:pre-wrap;font-family:monospace'>"
                + "".join(parts) + "</div>")

    def __repr__(self) -> str:
        return (f"Run(kind={self.kind!r}, encoding={self.encoding!r}, "
                f"slots={self.num_slots}, text={self.bracketed!r})")

    # ---- persistence (run_store.py) --------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the run as a directory (``run.json``, ``capture/pass_NNNNN.safetensors``,
        ``extras.safetensors``), atomically."""
        run_store.save_run(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool | None = None) -> Run:
        """Read a run written by :meth:`save`; capture tensors load lazily, per pass, each
        file checked against the SHA-256 recorded in run.json (``verify``; default yes
        unless ``ATTNVAR_VERIFY_CHECKSUMS=0``)."""
        return cls(**run_store.read_run(path, verify))

    def summary(self) -> dict[str, Any]:
        """Per-run figures for study tables."""
        widths = [len(s.members) for s in self.tree.steps]
        return {
            "steps": len(widths),
            "parallel_steps": sum(1 for w in widths if w >= 2),
            "parallel_tokens": sum(w for w in widths if w >= 2),
            "mean_width": (sum(widths) / len(widths)) if widths else 0.0,
            "max_width": max(widths, default=0),
            "slots": self.num_slots,
            "stop_reason": self.stop_reason,
            "mean_entropy": (sum(self.entropies) / len(widths)) if widths else float("nan"),
            "seconds": sum(self.timings.values()),
        }


# The slot table's columns repeated on every row of a hook frame.
SLOT_COLUMNS = ("step", "rank", "token_id", "piece", "position", "is_parallel")


class HookPoints(Mapping):
    """``run.hooks``: a read-only mapping from hook point name to its tensor, assembled
    from the passes on first access (and kept)."""

    def __init__(self, run: Run) -> None:
        self._run = run

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._run._assemble_hook(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._run.capture_hooks)

    def __len__(self) -> int:
        return len(self._run.capture_hooks)

    def __repr__(self) -> str:
        return f"<run.hooks: {len(self)} hook points>"


def load_run(path: str | os.PathLike, verify: bool | None = None) -> Run:
    """Read a run written by :meth:`Run.save` (``Run.load``; ``verify``: check the
    tensor files' checksums, default yes unless ``ATTNVAR_VERIFY_CHECKSUMS=0``)."""
    return Run.load(path, verify)
