"""Degenerate generations (docs/degeneracy.md).

Per run, on the top path (each set's rank-0 member) and the per-step next-token
entropies:

- ``seq_rep_4`` — share of the run's 4-grams that repeat an earlier one,
  ``1 − #distinct 4-grams / #4-grams``;
- ``distinct_1``, ``distinct_2`` — ``#distinct n-grams / #n-grams``;
- ``zlib_ratio`` — UTF-8 bytes of the text over the bytes of its zlib (level 9)
  compression; short texts compress badly, so the value is only comparable at equal length;
- ``tail_loop_period``, ``tail_loop_repeats`` — the smallest period p ≤ ``max_period``
  whose cycle repeats most often at the end of the generation (0 / 1.0 when none);
- ``tail_entropy`` — mean next-token entropy (nats) of the last ``tail_steps`` steps,
  and ``low_entropy_tail`` — how many final steps in a row have entropy below
  ``entropy_floor``.

Flags compare these with thresholds calibrated on the project's own greedy sequential
runs of the same length (``tools/calibrate_degeneracy.py``, stored in
``data/degeneracy_thresholds.json``, one set per calibrated generation length — 20 and
30 steps — chosen by :func:`thresholds_for`): high-side metrics against the reference
95th percentile, low-side against the 5th. ``tail_loop`` is structural: at least
``min_repeats`` repeats of a cycle of period ≤ ``max_period`` covering at least
``min_span`` tokens. An :class:`ExclusionRule` says which flags exclude a run; record its
:meth:`ExclusionRule.describe` with the study.

Token ids are used for runs and id lists; for plain text the n-gram metrics use a word /
punctuation split (``\\w+|[^\\w\\s]``), which has its own calibrated thresholds.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "seq_rep_n",
    "distinct_n",
    "zlib_ratio",
    "tail_loop",
    "tail_entropy",
    "low_entropy_tail",
    "metrics",
    "load_thresholds",
    "thresholds_for",
    "flags",
    "ExclusionRule",
    "report",
    "calibrate",
    "flag_rates",
    "HIGH_SIDE",
    "LOW_SIDE",
    "FLAG_NAMES",
]

THRESHOLDS_PATH = Path(__file__).with_name("data") / "degeneracy_thresholds.json"
HIGH_SIDE = ("seq_rep_4", "zlib_ratio")  # flagged above the reference 95th percentile
LOW_SIDE = ("distinct_1", "distinct_2", "tail_entropy")  # below the reference 5th
LOOP_DEFAULTS = {"max_period": 16, "min_repeats": 3.0, "min_span": 6}
TAIL_STEPS = 10
ENTROPY_FLOOR = 0.1
_WORDS = re.compile(r"\w+|[^\w\s]")


# ---- metrics ------------------------------------------------------------------------------------
def _ngrams(tokens: Sequence[Any], n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def seq_rep_n(tokens: Sequence[Any], n: int = 4) -> float:
    """Share of repeated n-grams, ``1 − #distinct / #n-grams``; NaN when there are none.

    ``[1, 2, 3, 4, 1, 2, 3, 4]`` has 5 4-grams, 4 distinct → 0.2.
    """
    grams = _ngrams(tokens, n)
    return float("nan") if not grams else 1.0 - len(set(grams)) / len(grams)


def distinct_n(tokens: Sequence[Any], n: int) -> float:
    """``#distinct n-grams / #n-grams``; NaN when there are none."""
    grams = _ngrams(tokens, n)
    return float("nan") if not grams else len(set(grams)) / len(grams)


def zlib_ratio(text: str) -> float:
    """UTF-8 length over zlib-compressed (level 9) length; NaN for empty text."""
    raw = text.encode("utf-8")
    return float("nan") if not raw else len(raw) / len(zlib.compress(raw, 9))


