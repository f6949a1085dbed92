"""Metrics on real runs of a tiny random model: the view of a run, sinks carried across
encodings, the compat preset's visibility, the analyze() table, token covariates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnvar
import attnvar.metrics as am

pytest.importorskip("transformers")

from tiny_models import tiny_llama_model  # noqa: E402

PROMPT = [1, 17, 42, 9, 33]


@pytest.fixture(scope="module")
def model():
    return tiny_llama_model(seed=11)


@pytest.fixture(scope="module")
def generated(model):
    run = model.generate(PROMPT, threshold=0.04, max_steps=8, mode="isolated",
                         capture=attnvar.Capture(scores=True))
    assert sum(len(s.members) >= 2 for s in run.tree.steps) >= 2
    return run


def test_counted_pairs_of_a_run_match_its_tidy_frame(generated):
    """The counting rules read through the run's own long table (Run.to_frame)."""
    pairs = am.count_pairs(generated)
    table = generated.to_frame("scores")
    kept = table[(table.key_step >= 0) & (table.query_step > table.key_step)]
    q_index = {int(s): i for i, s in enumerate(pairs.query_slots)}
    k_index = {int(s): i for i, s in enumerate(pairs.key_slots)}
    for layer in range(pairs.shape[0]):
        for head in range(pairs.shape[1]):
            sub = kept[(kept.layer == layer) & (kept["head"] == head)]
            expected = {(q_index[q], k_index[k]) for q, k in zip(sub["query"], sub["key"],
                                                                strict=True)}
            got = set(zip(*np.nonzero(pairs.include[layer, head].numpy()), strict=True))
            assert got == expected
    values = pairs.values("scores")[0, 0].numpy()
    sub = kept[(kept.layer == 0) & (kept["head"] == 0)]
    for q, k, v, d in zip(sub["query"], sub["key"], sub["value"], sub["distance"],
                          strict=True):
        assert values[q_index[q], k_index[k]] == pytest.approx(v, abs=1e-6)
        assert pairs.distance[q_index[q], k_index[k]] == d


def test_sinks_found_on_top_only_apply_to_the_generated_encoding(model, generated):
    top = model.replay(generated.tree, "top_only", capture=attnvar.Capture())
    sinks = am.find_sinks(top, threshold=0.15)
    assert sinks.mask[:, :, 1:].any(), "threshold too high for the test"
    mask = sinks.mask_for(am.as_view(generated))
    top_view, gen_view = am.as_view(top), am.as_view(generated)
    top_slot = {key: i for i, key in enumerate(top_view.member_keys)}
    for slot, key in enumerate(gen_view.member_keys):
        if key in top_slot:  # prompt slots and rank-0 members: the same key
            assert np.array_equal(mask[:, :, slot], sinks.mask[:, :, top_slot[key]])
        else:  # members the top_only run lacks are never sinks
            assert not mask[:, :, slot].any()
    assert mask[:, :, 0].all()
    # Excluding them removes exactly those keys from the counted pairs, per head.
    kept = am.count_pairs(generated, sinks=sinks)
    free = am.count_pairs(generated, sinks=sinks, exclude_sinks=False)
    removed = (free.include & ~kept.include).any(2)  # (layer, head, key)
    assert np.array_equal(removed.numpy(), mask[:, :, kept.key_slots] & free.include.any(2).numpy())


@pytest.mark.parametrize("bug", [False, True])
def test_compat_view_rebuilds_the_preset_visibility(model, bug):
    run = model.tempo2025(PROMPT, threshold=0.05, max_steps=7, emulate_isolation_bug=bug,
                          capture=attnvar.Capture(scores=True))
    view = am.as_view(run)
    finite = torch.isfinite(run.scores[0, 0]).numpy()
    assert np.array_equal(view.visibility, finite)
    assert view.step[len(run.tree.prompt)] == -1  # the duplicated prompt token
    assert view.printed_set_starts == list(attnvar._core.printed_set_starts(run.tree))


