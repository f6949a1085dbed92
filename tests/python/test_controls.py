"""The report's controls and the rule that keeps complete prompts from ending at once.

- the placebo's one-projection-per-draw estimator equals a fit per draw;
- the positive control, on a small study of the bundled model, moves M2 by −log 2 in the
  injected layer and passes; a failed control withholds every verdict of the summary;
- ``min_new_steps``: a prompt the model ends at once goes on, its first steps select from
  q_t renormalised without EOS (q_t as recorded unchanged), and the study records it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import attnvar
from attnvar import hypotheses, prompts
from attnvar.analysis.hypotheses.controls import controls, placebo_summary
from attnvar.analysis.metrics.placebo import matched_under_labels, placebo_labels_matrix
from attnvar.analysis.per_cell import PLACEBO_DRAWS
from attnvar.analysis.toy_null import toy_view
from attnvar.metrics import contrast_estimates, count_pairs
from attnvar.report import document
from attnvar.study import Study

# A prompt the bundled model answers with EOS at once (θ 0.1 and 0.2, both modes).
ENDS_AT_ONCE = "instructions_01"


def test_placebo_projection_equals_a_fit_per_draw():
    view = toy_view(np.random.default_rng(7), steps=16, heads=3)
    # Labels carry no structure here: the toy view's own parallel labels are replaced.
    pairs = count_pairs(view)
    labels = placebo_labels_matrix(pairs, 5, 60, np.random.default_rng(1))
    assert (labels.sum(1) > 0).all()
    fast = matched_under_labels(pairs, labels)
    slow = np.array([contrast_estimates(dataclasses.replace(pairs, key_parallel=row),
                                        True).prompt_estimate for row in labels])
    diff = np.nanmax(np.abs(fast - slow))
    print(f"placebo projection vs fit per draw: max |diff| {diff:.1e} over 60 draws")
    assert np.array_equal(np.isnan(fast), np.isnan(slow)) and diff < 1e-10
    # A draw that labels nothing has no contrast.
    none = matched_under_labels(pairs, np.zeros((1, labels.shape[1]), dtype=bool))
    assert np.isnan(none).all()


def test_positive_control_recovers_the_injected_bias(small_core_study):
    res = hypotheses.load(small_core_study)
    pc = res.tables["positive_control"]
    assert len(pc) >= 4 and (pc["note"] == "").all()
    err = float((pc["m2_shift"] - pc["delta"]).abs().max())
    print(f"positive control: {len(pc)} runs, layer {int(pc['layer'].iloc[0])}, max "
          f"|Δβ − (−log 2)| {err:.1e}; primary shift {pc['primary_shift'].mean():+.4f}")
    assert err < 1e-5 and (pc["delta"] == -math.log(2)).all()
    # The primary metric moves the same way, by less: one layer of the model is biased.
    # (NaN where a short run leaves the distance-matched contrast unidentified.)
    shift = pc["primary_shift"].dropna()
    assert len(shift) >= 2 and (shift < 0).all() and (shift > -math.log(2)).all()
    t = controls(res)
    assert t.tables["positive"]["ok"].iloc[0] and not t.facts["failed"]


def test_placebo_summary_recomputed_from_the_draws(small_core_study):
    from scipy import stats as sps

    res = hypotheses.load(small_core_study)
    table = placebo_summary(res)
    draws = res.tables["placebo"].merge(res.kept_cells()[["cell_id", "prompt_id", "mode"]],
                                        on="cell_id")
    assert draws.groupby("cell_id")["draw"].nunique().min() == PLACEBO_DRAWS
    for row in table.to_dict("records"):
        wide = draws[draws["mode"] == row["mode"]].pivot_table(
            index="prompt_id", columns="draw", values="estimate")
        p = [sps.ttest_1samp(wide[d].dropna(), 0).pvalue for d in wide.columns
             if wide[d].notna().sum() >= 2]
        assert row["draws"] == len(p) >= 900
        assert row["rejections"] == int((np.array(p) < 0.05).sum())
        lo = sps.binom.ppf(0.01 / len(table) / 2, row["draws"], 0.05)
        hi = sps.binom.isf(0.01 / len(table) / 2, row["draws"], 0.05)
        assert (row["band_low"], row["band_high"]) == (lo, hi)
        assert row["ok"] == (row["rejections"] <= hi)
        assert row["reading"] == ("liberal" if row["rejections"] > hi else "conservative"
                                  if row["rejections"] < lo else "as expected")
        ci = sps.binomtest(row["rejections"], row["draws"]).proportion_ci(method="exact")
        assert abs(row["rate_low"] - ci.low) < 1e-12 and abs(row["rate_high"] - ci.high) < 1e-12


def test_a_failed_control_withholds_every_verdict(small_core_study):
    res = hypotheses.load(small_core_study)
    findings = hypotheses.run_all(res, predict=False)
    ok = document.summary_table(findings)
    assert not ok["verdict"].str.startswith("withheld").any()
    findings["controls"].facts["failed"] = ["placebo"]
    failed = document.summary_table(findings)
    assert (failed["verdict"] == document.WITHHELD_CONTROL).all()
    assert any("Control failed" in b for b in document.banners(res, findings))


# ---- complete prompts do not end at once -----------------------------------------------------
def test_min_new_steps_keeps_a_finished_prompt_going(bundled_path):
    model = attnvar.load_model(bundled_path)
    text = next(p.text for p in prompts.suite("core") if p.id == ENDS_AT_ONCE)
    plain = model.generate(text, threshold=0.1, max_steps=6, keep_distributions=True)
    assert plain.stop_reason == "eos" and len(plain.tree.steps) == 1
    kept = model.generate(text, threshold=0.1, max_steps=6, min_new_steps=4,
                          keep_distributions=True)
    assert len(kept.tree.steps) >= 4
    eos = set(model.eos_ids)
    for step in kept.tree.steps[:4]:
        assert not any(m.token_id in eos for m in step.members)
    # Step 0 selects from q_0 without EOS, renormalised; q_0 as recorded is the model's.
    q0 = kept.distributions[0].double()
    assert float((q0 - plain.distributions[0].double()).abs().max()) == 0.0
    rest = 1.0 - float(q0[list(eos)].sum())
    worst = max(abs(m.probability - float(q0[m.token_id]) / rest)
                for m in kept.tree.steps[0].members)
    print(f"min_new_steps: {len(kept.tree.steps)} steps instead of 1; step-0 member "
          f"probabilities vs q_0/(1 − q_0(EOS)): max |diff| {worst:.1e}")
    assert worst < 2e-5  # the engine renormalises with an f32 sum over the vocabulary
    assert all(m.probability >= 0.1 for m in kept.tree.steps[0].members)
    with pytest.raises(ValueError, match="min_new_steps"):
        model.generate(text, min_new_steps=-1)


def test_studies_record_the_minimum_and_compat_refuses_it():
    study = Study(prompts=["a b c"])
    assert study.min_new_steps == 4 and study.describe()["min_new_steps"] == 4
    assert all(c.min_new_steps == 4 for c in study.cells())
    zero = Study(prompts=["a b c"], min_new_steps=0)
    # 0 keeps the cell keys of studies written before the rule existed.
    assert zero.cells()[0].min_new_steps is None
    assert zero.cells()[0].key("m") != study.cells()[0].key("m")
    compat = Study(prompts=["a b c"], preset="tempo-2025")
    assert compat.min_new_steps == 0 and "min_new_steps" not in compat.describe()
    with pytest.raises(ValueError, match="min_new_steps"):
        Study(prompts=["a b c"], preset="tempo-2025", min_new_steps=2)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="min_new_steps"):
            Study(prompts=["a b c"], min_new_steps=bad)
