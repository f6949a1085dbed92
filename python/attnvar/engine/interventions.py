"""Interventions, declared as data and executed in the engine (docs/user_guide.md,
"Interventions"): ablations, activation patching and steering at named hook points, and
the key bias / knockout on attention scores.

Each class validates its own fields at construction and turns into what the engine takes
(``edit``) and what the run records (``describe``): the hook, heads, slots, and each
tensor's shape and SHA-256 (the values themselves are not copied into run.json).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._core import ConfigError
from .capture import ATTENTION_POINTS, FINAL_POINT, hook_point


def _indices(owner: str, name: str, value: object) -> tuple[int, ...] | None:
    """None, or a non-empty sequence of distinct non-negative integers (as a tuple)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{owner}.{name} must be None or a sequence of indices, got "
                          f"{value!r}")
    try:
        out = tuple(operator.index(v) for v in value)
    except TypeError:
        raise ConfigError(f"{owner}.{name} must hold integers, got {list(value)!r}") from None
    if not out:
        raise ConfigError(f"{owner}.{name} is empty: pass None for all")
    if any(v < 0 for v in out) or len(set(out)) != len(out):
        raise ConfigError(f"{owner}.{name} must be distinct non-negative indices, got "
                          f"{list(out)}")
    return out


def _tensor(owner: str, name: str, value: object) -> torch.Tensor:
    """A finite float tensor (lists and arrays are converted)."""
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{owner}.{name} must be a tensor, got {type(value).__name__}") \
            from None
    if not t.is_floating_point():
        t = t.float()
    if t.numel() == 0:
        raise ConfigError(f"{owner}.{name} is empty")
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{owner}.{name} holds NaN or infinite entries")
    return t.detach().cpu().float().contiguous()


def _check_hook(owner: str, hook: object) -> str:
    if not isinstance(hook, str) or not hook:
        raise ConfigError(f"{owner}.hook must be a hook point name, got {hook!r}")
    if hook == FINAL_POINT or hook_point(hook) in ATTENTION_POINTS:
        raise ConfigError(f"{owner}.hook: {hook} cannot be edited (attention patterns and "
                          "scores are changed with KeyBias / Knockout; the final norm feeds "
                          "only the logits)")
    return hook


def _digest(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape),
            "sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest()}


@dataclass(frozen=True)
class ZeroAblate:
    """Set a hook point to zero: every head (or ``heads``, on per-head points such as
    ``attn.hook_z``) at every slot (or ``slots``)."""

    hook: str
    heads: Sequence[int] | None = None
    slots: Sequence[int] | None = None

    def __post_init__(self) -> None:
        _check_hook("ZeroAblate", self.hook)
        object.__setattr__(self, "heads", _indices("ZeroAblate", "heads", self.heads))
        object.__setattr__(self, "slots", _indices("ZeroAblate", "slots", self.slots))

    def edit(self) -> dict:
        return {"kind": "zero", "hook": self.hook, "heads": _list(self.heads),
                "slots": _list(self.slots)}

    def describe(self) -> dict:
        return {"kind": "zero_ablate", "hook": self.hook, "heads": _list(self.heads),
                "slots": _list(self.slots)}


@dataclass(frozen=True, eq=False)  # (tensor fields: identity, not elementwise ==)
class MeanAblate:
    """Replace a hook point by a mean: ``mean`` (one slot's shape) as given, or the mean
    of ``reference``'s slots at that point (``reference_slots``, default all; the run must
    have recorded the point). The run records which."""

    hook: str
    mean: Any = None
    reference: Any = None
    reference_slots: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    slots: Sequence[int] | None = None

    def __post_init__(self) -> None:
        _check_hook("MeanAblate", self.hook)
        if (self.mean is None) == (self.reference is None):
            raise ConfigError("MeanAblate: give exactly one of mean (a tensor) and reference "
                              "(a run that recorded the hook point)")
        if self.mean is not None:
            object.__setattr__(self, "mean", _tensor("MeanAblate", "mean", self.mean))
        object.__setattr__(self, "reference_slots",
                           _indices("MeanAblate", "reference_slots", self.reference_slots))
        object.__setattr__(self, "heads", _indices("MeanAblate", "heads", self.heads))
        object.__setattr__(self, "slots", _indices("MeanAblate", "slots", self.slots))

    def value(self) -> torch.Tensor:
        if self.mean is not None:
            return self.mean
        values = _recorded(self.reference, self.hook, "MeanAblate.reference")
        if self.reference_slots is not None:
            if max(self.reference_slots) >= values.shape[0]:
                raise ConfigError(f"MeanAblate.reference_slots: slot "
                                  f"{max(self.reference_slots)} is outside the reference "
                                  f"run's {values.shape[0]} slots")
            values = values[list(self.reference_slots)]
        return values.mean(dim=0)

    def edit(self) -> dict:
        return {"kind": "set", "hook": self.hook, "heads": _list(self.heads),
                "slots": _list(self.slots), "value": self.value()}

    def describe(self) -> dict:
        source = ({"mean_of": "given tensor"} if self.mean is not None else
                  {"mean_of": "reference run", "reference_slots": _list(self.reference_slots),
                   "reference_slots_count": (len(self.reference_slots) if self.reference_slots
                                             else self.reference.num_slots)})
        return {"kind": "mean_ablate", "hook": self.hook, "heads": _list(self.heads),
                "slots": _list(self.slots), **source, "value": _digest(self.value())}


