"""The positive control of a study, run on its own generations.

A known effect is put into a sample of the study's runs and the analysis has to find it:
each sampled generation's tree is replayed twice under the generation's own encoding,
once as it is and once with ``delta`` = −log 2 added to the pre-softmax scores of every
parallel key in one layer (a replay intervention, so only that layer's scores move
directly). Per head of that layer, M2's parallel coefficient must move by exactly
``delta``: the scores the metric reads are the biased ones, so any slippage — labels
misaligned with key slots, sinks applied to the wrong slots, a design that does not
isolate the parallel term — shows up as a difference. The shift of the primary metric
(over every layer and head) is reported beside it; it is smaller than log 2 because the
bias lives in one layer of many, and softmax renormalisation spreads what it moves.

The placebo, the other control, is computed per cell with the rest of the analysis
(per_cell.placebo_table); both are summarised by
:func:`attnvar.analysis.hypotheses.controls`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..engine import Capture, load_model, load_run
from ..engine.interventions import from_spec
from ..study.store import RUNS, STUDY_FILE, TABLES, replay_key
from .metrics import as_view, contrast_estimates, count_pairs, find_sinks, regression_fit

POSITIVE_DELTA = -math.log(2)
POSITIVE_TOLERANCE = 0.05
POSITIVE_SAMPLE = 8
POSITIVE_TABLE = "positive_control"
COLUMNS = ["cell_id", "prompt_id", "mode", "threshold", "layer", "delta", "n_heads",
           "m2_unbiased", "m2_biased", "m2_shift", "m2_shift_max_error", "primary_metric",
           "primary_unbiased", "primary_biased", "primary_shift", "note"]


def sample_cells(results: Path, kept: set[str], sample: int, seed: int) -> pd.DataFrame:
    """The seeded sample of generated runs the positive control uses: non-compat
    generations kept by the exclusion rule with at least one parallel step and three
    steps (so some query sees both kinds of key), ``sample`` of them at most."""
    runs = pd.read_parquet(results / TABLES / "runs.parquet")
    cand = runs[(runs["kind"] == "generate") & (runs["parallel_steps"] >= 1)
                & (runs["steps"] >= 3) & runs["run_id"].isin(kept)]
    cand = cand.sort_values("run_id").reset_index(drop=True)
    if len(cand) > sample:
        pick = np.sort(np.random.default_rng(seed).choice(len(cand), sample, replace=False))
        cand = cand.iloc[pick]
    return cand


def _primary(pairs, variant: str) -> float:
    return float(contrast_estimates(pairs, variant == "distance_matched").prompt_estimate)


def control_one(model, run, sinks, layer: int, delta: float, variant: str,
                sinks_excluded: bool, interventions: list | None = None) -> dict:
    """The positive control on one generated run (see the module doc). ``interventions``:
    the study's intervention condition, applied to both replays as to the study's own."""
    capture = Capture(scores=True, probabilities=False)
    condition = list(interventions or [])
    base = model.replay(run.tree, run.encoding, capture=capture, logits=False,
                        interventions=condition)
    parallel = [int(i) for i in np.flatnonzero(base.slots["is_parallel"].to_numpy())]
    hit = model.replay(run.tree, run.encoding, capture=capture, logits=False,
                       interventions=[*condition,
                                      {"layer_begin": layer, "layer_end": layer + 1,
                                       "key_slots": parallel, "delta": delta}])
    out = {}
    for name, replayed in (("unbiased", base), ("biased", hit)):
        view = as_view(replayed)
        pairs = count_pairs(view, sinks=sinks, exclude_sinks=sinks_excluded)
        beta = regression_fit(pairs)[0].coef[:, -1].reshape(len(view.layers), len(view.heads))
        out[name] = (beta[list(view.layers).index(layer)], _primary(pairs, variant))
    shift = out["biased"][0] - out["unbiased"][0]
    ok = np.isfinite(shift)
    return {"layer": layer, "delta": delta, "n_heads": int(ok.sum()),
            "m2_unbiased": float(np.mean(out["unbiased"][0][ok])) if ok.any() else math.nan,
            "m2_biased": float(np.mean(out["biased"][0][ok])) if ok.any() else math.nan,
            "m2_shift": float(np.mean(shift[ok])) if ok.any() else math.nan,
            "m2_shift_max_error": float(np.max(np.abs(shift[ok] - delta))) if ok.any()
            else math.nan,
            "primary_unbiased": out["unbiased"][1], "primary_biased": out["biased"][1],
            "primary_shift": out["biased"][1] - out["unbiased"][1], "note": ""}


def positive_control(results: str | Path, kept: set[str], model_path: str | None,
                     variant: str = "distance_matched", sinks_excluded: bool = True,
                     sample: int = POSITIVE_SAMPLE, seed: int = 0,
                     delta: float = POSITIVE_DELTA) -> pd.DataFrame:
    """Run the positive control on a seeded sample of the study's runs (``kept``: the
    generated runs the exclusion rule keeps). The layer is the model's middle one. A
    model that cannot be loaded gives one row whose ``note`` says why."""
    results = Path(results)
    cells = sample_cells(results, kept, sample, seed)
    if cells.empty:
        return pd.DataFrame(columns=COLUMNS)
    try:
        model = load_model(model_path)
    except (OSError, ValueError, RuntimeError) as e:
        return pd.DataFrame([{**{c: math.nan for c in COLUMNS}, "cell_id": "",
                              "note": f"not run: the model could not be loaded ({e})"}],
                            columns=COLUMNS)
    layer = model.num_layers // 2
    study_file = results / STUDY_FILE
    described = json.loads(study_file.read_text()) if study_file.exists() else {}
    cap = described.get("capture")
    top_capture = Capture(**cap) if cap else Capture()
    # The study's one intervention condition (a grid of several is not analysed).
    conditions = described.get("interventions") or [[]]
    condition = [from_spec(d, f"{STUDY_FILE} interventions[0][{i}]")
                 for i, d in enumerate(conditions[0])]
    rows = []
    for r in cells.itertuples(index=False):
        run = load_run(results / RUNS / r.run_id)
        # The sinks the cell's analysis used, from its top_only replay — replayed here
        # (bit for bit the stored one) rather than read, so that a study that kept no
        # captures has its positive control too. A study without top_only replays used
        # the first slot (sinks None).
        has_top = (results / RUNS / replay_key(r.run_id, "top_only") / "run.json").exists()
        sinks = find_sinks(as_view(model.replay(run.tree, "top_only", capture=top_capture,
                                                logits=False, interventions=condition))
                           ) if has_top else None
        rows.append({"cell_id": r.run_id, "prompt_id": r.prompt_id, "mode": r.mode,
                     "threshold": r.threshold, "primary_metric": f"M1 {variant}",
                     **control_one(model, run, sinks, layer, delta, variant, sinks_excluded,
                                   condition)})
    return pd.DataFrame(rows, columns=COLUMNS)


__all__ = ["POSITIVE_DELTA", "POSITIVE_SAMPLE", "POSITIVE_TABLE", "POSITIVE_TOLERANCE",
           "control_one", "positive_control", "sample_cells"]
