"""The per-cell analysis in one pass (metrics/single_pass.py, issue 21) against the
metric and profile functions called one by one, as the analysis called them before.

The single pass computes most numbers another way than the public functions: per-query
sums as products with per-head key weights, both sink rules at once, log-sum-exps from
one exponentiated grid, every distance-matched fit from per-step sums of shared head
groups, the truncations as prefixes of those sums, the placebo from key-level sums. The
two must agree to 1e-10 (sums in another order differ by ~1e-15) on every column,
dtype and row of every table.

Runs come from a tiny random model (always) and from the bundled model (when
installed); sink patterns are also drawn at random, so that heads fall in several
groups, some of them sharing the pattern of the rule without exclusion.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

import attnvar
from attnvar.analysis import per_cell
from attnvar.analysis.metrics import Sinks, analyze, as_view, count_pairs, find_sinks
from attnvar.analysis.metrics.profiles import (
    class_contrasts,
    distance_profile,
    step_profile,
    truncated_contrasts,
)
from attnvar.analysis.metrics.regression import logit_regression
from attnvar.analysis.metrics.single_pass import RunPass, metrics_frame
from attnvar.analysis.toy_null import toy_view
from attnvar.study import degeneracy
from attnvar.study.degeneracy import ExclusionRule

pytest.importorskip("transformers")

from tiny_models import tiny_llama_model  # noqa: E402

TOL = dict(check_exact=False, rtol=1e-10, atol=1e-10)
PROMPT = [1, 17, 42, 9, 33]


def reference_cell(generated, replays, rule, prompt_id, cell_id, plan):
    """analyze_cell as the metric functions give it, each called on its own, with and
    without the sink exclusion (the per-cell analysis before the single pass)."""
    out = {name: [] for name in per_cell.TABLE_NAMES}
    analysable = len(generated.tree.steps) >= 2
    top = as_view(replays["top_only"]) if analysable and "top_only" in replays else None
    sinks = find_sinks(top) if top is not None else None
    runs = [("generated", generated)] + [(e, r) for e, r in sorted(replays.items())
                                         if e != "top_only"]

    def tag(frame, source):
        frame.insert(0, "cell_id", cell_id)
        frame.insert(1, "source", source)
        return frame

    for source, run in (runs if analysable else []):
        view = as_view(run)
        table = analyze(view, sinks=sinks, prompt=prompt_id, top_only=top)
        keep = (table["layer"] < 0) | table["metric"].isin(["M1", "M2"])
        out["metrics"].append(tag(table[keep].reset_index(drop=True), source))
        pairs = count_pairs(view, sinks=sinks, exclude_sinks=True)
        out["steps"].append(tag(step_profile(pairs), source))
        out["truncated"].append(tag(truncated_contrasts(pairs), source))
        out["classes"].append(tag(class_contrasts(pairs), source))
        out["distance"].append(tag(distance_profile(pairs), source))
        if source == "generated":
            terms = logit_regression(pairs, terms="all", prompt=prompt_id)
            out["terms"].append(tag(terms[terms["layer"] < 0].reset_index(drop=True), source))
    if top is not None:
        out["placebo"].append(per_cell.placebo_table(generated, top, plan, cell_id))
    flags = degeneracy.flags(generated, rule.thresholds())
    out["degeneracy"].append(pd.DataFrame([{
        "cell_id": cell_id, "analysable": analysable, **degeneracy.metrics(generated),
        **{f"flag_{k}": v for k, v in flags.items()}, "excluded": rule.excludes(flags)}]))
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in out.items()}


def assert_tables_equal(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], obj=name, **TOL)


def random_sinks(view, seed: int, patterns: int = 3) -> Sinks:
    """Sinks drawn at random: ``patterns`` sets of generated keys (one of them empty),
    each head given one, so that several heads share each pattern. One non-parallel
    key is never a sink (the tiny model's runs have few: each query keeps an N set)."""
    rng = np.random.default_rng(seed)
    L, H, N = len(view.layers), len(view.heads), view.num_slots
    generated = np.flatnonzero(view.step >= 0)
    single = generated[~view.is_parallel[generated]]
    generated = generated[generated != (single[0] if len(single) else -1)]
    sets = [np.zeros(N, dtype=bool)]
    for _ in range(patterns - 1):
        chosen = np.zeros(N, dtype=bool)
        chosen[rng.choice(generated, size=max(1, len(generated) // 5), replace=False)] = True
        sets.append(chosen)
    mask = np.stack([sets[i] for i in rng.integers(0, patterns, L * H)]).reshape(L, H, N)
    mask[:, :, 0] = True
    return Sinks(list(view.layers), list(view.heads), list(view.member_keys), mask)


@pytest.fixture(scope="module")
def model():
    return tiny_llama_model(seed=11)


@pytest.fixture(scope="module")
def cells(model):
    """Two cells (isolated and visible) with serial and top_only replays; the first
    captures value norms (M3)."""
    out = []
    for mode, norms in (("isolated", True), ("visible", False)):
        run = model.generate(PROMPT, threshold=0.06, max_steps=9, mode=mode,
                             capture=attnvar.Capture(scores=True, value_norms=norms))
        assert sum(len(s.members) >= 2 for s in run.tree.steps) >= 2
        replays = {e: model.replay(run.tree, e, capture=attnvar.Capture(scores=True))
                   for e in ("serial", "top_only")}
        out.append((run, replays))
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("which", [0, 1])
def test_one_pass_gives_every_metric_and_profile_of_the_functions(cells, which, seed):
    """RunPass against analyze() (every row, per-head rows of every metric included)
    and the profile functions, under random sink patterns, on the generated run and its
    serial replay."""
    generated, replays = cells[which]
    top = as_view(replays["top_only"])
    for run in (generated, replays["serial"]):
        view = as_view(run)
        sinks = random_sinks(view, seed)
        one = RunPass(view, sinks)
        assert len(one.groups) >= 2  # the draw gave the heads several patterns
        got = metrics_frame(one.metric_parts(top), prompt="p", kind=view.kind,
                            encoding=view.encoding)
        want = analyze(view, sinks=sinks, prompt="p", top_only=top)
        assert set(want["metric"]) >= {"M0", "M1", "M1m", "M1p", "M2", "M4"}
        pd.testing.assert_frame_equal(got, want, obj="metrics", **TOL)
        pairs = count_pairs(view, sinks=sinks)
        for name, a, b in (("steps", one.steps_frame(), step_profile(pairs)),
                           ("truncated", one.truncated_frame(), truncated_contrasts(pairs)),
                           ("classes", one.classes_frame(), class_contrasts(pairs)),
                           ("distance", one.distance_frame(), distance_profile(pairs))):
            assert len(b), name
            pd.testing.assert_frame_equal(a, b, obj=name, **TOL)
        terms = metrics_frame([(one.terms_blocks(), True)], prompt="p", kind=view.kind,
                              encoding=view.encoding)
        pd.testing.assert_frame_equal(terms, logit_regression(pairs, terms="all", prompt="p"),
                                      obj="terms", **TOL)


def test_a_key_far_above_the_others_falls_back_to_log_sum_exps():
    """A key 1,000 nats above the rest: exp(s − row max) underflows for every other
    key of its rows, so the pass takes M1m raw and M1p from the log-sum-exp kernels;
    its sink rule (left out by two heads) and the rule without it still agree with
    analyze()."""
    view = toy_view(np.random.default_rng(3), layers=2, heads=3, steps=12)
    j = int(np.flatnonzero(view.step == 2)[0])
    scores = view.scores.clone()
    scores[0, 0, :, j] += 1000.0
    view = dataclasses.replace(view, scores=scores, attention=torch.softmax(scores, -1))
    mask = np.zeros((2, 3, view.num_slots), dtype=bool)
    mask[:, :, 0] = True
    mask[0, 0, j] = mask[1, 2, j] = True
    sinks = Sinks([0, 1], [0, 1, 2], list(view.member_keys), mask)
    got = metrics_frame(RunPass(view, sinks).metric_parts(), prompt="p", kind=view.kind,
                        encoding=view.encoding)
    want = analyze(view, sinks=sinks, prompt="p")
    raw = want[(want["metric"] == "M1m") & (want["variant"] == "raw")]
    assert np.isfinite(raw["estimate"]).all()
    pd.testing.assert_frame_equal(got, want, obj="metrics", **TOL)


def test_analyze_cell_equals_the_functions_one_by_one(cells):
    """Every table of analyze_cell: with value norms (M3) or without, without a top_only
    replay (no sinks, M4 or placebo), and for a run of one step (nothing analysable)."""
    rule = ExclusionRule()
    plan = per_cell.PlaceboPlan(draws=50)
    for i, (generated, replays) in enumerate(cells):
        args = (generated, replays, rule, "p", f"cell{i}", plan)
        got = per_cell.analyze_cell(*args)
        assert_tables_equal(got, reference_cell(*args))
        if i == 0:
            assert "M3" in set(got["metrics"]["metric"])
            assert len(got["placebo"]) == 50
    generated, replays = cells[1]
    serial_only = {"serial": replays["serial"]}
    args = (generated, serial_only, rule, "p", "no_top", plan)
    got = per_cell.analyze_cell(*args)
    assert not got["placebo"].size and "M4" not in set(got["metrics"]["metric"])
    assert_tables_equal(got, reference_cell(*args))


def test_a_run_of_one_step_has_only_its_degeneracy_row(model):
    run = model.generate(PROMPT, threshold=0.04, max_steps=1,
                         capture=attnvar.Capture(scores=True))
    replays = {e: model.replay(run.tree, e, capture=attnvar.Capture(scores=True))
               for e in ("serial", "top_only")}
    args = (run, replays, ExclusionRule(), "p", "short", per_cell.PlaceboPlan(draws=5))
    got = per_cell.analyze_cell(*args)
    assert len(got["degeneracy"]) == 1 and not bool(got["degeneracy"]["analysable"][0])
    assert all(got[name].empty for name in per_cell.TABLE_NAMES if name != "degeneracy")
    assert_tables_equal(got, reference_cell(*args))


def test_a_cell_of_the_bundled_model(bundled_path):
    """Real tokens (every token class), the sinks a real top_only replay has."""
    model = attnvar.load_model(bundled_path)
    run = model.generate("The old lighthouse keeper climbed the stairs and", threshold=0.1,
                         max_steps=10, capture=attnvar.Capture(scores=True))
    replays = {e: model.replay(run.tree, e, capture=attnvar.Capture(scores=True))
               for e in ("serial", "top_only")}
    args = (run, replays, ExclusionRule(), "p", "bundled", per_cell.PlaceboPlan(draws=200))
    got = per_cell.analyze_cell(*args)
    assert got["classes"]["estimate"].notna().any()
    assert_tables_equal(got, reference_cell(*args))