@dataclass(frozen=True, eq=False)  # (tensor fields: identity, not elementwise ==)
class Patch:
    """Activation patching: each selected slot's value at ``hook`` is replaced by the same
    slot's value in ``source`` (a run that recorded the point, or a tensor [N, ...]). Slots
    are matched by index; where the runs' layouts differ (another slot count, or another
    token in a patched slot), the patch is refused with the first difference. A replay is
    checked slot by slot before it runs; a generation can only be checked on its prompt
    slots (later ones do not exist yet). Patching a slot whose token differs on purpose (a
    clean run into a corrupted one) takes a tensor source: ``Patch(hook, run.hooks[hook])``."""

    hook: str
    source: Any
    slots: Sequence[int] | None = None
    heads: Sequence[int] | None = None

    def __post_init__(self) -> None:
        _check_hook("Patch", self.hook)
        if self.source is None:
            raise ConfigError("Patch.source is missing: a run or a tensor [N, ...]")
        if not hasattr(self.source, "hooks"):
            object.__setattr__(self, "source", _tensor("Patch", "source", self.source))
        object.__setattr__(self, "slots", _indices("Patch", "slots", self.slots))
        object.__setattr__(self, "heads", _indices("Patch", "heads", self.heads))

    def value(self) -> torch.Tensor:
        if isinstance(self.source, torch.Tensor):
            return self.source
        return _recorded(self.source, self.hook, "Patch.source")

    def check_layout(self, token_ids: Sequence[int] | None, prompt_only: bool = False) -> None:
        """Refuse a target whose slots differ from the source run's (token by token, over
        the patched slots); a tensor source is checked by the engine (slot count). With
        ``prompt_only`` (a generation), ``token_ids`` is the prompt and only its slots are
        compared."""
        if token_ids is None or isinstance(self.source, torch.Tensor):
            return
        source_ids = [s["token_id"] for s in self.source.slot_records]
        slots = self.slots if self.slots is not None else range(len(token_ids))
        if prompt_only:
            slots = [s for s in slots if s < len(token_ids)]
        elif self.slots is None and len(source_ids) != len(token_ids):
            raise ConfigError(f"Patch: the source run has {len(source_ids)} slots, this run "
                              f"{len(token_ids)}: the layouts differ")
        for s in slots:
            if s >= len(source_ids) or s >= len(token_ids):
                raise ConfigError(f"Patch.slots: slot {s} is outside the source run "
                                  f"({len(source_ids)} slots) or this run ({len(token_ids)})")
            if source_ids[s] != token_ids[s]:
                raise ConfigError(f"Patch: slot {s} holds token {source_ids[s]} in the source "
                                  f"run but {token_ids[s]} here: the layouts differ")

    def edit(self) -> dict:
        return {"kind": "set", "hook": self.hook, "heads": _list(self.heads),
                "slots": _list(self.slots), "value": self.value()}

    def describe(self) -> dict:
        source = ({"source": "tensor"} if isinstance(self.source, torch.Tensor) else
                  {"source": "run", "source_kind": self.source.kind,
                   "source_encoding": self.source.encoding})
        return {"kind": "patch", "hook": self.hook, "heads": _list(self.heads),
                "slots": _list(self.slots), **source, "value": _digest(self.value())}


