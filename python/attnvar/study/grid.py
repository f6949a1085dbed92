"""A study: a grid over prompts × thresholds × modes × policies × seeds, each generated
tree replayed under chosen encodings, with its preregistered analysis plan. Running it
(:mod:`.runner`) writes content-addressed runs atomically, so an interrupted study
resumes with nothing lost or duplicated."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..engine import ENCODINGS, MODES, POLICIES, Capture
from . import prompts as prompt_suites
from .preregistration import Preregistration
from .prompts import Prompt
from .runner import run_study
from .store import Cell

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, released as tomli
    import tomli as tomllib


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
    preregistration : the analysis plan (primary metric, exclusion rule, tests), written
        to the results directory before the first run (``attnvar.preregistration``)
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
    preregistration: Preregistration = field(default_factory=Preregistration)

    def __post_init__(self) -> None:
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
        if isinstance(self.preregistration, dict):
            self.preregistration = Preregistration.from_dict(self.preregistration)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Study:
        """A study defined in TOML (or YAML when PyYAML is installed): keys as the
        constructor's, ``suite = "core"`` or ``prompts = [...]``, and a [capture] table."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"study file not found: {path}")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: invalid TOML: {e}") from e
        data = dict(data)
        if "suite" in data:
            suite = data.pop("suite")
            data["prompts"] = (prompt_suites.load_suite(suite) if Path(suite).exists()
                               else prompt_suites.suite(suite))
        if "capture" in data:
            cap = data.pop("capture")
            data["capture"] = None if cap is False else Capture(**cap)
        if "preregistration" in data:
            data["preregistration"] = Preregistration.from_dict(data.pop("preregistration"))
        allowed = set(cls.__dataclass_fields__)
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"{path}: unknown study keys {sorted(unknown)}")
        return cls(**data)

    def cells(self) -> list[Cell]:
        seeds = self.seeds if self.sample else (self.seeds[0] if self.seeds else 0,)
        return [
            Cell(p.id, p.text, float(t), m, pol, int(s), self.sample, self.max_steps,
                 self.max_width)
            for p in self.prompts for t in self.thresholds for m in self.modes
            for pol in self.policies for s in seeds
        ]

    def describe(self) -> dict:
        cap = None if self.capture is None else {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.capture).items()
        }
        return {
            "prompts": [asdict(p) for p in self.prompts],
            "thresholds": list(self.thresholds), "modes": list(self.modes),
            "policies": list(self.policies), "replays": list(self.replays),
            "seeds": list(self.seeds), "sample": self.sample, "max_steps": self.max_steps,
            "max_width": self.max_width, "capture": cap, "model_path": self.model_path,
        }

    def describe_with_plan(self) -> dict:
        """:meth:`describe` plus the preregistered plan (what study.json stores)."""
        return {**self.describe(), "preregistration": self.preregistration.plan()}

    def run(self, results_dir: str | os.PathLike, workers: int = 1, progress: bool = True):
        """Run every cell not already complete in ``results_dir``; write tables.

        Returns the runs table (pandas DataFrame, one row per run).
        """
        return run_study(self, Path(results_dir), workers=workers, progress=progress)


__all__ = ["Study"]