def tail_loop(tokens: Sequence[Any], max_period: int = LOOP_DEFAULTS["max_period"]
              ) -> tuple[int, float]:
    """The cycle the sequence ends in: ``(period, repeats)``.

    For each period p ≤ ``max_period`` the tail is extended backwards while
    ``t[i] == t[i − p]``; the cycle covers ``ℓ + p`` tokens, ``(ℓ + p)/p`` repeats. The
    period with most repeats wins (the smallest on ties); ``(0, 1.0)`` if nothing repeats.
    ``a b c a b c a b`` → period 3, repeats 8/3.
    """
    n = len(tokens)
    best = (0, 1.0)
    for p in range(1, min(max_period, n // 2) + 1):
        run = 0
        i = n - 1
        while i - p >= 0 and tokens[i] == tokens[i - p]:
            run += 1
            i -= 1
        if run == 0:
            continue
        reps = (run + p) / p
        if reps > best[1] + 1e-12:
            best = (p, reps)
    return best


def tail_entropy(entropies: Sequence[float], tail_steps: int = TAIL_STEPS) -> float:
    """Mean entropy of the last ``tail_steps`` steps (all of them if fewer); NaN if none."""
    e = [x for x in entropies if x is not None and math.isfinite(x)]
    return float("nan") if not e else float(np.mean(e[-tail_steps:]))


def low_entropy_tail(entropies: Sequence[float], floor: float = ENTROPY_FLOOR) -> int:
    """Number of final steps in a row whose entropy is below ``floor`` nats."""
    k = 0
    for x in reversed(list(entropies)):
        if not x < floor:
            break
        k += 1
    return k


def _resolve(obj: Any) -> tuple[str, list, str, list[float]]:
    """(unit, tokens, text, entropies) from a Run, a dict (``ids``/``text``/
    ``entropies``), a text string, or a sequence of token ids."""
    if hasattr(obj, "tree") and hasattr(obj, "pieces"):
        ids = [s.members[0].token_id for s in obj.tree.steps]
        ent = [float(s.entropy) for s in obj.tree.steps]
        eos = set((getattr(obj, "options", None) or {}).get("eos_ids") or [])
        if ids and ids[-1] in eos:
            ids, ent = ids[:-1], ent[:-1]
        return "ids", ids, "".join(obj.pieces[i] for i in ids), ent
    if isinstance(obj, dict):
        ent = list(obj.get("entropies") or [])
        if obj.get("ids") is not None:
            return "ids", list(obj["ids"]), obj.get("text") or "", ent
        text = obj.get("text") or ""
        return "words", _WORDS.findall(text), text, ent
    if isinstance(obj, str):
        return "words", _WORDS.findall(obj), obj, []
    ids = [int(i) for i in obj]
    return "ids", ids, " ".join(map(str, ids)), []


def _generation_length(obj: Any) -> int | None:
    """The ``max_steps`` a run was generated with, when the object says so: a Run's
    ``options["max_steps"]`` or a dict's ``max_steps`` key."""
    if hasattr(obj, "tree") and hasattr(obj, "pieces"):
        v = (getattr(obj, "options", None) or {}).get("max_steps")
    elif isinstance(obj, dict):
        v = obj.get("max_steps")
    else:
        v = None
    return None if v is None else int(v)


def metrics(run_or_ids: Any, max_period: int = LOOP_DEFAULTS["max_period"],
            tail_steps: int = TAIL_STEPS, entropy_floor: float = ENTROPY_FLOOR
            ) -> dict[str, Any]:
    """Every degeneracy metric of one run (see the module docstring).

    For an id list without text the zlib ratio is taken on the ids written as decimal
    text, which is comparable only with other id lists.
    """
    unit, tokens, text, ent = _resolve(run_or_ids)
    period, reps = tail_loop(tokens, max_period)
    return {
        "unit": unit,
        "n_tokens": len(tokens),
        "seq_rep_4": seq_rep_n(tokens, 4),
        "distinct_1": distinct_n(tokens, 1),
        "distinct_2": distinct_n(tokens, 2),
        "zlib_ratio": zlib_ratio(text),
        "tail_loop_period": period,
        "tail_loop_repeats": reps,
        "tail_loop_span": int(round(period * reps)) if period else 0,
        "tail_entropy": tail_entropy(ent, tail_steps),
        "low_entropy_tail": low_entropy_tail(ent, entropy_floor),
    }


# ---- thresholds and flags -----------------------------------------------------------------------
@lru_cache(maxsize=4)
def _load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def load_thresholds(path: str | Path | None = None) -> dict:
    """The calibration record (thresholds per unit, provenance, reference summaries)."""
    return _load(str(THRESHOLDS_PATH if path is None else path))


def _loop_flag(m: dict, loop: dict) -> bool:
    return (m["tail_loop_period"] > 0 and m["tail_loop_repeats"] >= loop["min_repeats"]
            and m["tail_loop_span"] >= loop["min_span"])


def thresholds_for(record: dict, unit: str, length: int | None = None,
                   n_tokens: int | None = None) -> tuple[dict[str, float], int | None]:
    """The threshold set of one unit (``"ids"`` / ``"words"``) for a run, and the
    calibrated length it belongs to.

    A record with ``by_length`` (one calibration per generation length) is read as
    follows: the calibrated length equal to ``length`` (the run's ``max_steps``) if there
    is one; otherwise the smallest calibrated length ≥ ``length`` (or, without a length,
    ≥ ``n_tokens`` for token ids), else the largest. Word-split text without a length
    uses the record's ``default_length``. A record without ``by_length`` has one set
    (``thresholds``; length None); a flat ``{metric: value}`` mapping is used as it is.
    """
    if "thresholds" not in record:
        return record, None
    by_length = record.get("by_length")
    if not by_length:
        return record["thresholds"][unit], None
    lengths = sorted(int(k) for k in by_length)
    want = length if length is not None else (n_tokens if unit == "ids" else None)
    if want is None:
        chosen = int(record.get("default_length", lengths[-1]))
    else:
        chosen = next((L for L in lengths if L >= want), lengths[-1])
    return by_length[str(chosen)]["thresholds"][unit], chosen


def flags(run_or_ids: Any, thresholds: dict | None = None, length: int | None = None
          ) -> dict[str, bool]:
    """Degeneracy flags of one run against calibrated thresholds.

    Parameters
    ----------
    run_or_ids : Run, dict, str or sequence of int
    thresholds : dict, optional
        A calibration record as from :func:`load_thresholds` (default: the packaged one),
        or a flat mapping ``{metric: value}`` applied whatever the unit.
    length : int, optional
        The generation length (``max_steps``) whose thresholds apply; default: the run's
        own ``options["max_steps"]`` (a dict's ``max_steps``), else chosen from the
        number of tokens (:func:`thresholds_for`).

    Returns
    -------
    dict
        ``seq_rep_4, zlib_ratio`` (above the 95th percentile), ``distinct_1, distinct_2,
        entropy_collapse`` (below the 5th; ``entropy_collapse`` is ``tail_entropy``), and
        ``tail_loop``. A metric that is NaN (too short, no entropies) does not flag.
    """
    rec = load_thresholds() if thresholds is None else thresholds
    loop = {**LOOP_DEFAULTS, **rec.get("tail_loop", {})}
    m = metrics(run_or_ids, max_period=int(loop["max_period"]))
    th, _ = thresholds_for(rec, m["unit"],
                           length if length is not None else _generation_length(run_or_ids),
                           m["n_tokens"])
    out: dict[str, bool] = {}
    for k in HIGH_SIDE:
        out[k] = bool(k in th and m[k] > th[k])
    for k in LOW_SIDE:
        name = "entropy_collapse" if k == "tail_entropy" else k
        out[name] = bool(k in th and m[k] < th[k])
    out["tail_loop"] = _loop_flag(m, loop)
    return out


FLAG_NAMES = ("seq_rep_4", "zlib_ratio", "distinct_1", "distinct_2", "entropy_collapse",
              "tail_loop")


@dataclass(frozen=True)
class ExclusionRule:
    """Which flags exclude a run, fixed before a study runs.

    A run is excluded when any flag in ``always`` is set, or when at least ``k`` of the
    flags in ``any_k_of`` are set (the n-gram / compression flags are correlated on real
    loops, so requiring two of them keeps the false-exclusion rate of ordinary runs well
    below the sum of the single 5 % rates).
    """

    always: tuple[str, ...] = ("tail_loop",)
    any_k_of: tuple[str, ...] = ("seq_rep_4", "zlib_ratio", "distinct_1", "distinct_2",
                                 "entropy_collapse")
    k: int = 2
    thresholds_path: str | None = field(default=None)

    def __post_init__(self) -> None:
        unknown = set(self.always) | set(self.any_k_of)
        unknown -= set(FLAG_NAMES)
        if unknown:
            raise ValueError(f"unknown flags {sorted(unknown)}; known: {FLAG_NAMES}")
        if self.k < 1:
            raise ValueError(f"k must be ≥ 1, got {self.k}")

    def thresholds(self) -> dict:
        return load_thresholds(self.thresholds_path)

    def excludes(self, run_or_flags: Any) -> bool:
        """True when the run (or its flag dict from :func:`flags`) is excluded."""
        f = run_or_flags if _is_flag_dict(run_or_flags) else flags(run_or_flags,
                                                                    self.thresholds())
        return any(f[x] for x in self.always) or sum(f[x] for x in self.any_k_of) >= self.k

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the rule and the calibration it uses, for the study."""
        rec = self.thresholds()
        text = " or ".join(
            [*self.always, f"≥ {self.k} of ({', '.join(self.any_k_of)})"]) if self.any_k_of \
            else " or ".join(self.always)
        return {
            "rule": f"exclude a run if {text}",
            "always": list(self.always),
            "any_k_of": list(self.any_k_of),
            "k": self.k,
            "tail_loop": {**LOOP_DEFAULTS, **rec.get("tail_loop", {})},
            "thresholds": rec["thresholds"],
            "thresholds_by_length": {L: v["thresholds"]
                                     for L, v in (rec.get("by_length") or {}).items()},
            "calibration": {k: rec.get(k) for k in
                            ("command", "date", "model_file", "model_sha256", "n_runs",
                             "generation", "percentiles", "default_length")},
        }


def _is_flag_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and set(FLAG_NAMES) <= set(obj)


def report(runs: Iterable[Any], rule: ExclusionRule | None = None,
           ids: Sequence[Any] | None = None) -> pd.DataFrame:
    """One row per run: every metric, ``threshold_length`` (the calibrated length whose
    thresholds applied, None for a single-length record), every flag and ``excluded``
    under ``rule``."""
    rule = rule or ExclusionRule()
    th = rule.thresholds()
    rows = []
    for i, r in enumerate(runs):
        f = flags(r, th)
        m = metrics(r)
        _, used = thresholds_for(th, m["unit"], _generation_length(r), m["n_tokens"])
        rows.append({"run": ids[i] if ids is not None else i, **m, "threshold_length": used,
                     **{f"flag_{k}": v for k, v in f.items()}, "excluded": rule.excludes(f)})
    return pd.DataFrame(rows)


# ---- calibration ------------------------------------------------------------------------------
def _prefix(run: dict, length: int) -> dict:
    """The first ``length`` tokens of a reference run (ids, entropies and, from the
    per-token ``pieces``, the text)."""
    if len(run["ids"]) <= length:
        return run
    if run.get("pieces") is None:
        raise ValueError("a run longer than the calibration length needs per-token 'pieces' "
                         "to rebuild its text")
    return {**run, "ids": run["ids"][:length], "entropies": run["entropies"][:length],
            "pieces": run["pieces"][:length], "text": "".join(run["pieces"][:length])}


def _as_input(run: dict, unit: str) -> dict:
    if unit == "ids":
        return {"ids": run["ids"], "text": run["text"], "entropies": run["entropies"]}
    return {"text": run["text"], "entropies": run["entropies"]}


def _reference_thresholds(kept: Sequence[dict], low_q: float, high_q: float
                          ) -> tuple[dict, dict, bool]:
    """Per unit: thresholds, min/median/max summaries, and whether percentiles were used
    (else the reference extremes; see :func:`calibrate`)."""
    use_pct = len(kept) >= math.ceil(100.0 / (100.0 - high_q) - 1e-9)
    thresholds: dict[str, dict[str, float]] = {}
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for unit in ("ids", "words"):
        frame = pd.DataFrame([metrics(_as_input(r, unit)) for r in kept])
        thresholds[unit], summary[unit] = {}, {}
        for k in (*HIGH_SIDE, *LOW_SIDE):
            v = frame[k].dropna().to_numpy(dtype=float)
            if use_pct:
                thresholds[unit][k] = float(np.percentile(v, high_q if k in HIGH_SIDE else low_q))
            else:  # the percentile is not estimable: use the reference extreme
                thresholds[unit][k] = float(v.max() if k in HIGH_SIDE else v.min())
            summary[unit][k] = {"min": round(float(v.min()), 6),
                                "p05": round(float(np.percentile(v, 5)), 6),
                                "median": round(float(np.median(v)), 6),
                                "p95": round(float(np.percentile(v, 95)), 6),
                                "max": round(float(v.max()), 6)}
    return thresholds, summary, use_pct


def flag_rates(runs: Sequence[dict], record: dict, length: int | None = None,
               rule: ExclusionRule | None = None) -> dict[str, dict[str, float]]:
    """Share of ``runs`` (dicts with ``ids``, ``text``, ``entropies``) with each flag and
    excluded under ``rule`` (default :class:`ExclusionRule`), per unit, against
    ``record`` at generation length ``length``. Adds ``n``."""
    rule = rule or ExclusionRule()
    out = {}
    for unit in ("ids", "words"):
        fl = [flags(_as_input(r, unit), record, length=length) for r in runs]
        out[unit] = {
            **{k: round(float(np.mean([f[k] for f in fl])), 4) for k in FLAG_NAMES},
            "excluded": round(float(np.mean([rule.excludes(f) for f in fl])), 4),
            "n": len(fl),
        }
    return out


def _split_half_rates(kept: Sequence[dict], low_q: float, high_q: float
                      ) -> dict[str, dict[str, float]]:
    """Held-out flag rates: thresholds from the even-numbered runs flag the odd ones and
    vice versa; the two halves' rates pooled (weighted by size)."""
    halves = [list(kept[0::2]), list(kept[1::2])]
    pooled: dict[str, dict[str, float]] = {}
    for fit, test in ((halves[0], halves[1]), (halves[1], halves[0])):
        th, _, _ = _reference_thresholds(fit, low_q, high_q)
        rates = flag_rates(test, {"thresholds": th, "tail_loop": dict(LOOP_DEFAULTS)})
        for unit, r in rates.items():
            acc = pooled.setdefault(unit, {})
            for k, v in r.items():
                acc[k] = acc.get(k, 0.0) + (v * r["n"] if k != "n" else v)
    for r in pooled.values():
        for k in r:
            if k != "n":
                r[k] = round(r[k] / r["n"], 4)
    return pooled


def calibrate(runs: Sequence[dict], low_q: float = 5.0, high_q: float = 95.0,
              min_tokens: int = 20, lengths: Sequence[int] | None = None) -> dict[str, Any]:
    """Reference percentiles of every metric over sequential runs (dicts with ``ids``,
    ``text``, ``entropies`` and, for ``lengths``, per-token ``pieces``), per unit (token
    ids and the word split of the text).

    Without ``lengths``: one threshold set from the runs as they are; runs with fewer
    than ``min_tokens`` tokens (early EOS) are left out. With ``lengths`` (e.g.
    ``[20, 30]``): one set per length L from each run's first L tokens (greedy runs are
    deterministic, so the prefix of a 30-step run is the 20-step run), keeping runs with
    at least ``ceil(2L/3)`` tokens (20 of 30, as without lengths); the record gets
    ``by_length`` and ``default_length = max(lengths)``, whose set is also the top-level
    ``thresholds``.

    With fewer than ``100/(100 − high_q)`` runs (20 for the 95th) the percentiles are not
    estimable and the reference max (high side) / min (low side) is used instead; flags
    are strict inequalities, so no reference run is then flagged. Each set comes with
    in-sample flag rates and split-half held-out rates (:func:`_split_half_rates`).
    Returns the record written to ``data/degeneracy_thresholds.json`` (without the
    provenance the tool adds).
    """
    min_runs_for_percentile = math.ceil(100.0 / (100.0 - high_q) - 1e-9)
    plan = ([(None, min_tokens, list(runs))] if lengths is None else
            [(int(L), math.ceil(2 * int(L) / 3), [_prefix(r, int(L)) for r in runs])
             for L in sorted(set(lengths))])
    by_length: dict[str, dict[str, Any]] = {}
    for L, need, cut in plan:
        kept = [r for r in cut if len(r["ids"]) >= need]
        if len(kept) < 3:
            raise ValueError(f"need ≥ 3 runs with ≥ {need} tokens, got {len(kept)}")
        th, summary, use_pct = _reference_thresholds(kept, low_q, high_q)
        entry: dict[str, Any] = {
            "thresholds": th,
            "threshold_source": "percentile" if use_pct else "extreme",
            "min_tokens": need,
            "n_runs": len(kept),
            "n_runs_generated": len(runs),
            "reference_summary": summary,
            "in_sample_flag_rates": flag_rates(
                kept, {"thresholds": th, "tail_loop": dict(LOOP_DEFAULTS)}),
        }
        if len(kept) >= 2 * min_runs_for_percentile:
            entry["split_half_flag_rates"] = _split_half_rates(kept, low_q, high_q)
        by_length["all" if L is None else str(L)] = entry
    default = "all" if lengths is None else str(max(int(L) for L in lengths))
    top = by_length[default]
    rec: dict[str, Any] = {
        "thresholds": top["thresholds"],
        "tail_loop": dict(LOOP_DEFAULTS),
        "threshold_rule": (
            f"{high_q:g}th / {low_q:g}th percentile of the reference runs when there are "
            f"≥ {min_runs_for_percentile} of them, else the reference max / min "
            f"(used: {top['threshold_source']})"),
        "percentiles": {"high_side": high_q, "low_side": low_q,
                        "high_metrics": list(HIGH_SIDE), "low_metrics": list(LOW_SIDE)},
        "tail_steps": TAIL_STEPS,
        "min_tokens": top["min_tokens"],
        "n_runs": top["n_runs"],
        "n_runs_generated": len(runs),
        "reference_summary": top["reference_summary"],
        "in_sample_flag_rates": top["in_sample_flag_rates"],
    }
    if "split_half_flag_rates" in top:
        rec["split_half_flag_rates"] = top["split_half_flag_rates"]
    if lengths is not None:
        rec["default_length"] = int(default)
        rec["by_length"] = by_length
    return rec
