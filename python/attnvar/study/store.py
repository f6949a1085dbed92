"""A study's results directory: content-addressed keys of its cells and replays, and
where their runs and tables live.

    <results>/study.json             the study's description and plan
    <results>/preregistration.json   the analysis plan, written before the first run
    <results>/runs/<key>/            one directory per run (engine.run_store)
    <results>/tables/*.parquet       the runs table, then the analysis tables
    <results>/summary.md             per-condition summary of the runs

A cell's key hashes the model file's SHA-256 with every design value of the cell, so a
study that is run again (or resumed after a crash) finds what it already has.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engine.visibility import COMPAT_KIND

STUDY_FILE = "study.json"
RUNS = "runs"
TABLES = "tables"
SUMMARY_FILE = "summary.md"
COMPAT_PRESET = COMPAT_KIND  # the engine's name for its compat runs
COMPAT_MODES = ("isolated", "visible")
# Run kinds that are a cell's generation (its replays have kind "replay").
GENERATED_KINDS = ("generate", COMPAT_PRESET)
# Fields added to Cell after studies existed: left out of the key while unset, so the
# keys (and so the results) of every earlier study stay valid.
_OPTIONAL_KEY_FIELDS = ("preset", "add_bos", "eos_ids", "leak_after", "min_new_steps",
                        "interventions")


@dataclass(frozen=True)
class Cell:
    """One generation of the grid, and the replays of its tree."""

    prompt_id: str
    prompt_text: str
    threshold: float
    mode: str
    policy: str
    seed: int
    sample: bool
    max_steps: int
    max_width: int
    preset: str | None = None  # "tempo-2025": the compat preset runs the cell
    add_bos: bool | None = None  # compat: BOS as the prototype's tokenizer has it
    eos_ids: tuple[int, ...] | None = None  # compat: its stopping ids
    leak_after: tuple[str, ...] | None = None  # compat with the mask leak: prompts before
    min_new_steps: int | None = None  # no EOS before this many steps (None: 0)
    # The cell's intervention condition: the canonical JSON of its interventions as data
    # (attnvar.engine.interventions.to_spec), None for none.
    interventions: str | None = None

    def key(self, model_sha: str) -> str:
        fields = {k: v for k, v in asdict(self).items()
                  if not (k in _OPTIONAL_KEY_FIELDS and v is None)}
        payload = json.dumps({"model": model_sha, **fields}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def emulate_isolation_bug(self) -> bool:
        """Compat cells: the prototype's isolated mode is its misplaced mask."""
        return self.preset is not None and self.mode == "isolated"

    def condition(self) -> tuple:
        """The cell's grid values other than the prompt (one leak chain per condition)."""
        return (self.threshold, self.mode, self.policy, self.seed, self.interventions)

    @property
    def intervention_label(self) -> str:
        """A short name of the intervention condition: "none", or the first 12 hex digits
        of its canonical JSON's SHA-256."""
        if self.interventions is None:
            return "none"
        return hashlib.sha256(self.interventions.encode()).hexdigest()[:12]


def replay_key(cell_key: str, encoding: str) -> str:
    """The key of the replay of cell ``cell_key``'s tree under ``encoding``."""
    return hashlib.sha256(f"{cell_key}/{encoding}".encode()).hexdigest()[:16]


def iter_completed(runs_dir: Path) -> Iterable[Path]:
    """The complete runs in ``runs_dir`` (those with a run.json; staging directories,
    whose names start with ".", are never complete)."""
    if runs_dir.exists():
        for p in sorted(runs_dir.iterdir()):
            if p.is_dir() and not p.name.startswith(".") and (p / "run.json").exists():
                yield p


__all__ = ["COMPAT_MODES", "COMPAT_PRESET", "GENERATED_KINDS", "RUNS", "STUDY_FILE",
           "SUMMARY_FILE", "TABLES", "Cell", "iter_completed", "replay_key"]