@dataclass(frozen=True, eq=False)  # (tensor fields: identity, not elementwise ==)
class Steer:
    """Add ``scale * vector`` (one slot's shape, or [N, ...] slot by slot) at a hook point,
    at every slot (or ``slots``)."""

    hook: str
    vector: Any
    scale: float = 1.0
    slots: Sequence[int] | None = None
    heads: Sequence[int] | None = None

    def __post_init__(self) -> None:
        _check_hook("Steer", self.hook)
        object.__setattr__(self, "vector", _tensor("Steer", "vector", self.vector))
        if (isinstance(self.scale, bool) or not isinstance(self.scale, numbers.Real)
                or not math.isfinite(self.scale)):
            raise ConfigError(f"Steer.scale must be a finite number, got {self.scale!r}")
        object.__setattr__(self, "slots", _indices("Steer", "slots", self.slots))
        object.__setattr__(self, "heads", _indices("Steer", "heads", self.heads))

    def edit(self) -> dict:
        return {"kind": "add", "hook": self.hook, "heads": _list(self.heads),
                "slots": _list(self.slots), "value": self.vector * float(self.scale)}

    def describe(self) -> dict:
        return {"kind": "steer", "hook": self.hook, "heads": _list(self.heads),
                "slots": _list(self.slots), "scale": float(self.scale),
                "vector": _digest(self.vector)}


@dataclass(frozen=True)
class KeyBias:
    """Add ``delta`` to the attention scores of ``key_slots`` in layers [layer_begin,
    layer_end) for ``heads`` (None: all); ``delta=-inf`` knocks the keys out."""

    layer_begin: int
    layer_end: int
    key_slots: Sequence[int]
    heads: Sequence[int] | None = None
    delta: float = -math.inf

    def __post_init__(self) -> None:
        for name in ("layer_begin", "layer_end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ConfigError(f"KeyBias.{name} must be a non-negative integer, got {v!r}")
        if self.layer_end <= self.layer_begin:
            raise ConfigError(f"KeyBias: layer window [{self.layer_begin}, {self.layer_end}) "
                              "is empty")
        object.__setattr__(self, "key_slots", _indices("KeyBias", "key_slots", self.key_slots))
        if self.key_slots is None:
            raise ConfigError("KeyBias.key_slots is missing")
        object.__setattr__(self, "heads", _indices("KeyBias", "heads", self.heads))
        d = self.delta
        if (isinstance(d, bool) or not isinstance(d, numbers.Real) or math.isnan(d)
                or d == math.inf):
            raise ConfigError(f"KeyBias.delta must be a finite number or -inf, got {d!r}")

    @classmethod
    def from_dict(cls, index: int, d: dict) -> KeyBias:
        """Today's dict form (layer_begin, layer_end, key_slots, heads=None, delta=-inf)."""
        known = {"layer_begin", "layer_end", "key_slots", "heads", "delta"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"interventions[{index}]: unknown keys {sorted(unknown)} "
                              f"(known: {sorted(known)})")
        for key in ("layer_begin", "layer_end", "key_slots"):
            if key not in d:
                raise ConfigError(f"interventions[{index}]: '{key}' is missing")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"interventions[{index}]: {e}") from None

    def bias(self) -> dict:
        return {"layer_begin": int(self.layer_begin), "layer_end": int(self.layer_end),
                "key_slots": list(self.key_slots), "heads": _list(self.heads),
                "delta": float(self.delta)}

    def describe(self) -> dict:
        return {"kind": "key_bias", **self.bias()}


def Knockout(layer_begin: int, layer_end: int, key_slots: Sequence[int],  # noqa: N802
             heads: Sequence[int] | None = None) -> KeyBias:
    """A key bias of −inf: the keys are hidden from every query in the layers."""
    return KeyBias(layer_begin, layer_end, key_slots, heads)


HOOK_EDITS = (ZeroAblate, MeanAblate, Patch, Steer)


def _list(v: tuple | None) -> list | None:
    return None if v is None else list(v)


def _recorded(run, hook: str, what: str) -> torch.Tensor:
    if hook not in getattr(run, "capture_hooks", ()):
        raise ConfigError(f"{what}: the run did not record {hook}; record it with "
                          f"Capture(names=[{hook!r}])")
    return run.hooks[hook]