def test_analyze_reports_every_metric_with_and_without_sink_exclusion(model, generated):
    top = model.replay(generated.tree, "top_only", capture=attnvar.Capture())
    table = am.analyze(generated, sinks=am.find_sinks(top), prompt="tiny-1")
    assert list(table.columns[: len(am.COLUMNS)]) == list(am.COLUMNS)
    combos = set(zip(table.metric, table.variant, table.sinks_excluded, strict=True))
    expected = {("M0", "legacy", False)}
    for excl in (True, False):
        expected |= {("M0", "corrected", excl), ("M1", "plain", excl),
                     ("M1", "distance_matched", excl), ("M1m", "raw", excl),
                     ("M1m", "size_matched", excl), ("M1p", "position", excl),
                     ("M1p", "position_minus_log_k", excl), ("M2", "per_head", excl),
                     ("M2", "pooled", excl)}
    assert combos == expected
    assert (table.prompt == "tiny-1").all() and (table.encoding == "shared_isolated").all()
    log = table[(table.scale == "log") & np.isfinite(table.estimate)]
    assert np.allclose(log.effect_pct, 100 * (1 - np.exp(log.estimate)))
    assert np.allclose(log.ratio, np.exp(log.estimate))
    ok = log[np.isfinite(log.se)]
    assert (ok.effect_pct_low <= ok.effect_pct + 1e-9).all()
    assert (ok.effect_pct <= ok.effect_pct_high + 1e-9).all()
    # One row per captured (layer, head) plus the prompt row, per variant.
    heads = generated.scores.shape[0] * generated.scores.shape[1]
    m1 = table[(table.metric == "M1") & (table.variant == "plain") & table.sinks_excluded]
    assert len(m1) == heads + 1 and (m1.layer == -1).sum() == 1


@pytest.mark.parametrize("piece,previous,expected", [
    (" cat", " the", "word_initial"),
    ("The", None, "word_initial"),
    ("The", "\n", "word_initial"),
    ("ing", " walk", "continuation"),
    ("'s", " cat", "continuation"),
    ("14", ".", "continuation"),
    ("Hello", '"', "word_initial"),
    (".", " cat", "punctuation"),
    (" —", " cat", "punctuation"),
    ("  ", " cat", "punctuation"),
    ("\n", ".", "newline"),
    (".\n\n", ".", "newline"),
    ("<|im_end|>", ".", "special"),
    ("<0xE2>", " a", "special"),
    ("", " a", "special"),
])
def test_piece_types(piece, previous, expected):
    assert am.piece_type(piece, previous) == expected


def test_token_covariates_of_a_view():
    pytest.importorskip("wordfreq")
    view = am.CaptureView(
        layers=[0], heads=[0], scores=None, attention=None,
        step=np.array([-1, -1, 0, 0, 1, 2]), rank=np.array([-1, -1, 0, 1, 0, 0]),
        position=np.array([0, 1, 2, 2, 3, 4], dtype=float),
        is_parallel=np.array([False, False, True, True, False, False]),
        set_width=np.array([1, 1, 2, 2, 1, 1]),
        probability=np.array([np.nan, np.nan, 0.6, 0.3, 0.9, 0.8]),
        visibility=np.tril(np.ones((6, 6), dtype=bool)), prompt_length=2,
        token_id=np.arange(6), pieces=["The", " cat", " sat", " of", "ting", "."])
    cov = am.token_covariates(view)
    assert list(cov.piece_type) == ["word_initial"] * 4 + ["continuation", "punctuation"]
    assert list(cov.closed_class) == [True, False, False, True, False, False]
    # " of" (rank 1 of step 0) and "ting" (step 1) both follow " sat", the printed rank 0.
    assert cov.zipf[3] > cov.zipf[1] > cov.zipf[2] > 0 and cov.zipf[4] == 0
    assert list(cov.sibling_rank) == [-1, -1, 0, 1, 0, 0]
    assert math.isnan(cov.probability[0]) and cov.probability[3] == 0.3
    x, names = am.covariates.covariate_matrix(cov)
    assert names[:4] == ["piece_type[continuation]", "piece_type[punctuation]",
                         "piece_type[newline]", "piece_type[special]"]
    assert x.shape == (6, 8) and x[4, 0] == 1 and x[5, 1] == 1
