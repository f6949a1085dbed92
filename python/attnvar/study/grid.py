"""A study: a grid over prompts × thresholds × modes × policies × seeds, each generated
tree replayed under chosen encodings, with its preregistered analysis plan. Running it
(:mod:`.runner`) writes content-addressed runs atomically, so an interrupted study
resumes with nothing lost or duplicated."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .._core import FormatError, MissingError
from ..engine import ENCODINGS, MODES, POLICIES, Capture
from ..engine.interventions import from_spec, to_spec
from . import prompts as prompt_suites
from .preregistration import Preregistration
from .prompts import Prompt
from .runner import run_study
from .store import COMPAT_MODES, COMPAT_PRESET, Cell

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, released as tomli
    import tomli as tomllib

# The default minimum number of steps before EOS may stop a mechanism study's run: four
# steps give queries at steps 2 and 3, the first that can see a parallel and a
# non-parallel earlier step at once.
MIN_NEW_STEPS = 4


@dataclass
class Study:
    """A grid of runs.

    Parameters
    ----------
    prompts : prompt texts or ``attnvar.prompts.Prompt`` records
    thresholds, modes, policies, seeds : the grid axes (seeds matter with ``sample``)
    replays : encodings each generated tree is replayed under (text held fixed)
    capture : what every run records (default: all layers, probabilities and scores)
    model_path : GGUF file or HF directory; None = the bundled default model
    device : where the model runs ("cpu", "cuda", "cuda:N"); not part of the design, so a
        study may be resumed on another device (each run records its device)
    batch : generations run together (``Model.generate_many``, or ``Model.tempo2025_many``
        for the compat preset); None (the default): 8 per thread of each worker, fewer when
        their captures could pass the capture's ``memory_budget`` or half this machine's
        memory (``runner.batch_size``). Each run is bit for bit its solo run, so like
        ``device`` this changes the speed, never a result, and is not part of the design.
        A study with ``emulate_mask_leak`` runs its compat cells one by one, in order
    weights : how a GGUF model's quantized weights are held ("quantized", the default, or
        "float32"; ``load_model(weights=...)``): both give every run bit for bit, so like
        ``device`` this changes memory and speed, never a result, and is not part of the
        design (each run's ``model.weights`` records it)
    preregistration : the analysis plan (primary metric, exclusion rule, tests), written
        to the results directory before the first run (``attnvar.preregistration``)
    preset : None (the mechanism as described) or "tempo-2025": every cell runs the compat
        preset (``Model.tempo2025``) instead of ``generate``; mode "isolated" is the
        prototype's isolated mode (its misplaced mask), "visible" its causal one. A compat
        study has no replays and no policy or width choice (the preset has none).
    add_bos, eos_ids : compat only: BOS and the stopping ids as the prototype's tokenizer
        has them (None = the model's; see ``Model.tempo2025``)
    min_new_steps : no run may stop (EOS) before this many steps: steps t < min_new_steps
        select without the EOS ids (``Model.generate``). None = :data:`MIN_NEW_STEPS` (4)
        for a mechanism study, so that prompts the model considers finished (the
        *complete* half of H2's matched pairs) still give measurable queries instead of
        ending at once and dropping out of the very comparison H2 makes; 0 for the compat
        preset (the prototype has no such rule, and the preset refuses one).
    interventions : one more grid axis: a list of conditions, each a list of interventions
        (``attnvar.ZeroAblate``, ``MeanAblate(mean=...)``, ``Steer``, ``KeyBias``, or their
        data form, e.g. ``{kind = "zero_ablate", hook = "blocks.3.attn.hook_z", heads =
        [1]}`` in TOML); ``[]`` is the condition without interventions. Hook edits apply
        to every cell's generation and replays (same slots: the layouts number them
        alike), key biases to the replays only. Each condition is part of its cells' keys
        (and of runs.parquet, column ``interventions``); a study with more than one
        condition is run as a grid, and analysed one condition per study directory.
    emulate_mask_leak : compat only: the prompts of each condition (θ, mode) run as one
        ordered sequence in one process, each run after an isolated one seeing the stale
        masks the prototype leaked (docs/generation.md). Forces one worker; each cell's
        key then names the prompts before it, so a reordered suite makes new runs.
    """

    prompts: Sequence
    thresholds: Sequence[float] = (0.1,)
    modes: Sequence[str] = ("isolated",)
    policies: Sequence[str] = ("mixture",)
    replays: Sequence[str] = ()
    seeds: Sequence[int] = (0,)
    sample: bool = False
    max_steps: int = 30
    max_width: int = 32
    capture: Capture | None = field(default_factory=lambda: Capture(scores=True))
    model_path: str | None = None
    device: str = "cpu"
    weights: str = "quantized"
    preregistration: Preregistration = field(default_factory=Preregistration)
    preset: str | None = None
    add_bos: bool | None = None
    eos_ids: Sequence[int] | None = None
    emulate_mask_leak: bool = False
    min_new_steps: int | None = None
    batch: int | None = None
    interventions: Sequence = ()

    def __post_init__(self) -> None:
        self._check_types()
        records = []
        for i, p in enumerate(self.prompts):
            if isinstance(p, str):
                p = Prompt(id=f"prompt_{i:03d}", text=p, category="user",
                           structure="incomplete", pair=None)
            if not p.text.strip():
                raise ValueError(f"prompt {p.id!r} is empty")
            records.append(p)
        if not records:
            raise ValueError("a study needs at least one prompt")
        seen: set[str] = set()
        for p in records:
            if p.id in seen:
                raise ValueError(f"prompts: the id {p.id!r} appears twice (runs are keyed by "
                                 "prompt id, so the second would overwrite the first)")
            seen.add(p.id)
        self.prompts = records
        for t in self.thresholds:
            if not 0 < float(t) <= 1:
                raise ValueError(f"thresholds: {t!r} is outside (0, 1]")
        for name, values, choices in (("modes", self.modes, MODES),
                                      ("policies", self.policies, POLICIES),
                                      ("replays", self.replays, ENCODINGS)):
            for v in values:
                if v not in choices:
                    raise ValueError(f"{name}: {v!r} is not one of {', '.join(choices)}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be ≥ 0, got {self.max_steps}")
        if self.batch is not None and (isinstance(self.batch, bool)
                                       or not isinstance(self.batch, int) or self.batch < 1):
            raise ValueError(f"batch must be an integer ≥ 1 or None (automatic), got "
                             f"{self.batch!r}")
        if self.min_new_steps is None:
            self.min_new_steps = 0 if self.preset is not None else MIN_NEW_STEPS
        if isinstance(self.min_new_steps, bool) or not isinstance(self.min_new_steps, int) \
                or self.min_new_steps < 0:
            raise ValueError(f"min_new_steps must be an integer ≥ 0, got {self.min_new_steps!r}")
        if self.preset is not None and self.min_new_steps:
            raise ValueError("min_new_steps: the compat preset stops where the prototype "
                             "stops (it has no minimum); leave it unset or 0")
        if isinstance(self.preregistration, dict):
            self.preregistration = Preregistration.from_dict(self.preregistration)
        self._check_interventions()
        if self.capture is not None and callable(self.capture.names):
            raise ValueError("capture.names: a study records its capture in study.json; give "
                             "a list of hook point names or a prefix, not a predicate")
        self._check_preset()

    def _check_interventions(self) -> None:
        """Each condition as a list of interventions in data form (canonical, so equal
        conditions give equal keys); ValueError naming the condition and the field."""
        axis = self.interventions
        if isinstance(axis, (str, bytes, dict)) or not isinstance(axis, Sequence):
            raise ValueError("interventions must be a list of conditions, each a list of "
                             "interventions ([] for none)")
        conditions = []
        for i, cond in enumerate(axis):
            if isinstance(cond, (str, bytes, dict)) or not isinstance(cond, Sequence):
                raise ValueError(f"interventions[{i}] must be a list of interventions ([] for "
                                 f"none), got {cond!r}")
            specs = [to_spec(from_spec(iv, f"interventions[{i}][{j}]") if isinstance(iv, dict)
                             else iv) for j, iv in enumerate(cond)]
            conditions.append(specs)
        labels = [json.dumps(c, sort_keys=True) for c in conditions]
        if len(set(labels)) != len(labels):
            raise ValueError("interventions: a condition appears twice")
        if all(not c for c in conditions):
            conditions = []  # only the empty condition: the study without the axis
        if conditions and self.preset is not None:
            raise ValueError("interventions: the compat preset runs the prototype as it was; "
                             "run interventions in a mechanism study")
        self.interventions = conditions

    def _check_types(self) -> None:
        """Every field of the grid has the type it reads as: a TOML `sample = "no"` is
        not true, and `thresholds = "0.1"` is not the characters "0", ".", "1"."""
        if isinstance(self.prompts, (str, bytes)) or not isinstance(self.prompts, Sequence):
            raise ValueError(f"prompts must be a list of texts or Prompt records, got "
                             f"{type(self.prompts).__name__}")
        for name, kinds in (("thresholds", (int, float)), ("modes", (str,)),
                            ("policies", (str,)), ("replays", (str,)), ("seeds", (int,))):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ValueError(f"{name} must be a list, got {value!r}")
            for v in value:
                if isinstance(v, bool) or not isinstance(v, kinds):
                    raise ValueError(f"{name}: {v!r} is not a "
                                     f"{'number' if name == 'thresholds' else kinds[0].__name__}")
        for name in ("sample", "emulate_mask_leak"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("max_steps", "max_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")

    def _check_preset(self) -> None:
        if self.preset is None:
            used = [name for name, value in (("add_bos", self.add_bos),
                                             ("eos_ids", self.eos_ids),
                                             ("emulate_mask_leak", self.emulate_mask_leak or None))
                    if value is not None]
            if used:
                raise ValueError(f"{', '.join(used)}: compat options, only with "
                                 f"preset={COMPAT_PRESET!r}")
            return
        if self.preset != COMPAT_PRESET:
            raise ValueError(f"preset: {self.preset!r} is not one of None, {COMPAT_PRESET!r}")
        for m in self.modes:
            if m not in COMPAT_MODES:
                raise ValueError(f"modes: {m!r} has no compat form; the preset's modes are "
                                 f"{', '.join(COMPAT_MODES)}")
        if list(self.policies) != ["mixture"]:
            raise ValueError("policies: the compat preset feeds each set's last member; it "
                             "has no policy choice (leave policies at the default)")
        if self.replays:
            raise ValueError("replays: a compat study has none (the preset's trees have "
                             "members without slots); run a mechanism study beside it")
        if self.sample:
            raise ValueError("sample: the compat preset is greedy (no sampling)")
        if self.eos_ids is not None:
            if isinstance(self.eos_ids, (str, bytes)) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in self.eos_ids):
                raise ValueError(f"eos_ids must be a list of token ids, got {self.eos_ids!r}")
            self.eos_ids = tuple(int(i) for i in self.eos_ids)
        if self.add_bos is not None and not isinstance(self.add_bos, bool):
            raise ValueError(f"add_bos must be true, false or unset, got {self.add_bos!r}")
        self.emulate_mask_leak = bool(self.emulate_mask_leak)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Study:
        """A study defined in TOML (or YAML when PyYAML is installed): keys as the
        constructor's, ``suite = "core"`` or ``prompts = [...]``, and a [capture] table."""
        path = Path(path)
        if not path.exists():
            raise MissingError(f"study file not found: {path}")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{path}: not UTF-8 text (byte {e.start})") from None
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ValueError(f"{path}: a YAML study file needs PyYAML (pip install "
                                 "'attnvar[yaml]' or pyyaml), or write it in TOML") from None
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise FormatError(f"{path}: invalid YAML: {e}") from None
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise FormatError(f"{path}: invalid TOML: {e}") from None
        if not isinstance(data, dict):
            raise FormatError(f"{path}: a study file is a table of keys, not "
                              f"{type(data).__name__}")
        try:
            return cls._from_table(dict(data))
        except (ValueError, TypeError) as e:
            # Every mistake in the file names the file (the message names the field).
            message = str(e)
            if isinstance(e, FormatError) and message.startswith(str(path)):
                raise
            raise FormatError(f"{path}: {message}") from None

    @classmethod
    def _from_table(cls, data: dict) -> Study:
        if "suite" in data:
            suite = data.pop("suite")
            if not isinstance(suite, str):
                raise ValueError(f"suite: a suite name or file, got {suite!r}")
            data["prompts"] = (prompt_suites.load_suite(suite) if Path(suite).exists()
                               else prompt_suites.suite(suite))
        if "capture" in data:
            cap = data.pop("capture")
            if cap is not False and not isinstance(cap, dict):
                raise ValueError(f"capture: a table of Capture options or false, got {cap!r}")
            if isinstance(cap, dict):
                unknown = set(cap) - {f.name for f in fields(Capture)}
                if unknown:
                    raise ValueError(f"capture: unknown keys {sorted(unknown)}")
            data["capture"] = None if cap is False else Capture(**cap)
        if "preregistration" in data:
            plan = data.pop("preregistration")
            if not isinstance(plan, dict):
                raise ValueError(f"preregistration: a table, got {plan!r}")
            data["preregistration"] = Preregistration.from_dict(plan)
        allowed = set(cls.__dataclass_fields__)
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown study keys {sorted(unknown)}")
        return cls(**data)

    def cells(self) -> list[Cell]:
        """Every generation of the grid. For a leaking compat study, the cells of one
        condition come in prompt order, each naming the prompts run before it."""
        seeds = self.seeds if self.sample else (self.seeds[0] if self.seeds else 0,)
        compat = {}
        if self.preset is not None:
            compat = dict(preset=self.preset, add_bos=self.add_bos,
                          eos_ids=None if self.eos_ids is None else tuple(self.eos_ids))
        ids = [p.id for p in self.prompts]
        conditions = [json.dumps(c, sort_keys=True) if c else None
                      for c in self.interventions] or [None]
        return [
            Cell(p.id, p.text, float(t), m, pol, int(s), self.sample, self.max_steps,
                 self.max_width, **compat,
                 leak_after=tuple(ids[:i]) if self.emulate_mask_leak else None,
                 min_new_steps=self.min_new_steps or None, interventions=iv)
            for i, p in enumerate(self.prompts) for t in self.thresholds for m in self.modes
            for pol in self.policies for s in seeds for iv in conditions
        ]

    def describe(self) -> dict:
        cap = None if self.capture is None else {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.capture).items()
            if not (k == "names" and v is None)  # (studies from before hook points match)
        }
        if cap is not None and callable(cap.get("names")):
            raise ValueError("a study's Capture.names must be a list of names or a prefix "
                             "(it is recorded in study.json), not a predicate")
        return {
            "prompts": [asdict(p) for p in self.prompts],
            "thresholds": list(self.thresholds), "modes": list(self.modes),
            "policies": list(self.policies), "replays": list(self.replays),
            "seeds": list(self.seeds), "sample": self.sample, "max_steps": self.max_steps,
            "max_width": self.max_width, "capture": cap, "model_path": self.model_path,
            **({"min_new_steps": self.min_new_steps} if not self.preset else {}),
            **({"interventions": self.interventions} if self.interventions else {}),
            **({"preset": self.preset, "add_bos": self.add_bos,
                "eos_ids": None if self.eos_ids is None else list(self.eos_ids),
                "emulate_mask_leak": self.emulate_mask_leak} if self.preset else {}),
        }

    def describe_with_plan(self) -> dict:
        """:meth:`describe` plus the preregistered plan (what study.json stores)."""
        return {**self.describe(), "preregistration": self.preregistration.plan()}

    def run(self, results_dir: str | os.PathLike, workers: int = 1, progress: bool = True,
            after_cells=None, executor: str = "local", address: str | None = None,
            threads: int | None = None):
        """Run every cell not already complete in ``results_dir``; write tables.

        ``after_cells(results_dir, cell_ids)`` runs after each group of cells in the
        process that ran it (e.g. ``attnvar.analysis.CellAnalysis()``: the analysis
        overlaps the generations, and with ``keep_capture=False`` the raw captures are
        removed once analysed). Returns the runs table (pandas DataFrame, one row per run).

        ``executor="ray"`` runs the cells on ``workers`` Ray actors (``pip install
        'attnvar[ray]'``; docs/ray.md): on the cluster at ``address`` (e.g. "auto", or
        "HOST:6379"), or on a Ray instance of this machine started and stopped for the
        study when ``address`` is None; ``threads``: CPU threads per actor. The runs,
        their keys and the tables are those of a local study.
        """
        return run_study(self, Path(results_dir), workers=workers, progress=progress,
                         after_cells=after_cells, executor=executor, address=address,
                         threads=threads)


__all__ = ["MIN_NEW_STEPS", "Study"]
