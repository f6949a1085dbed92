"""The analysis plan of a study, fixed before its runs (the exclusion rule among them).

A :class:`Preregistration` names the primary metric and design, the exclusion rule, the
tests and the families. ``Study.run`` writes it to ``preregistration.json`` in the
results directory before the first run, with a timestamp and a content hash; running the
study again with a different plan is refused (the plan cannot silently change after data
exist). The hypothesis report reads the stored plan, analyses by it and says whether the
study followed it: plan written before every run, every planned cell complete, analysis
settings equal to the plan's.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .._core import MissingError
from ..engine import ENCODINGS
from ..util.atomic import write_atomic
from .degeneracy import ExclusionRule

PREREGISTRATION_FILE = "preregistration.json"

METRIC_VARIANTS = {
    "M1": ("distance_matched", "plain"),
    "M1m": ("size_matched", "raw"),
    "M1p": ("position", "position_minus_log_k"),
    "M2": ("per_head", "pooled"),
}
TESTS = ("t", "wilcoxon", "perm")
CORRECTIONS = ("holm", "bh", "bonferroni", "by")


@dataclass(frozen=True)
class Preregistration:
    """What a study will test and how, decided before it runs.

    Parameters
    ----------
    metric, variant : the primary within-query contrast (default: M1, distance-matched)
    sinks_excluded : primary analysis with sinks excluded (both are always reported)
    contrast_encoding : the replay the generated run is contrasted with (the primary
        design: δ(generated) − δ(replay), text held fixed)
    exclusion : the degeneracy exclusion rule (``degeneracy.ExclusionRule`` fields)
    primary_test : the p value used for decisions: "t", "wilcoxon" or "perm"
    alpha, tost_margin_pct : level and the ±equivalence margin in % of reduction
    hypotheses_correction : across H1–H4 (one family)
    heads_correction, heads_q : across all layer × head tests
    notes : free text (the question, predictions)
    """

    metric: str = "M1"
    variant: str = "distance_matched"
    sinks_excluded: bool = True
    contrast_encoding: str = "serial"
    exclusion: dict = field(default_factory=lambda: {
        "always": ["tail_loop"],
        "any_k_of": ["seq_rep_4", "zlib_ratio", "distinct_1", "distinct_2",
                     "entropy_collapse"],
        "k": 2,
    })
    primary_test: str = "t"
    alpha: float = 0.05
    tost_margin_pct: float = 10.0
    hypotheses_correction: str = "holm"
    heads_correction: str = "bh"
    heads_q: float = 0.05
    notes: str = ""

    def __post_init__(self) -> None:
        if self.metric not in METRIC_VARIANTS:
            raise ValueError(f"preregistration: metric {self.metric!r} is not one of "
                             f"{', '.join(METRIC_VARIANTS)}")
        if self.variant not in METRIC_VARIANTS[self.metric]:
            raise ValueError(f"preregistration: variant {self.variant!r} of {self.metric} is "
                             f"not one of {', '.join(METRIC_VARIANTS[self.metric])}")
        if self.contrast_encoding not in ENCODINGS or self.contrast_encoding == "top_only":
            raise ValueError(f"preregistration: contrast_encoding {self.contrast_encoding!r} "
                             "must be an encoding that keeps every member (not top_only)")
        if self.primary_test not in TESTS:
            raise ValueError(f"preregistration: primary_test must be one of {TESTS}")
        for name in ("hypotheses_correction", "heads_correction"):
            if getattr(self, name) not in CORRECTIONS:
                raise ValueError(f"preregistration: {name} must be one of {CORRECTIONS}")
        if not 0 < self.alpha < 1 or not 0 < self.heads_q < 1:
            raise ValueError("preregistration: alpha and heads_q must lie in (0, 1)")
        if not self.tost_margin_pct > 0:
            raise ValueError("preregistration: tost_margin_pct must be > 0")
        self.exclusion_rule()  # validates the flag names

    def exclusion_rule(self) -> ExclusionRule:
        e = self.exclusion
        return ExclusionRule(always=tuple(e.get("always", ())),
                             any_k_of=tuple(e.get("any_k_of", ())), k=int(e.get("k", 1)))

    def plan(self) -> dict[str, Any]:
        """The plan as a JSON-able dict (the fields)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preregistration:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"preregistration: unknown keys {sorted(unknown)}")
        return cls(**data)


def plan_hash(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def record(prereg: Preregistration, study_description: dict) -> dict[str, Any]:
    """The stored record: the plan, the study grid it applies to, time and hashes."""
    plan = prereg.plan()
    rule = prereg.exclusion_rule().describe()
    return {
        "plan": plan,
        "plan_sha256": plan_hash(plan),
        "exclusion_rule": rule,
        "study_sha256": plan_hash(study_description),
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write(results: Path, prereg: Preregistration, study_description: dict) -> dict:
    """Write the plan before any run; an existing plan must be the same one.

    Raises ValueError naming the fields that differ when ``results`` already holds a
    different plan (start a new results directory to change the plan).
    """
    path = Path(results) / PREREGISTRATION_FILE
    if path.exists():
        old = load(results)
        new_plan = prereg.plan()
        if old["plan_sha256"] != plan_hash(new_plan):
            diff = sorted(k for k in set(old["plan"]) | set(new_plan)
                          if old["plan"].get(k) != new_plan.get(k))
            raise ValueError(f"{path}: this study was preregistered with a different plan "
                             f"(fields {diff} differ); use a new results directory to "
                             "change the plan")
        return old
    rec = record(prereg, study_description)
    write_atomic(path, json.dumps(rec, indent=1, ensure_ascii=False))
    return rec


def load(results: Path) -> dict:
    """The stored record, checked: its hash must match its plan."""
    path = Path(results) / PREREGISTRATION_FILE
    if not path.exists():
        raise MissingError(f"{path}: no preregistration (run the study with attnvar ≥ 0.1 "
                                "or write one with attnvar.preregistration.write)")
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if plan_hash(rec.get("plan", {})) != rec.get("plan_sha256"):
        raise ValueError(f"{path}: the plan does not match its recorded hash (edited after it "
                         "was written)")
    Preregistration.from_dict(rec["plan"])
    return rec


__all__ = ["PREREGISTRATION_FILE", "Preregistration", "load", "plan_hash", "record", "write"]
