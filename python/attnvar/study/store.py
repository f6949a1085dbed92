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

STUDY_FILE = "study.json"
RUNS = "runs"
TABLES = "tables"
SUMMARY_FILE = "summary.md"


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

    def key(self, model_sha: str) -> str:
        payload = json.dumps({"model": model_sha, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


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


__all__ = ["RUNS", "STUDY_FILE", "SUMMARY_FILE", "TABLES", "Cell", "iter_completed",
           "replay_key"]