def prepare(interventions: Sequence, token_ids: Sequence[int] | None = None,
            prompt_only: bool = False) -> tuple[list[dict], list[dict], list[dict]]:
    """Split a list of interventions into the engine's key biases and hook edits, with
    the description each run records. Dicts are today's key-bias form.
    ``token_ids``: the target's slots when known in advance (a replay), or its prompt with
    ``prompt_only`` (a generation), for the layout checks of patches."""
    if isinstance(interventions, (str, bytes, dict)) or not hasattr(interventions, "__iter__"):
        raise ConfigError("interventions must be a list of interventions")
    biases, edits, described = [], [], []
    for i, iv in enumerate(interventions):
        if isinstance(iv, dict):  # recorded as given, as before intervention objects
            biases.append(KeyBias.from_dict(i, iv).bias())
            described.append(dict(iv))
            continue
        if isinstance(iv, KeyBias):
            biases.append(iv.bias())
        elif isinstance(iv, HOOK_EDITS):
            if isinstance(iv, Patch):
                iv.check_layout(token_ids, prompt_only)
            edits.append(iv.edit())
        else:
            raise ConfigError(f"interventions[{i}]: {type(iv).__name__} is not an intervention "
                              "(ZeroAblate, MeanAblate, Patch, Steer, KeyBias, Knockout, or a "
                              "key-bias dict)")
        described.append(iv.describe())
    return biases, edits, described


# ---- interventions as data (study grids, study.json) ----------------------------------------

SPEC_KINDS = ("zero_ablate", "mean_ablate", "steer", "key_bias")


def to_spec(iv) -> dict:
    """An intervention as JSON-able data that :func:`from_spec` turns back into it; tensors
    become nested lists. Those that need a run (Patch, MeanAblate of a reference run) have
    no such form: a study cannot record them."""
    if isinstance(iv, dict):
        iv = KeyBias.from_dict(0, iv)
    if isinstance(iv, ZeroAblate):
        return {"kind": "zero_ablate", "hook": iv.hook, "heads": _list(iv.heads),
                "slots": _list(iv.slots)}
    if isinstance(iv, MeanAblate) and iv.mean is not None:
        return {"kind": "mean_ablate", "hook": iv.hook, "mean": iv.mean.tolist(),
                "heads": _list(iv.heads), "slots": _list(iv.slots)}
    if isinstance(iv, Steer):
        return {"kind": "steer", "hook": iv.hook, "vector": iv.vector.tolist(),
                "scale": float(iv.scale), "heads": _list(iv.heads), "slots": _list(iv.slots)}
    if isinstance(iv, KeyBias):
        # −inf (a knockout) as the string "-inf": JSON has no infinity.
        bias = iv.bias()
        if bias["delta"] == -math.inf:
            bias["delta"] = "-inf"
        return {"kind": "key_bias", **bias}
    raise ConfigError(f"{type(iv).__name__}: only ZeroAblate, MeanAblate(mean=...), Steer and "
                      "KeyBias can be written as data (a Patch or a reference-run mean needs "
                      "a run)")


def from_spec(d: object, where: str):
    """The intervention a :func:`to_spec` dict describes; ConfigError naming ``where`` and
    the field for anything else."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ConfigError(f"{where}: a table with a 'kind' ({', '.join(SPEC_KINDS)})")
    fields = {k: v for k, v in d.items() if k != "kind"}
    classes = {"zero_ablate": ZeroAblate, "mean_ablate": MeanAblate, "steer": Steer,
               "key_bias": KeyBias}
    cls = classes.get(d["kind"])
    if cls is None:
        raise ConfigError(f"{where}.kind: {d['kind']!r} is not one of {', '.join(SPEC_KINDS)}")
    if cls is KeyBias and fields.get("delta") == "-inf":
        fields["delta"] = -math.inf
    known = set(cls.__dataclass_fields__) - {"reference", "reference_slots"}
    unknown = set(fields) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} for {d['kind']} (known: "
                          f"{sorted(known)})")
    try:
        return cls(**fields)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:  # a required field missing
        raise ConfigError(f"{where}: {e}") from None


def unreached_slots(described: list[dict], num_slots: int) -> list[dict]:
    """The hook edits among ``described`` that name slots a finished run never had
    (a generation that stopped before them): they changed nothing there."""
    out = []
    for d in described:
        slots = d.get("slots") if d.get("kind") != "key_bias" else None
        if slots and max(slots) >= num_slots:
            out.append({"hook": d["hook"], "kind": d["kind"],
                        "unreached": [s for s in slots if s >= num_slots]})
    return out
