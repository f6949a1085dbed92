"""The per-cell analysis's shortcuts give what the plain ways give, bit for bit.

- a saved run is viewed (``as_view``: value norms, scores, attention) reading each pass
  file once, and its tensors equal the in-memory run's and the field-by-field reads;
  reading the scores alone computes no softmax; a pass's dense fields come as one block;
- a run's slot table and columns keep their values and dtypes;
- the placebo's label draws, made at once, are the rows of ``rng.choice`` called draw by
  draw, and leave the generator where those calls leave it;
- the token classes come from the view's cached covariates without a copy, the same
  masks as from the covariate table;
- the within-query solver's fused column selection keeps the columns and inverse of
  select_columns and spd_inverse; fits collected without the pooled fit keep every
  per-head number;
- frame columns filled from scalars and arrays are those of a broadcast copy.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import attnvar
from attnvar.analysis.metrics import as_view, count_pairs, covariates, fixed_effects, frames
from attnvar.analysis.metrics.placebo import _floyd_rows, choice_rows
from attnvar.analysis.metrics.profiles import key_classes
from attnvar.engine import load_run, records
from attnvar.engine.records import attention_of

pytest.importorskip("transformers")

from tiny_models import tiny_llama_model  # noqa: E402

PROMPT = [1, 17, 42, 9, 33]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A generation with value norms and two replays, in memory and saved."""
    model = tiny_llama_model(seed=5)
    run = model.generate(PROMPT, threshold=0.06, max_steps=7, mode="visible",
                         capture=attnvar.Capture(scores=True, value_norms=True))
    runs = {"generate": run}
    for e in ("serial", "top_only"):
        runs[e] = model.replay(run.tree, e, capture=attnvar.Capture(scores=True))
    root = tmp_path_factory.mktemp("runs")
    for name, r in runs.items():
        r.save(root / name)
    return runs, root


def _count(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args[0] if args else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_view_reads_each_pass_file_once_and_equals_the_run(saved, monkeypatch):
    runs, root = saved
    for name, run in runs.items():
        loaded = load_run(root / name)
        reads = _count(monkeypatch, records, "load_tensors")
        view = as_view(loaded)
        monkeypatch.undo()
        assert sorted(reads) == sorted(p.source for p in loaded.passes), name
        assert torch.equal(view.scores, run.scores.float())
        assert torch.equal(view.attention, run.attention.float())
        if name == "generate":
            assert torch.equal(view.value_norms, run.value_norms.float())
        else:
            assert view.value_norms is None
        # The fields read one at a time, from a fresh load, are the same tensors.
        again = load_run(root / name)
        assert torch.equal(again.attention, view.attention)
        assert torch.equal(again.scores, view.scores)


def test_scores_alone_compute_no_softmax_and_blocks_are_the_layers(saved, monkeypatch):
    runs, root = saved
    loaded = load_run(root / "serial")
    softmax = _count(monkeypatch, records, "attention_of")
    assert torch.equal(loaded.scores, runs["serial"].scores)
    assert softmax == []
    monkeypatch.undo()
    for p in loaded.passes:
        for field in ("scores", "attention"):
            block = p.block(field)
            layers = getattr(p, field)
            assert block is not None and torch.equal(block, torch.stack(layers)), field
        # Each layer's attention is the softmax of its scores computed alone.
        for s, a in zip(p.scores, p.attention, strict=True):
            assert torch.equal(a, attention_of(s))
        p.release()
        assert p.block("scores") is not None  # reloaded on access


def test_a_missing_field_reads_as_none_and_a_bad_file_raises_for_each_field(saved,
                                                                             tmp_path):
    runs, root = saved
    view = as_view(load_run(root / "top_only"))
    assert view.value_norms is None and view.scores is not None
    bad = tmp_path / "bad"
    shutil.copytree(root / "serial", bad)
    path = load_run(bad).passes[-1].source
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    for field in ("scores", "attention"):
        with pytest.raises(attnvar.FormatError):
            getattr(load_run(bad), field)
    view = as_view(load_run(bad))
    assert view.scores is None and view.attention is None


def test_the_slot_table_keeps_its_values_and_dtypes(saved):
    runs, _ = saved
    for run in runs.values():
        rows = []
        for i, s in enumerate(run.slot_records):
            step = s["step"]
            member = run.tree.steps[step].members[s["member"]] if s["member"] >= 0 else None
            width = len(run.tree.steps[step].members) if member is not None else 1
            rows.append({"slot": i, "step": step,
                         "rank": member.rank if member is not None else -1,
                         "token_id": s["token_id"], "piece": run.pieces.get(s["token_id"], ""),
                         "position": s["position"], "is_prompt": step < 0,
                         "is_parallel": member is not None and width >= 2,
                         "probability": member.probability if member is not None
                         else float("nan"), "set_width": width})
        want = pd.DataFrame(rows).set_index("slot")
        pd.testing.assert_frame_equal(run.slots, want, check_exact=True)


@pytest.mark.parametrize("population", [1, 2, 5, 13, 40, 9999])
def test_label_draws_at_once_are_rng_choice_draw_by_draw(population):
    for size in sorted({0, 1, population // 2, population}):
        for draws in (0, 1, 3, 200):
            seed = [population, size, draws]
            want_rng = np.random.default_rng(seed)
            want = np.array([want_rng.choice(population, size=size, replace=False)
                             for _ in range(draws)], dtype=np.int64).reshape(draws, size)
            for fn in (choice_rows, _floyd_rows):
                if fn is _floyd_rows and (not draws or not size):
                    continue
                rng = np.random.default_rng(seed)
                got = fn(rng, population, size, draws)
                assert got.dtype == np.int64 and np.array_equal(got, want), fn.__name__
                assert rng.bit_generator.state == want_rng.bit_generator.state


def test_label_draws_beyond_floyd_sampling_call_rng_choice():
    rng, want_rng = np.random.default_rng(1), np.random.default_rng(1)
    got = choice_rows(rng, 20001, 1000, 2)
    want = np.array([want_rng.choice(20001, size=1000, replace=False) for _ in range(2)])
    assert np.array_equal(got, want)


def test_key_classes_read_the_cached_covariates_without_copying(saved):
    runs, _ = saved
    view = as_view(runs["generate"])
    pairs = count_pairs(view)
    got = key_classes(pairs)
    cov = covariates.token_covariates(view).iloc[pairs.key_slots]
    types = cov["piece_type"].astype(str).to_numpy()
    initial = types == "word_initial"
    closed = cov["closed_class"].to_numpy(dtype=bool)
    rank = cov["sibling_rank"].to_numpy()
    want = {f"piece:{t}": types == t for t in covariates.PIECE_TYPES}
    want["word:closed_class"] = initial & closed
    want["word:open_class"] = initial & ~closed
    want["rank:0"] = rank <= 0
    want["rank:1plus"] = (rank >= 1) | ~pairs.key_parallel
    assert list(got) == list(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    # token_covariates hands out a copy: changing it leaves the view's own table alone.
    copy = covariates.token_covariates(view)
    copy["zipf"] = -1.0
    assert (covariates.cached_covariates(view)["zipf"] != -1.0).all()


def _reference_solution(gram):
    kept = fixed_effects.select_columns(gram)
    inv = fixed_effects.spd_inverse(gram[np.ix_(kept, kept)]) if kept else None
    return kept, inv


def test_the_fused_column_selection_is_select_columns_and_spd_inverse():
    rng = np.random.default_rng(3)
    for trial in range(300):
        n, p = 40, int(rng.integers(1, 9))
        x = rng.standard_normal((n, p))
        for j in range(p):  # zero, duplicated and combined columns
            kind = rng.integers(5)
            if kind == 0:
                x[:, j] = 0.0
            elif kind == 1 and j:
                x[:, j] = x[:, rng.integers(j)]
            elif kind == 2 and j > 1:
                x[:, j] = x[:, 0] - 2.0 * x[:, 1]
        gram = x.T @ x
        kept, inv = _reference_solution(gram)
        xty = rng.standard_normal((3, p))
        sol = fixed_effects.solve_within(gram, xty, rng.random(3) + 10.0, n, 5)
        assert sol.kept == kept, trial
        if kept:
            assert np.array_equal(sol.inv, inv), trial
            coef = np.full((3, p), np.nan)
            coef[:, kept] = xty[:, kept] @ inv
            assert np.array_equal(sol.coef, coef, equal_nan=True), trial


def test_fits_collected_without_the_pooled_fit_keep_every_head():
    rng = np.random.default_rng(4)
    y = torch.from_numpy(rng.standard_normal((6, 5, 7)))
    w = torch.from_numpy(rng.random((6, 5, 7)) > 0.3)
    x = torch.from_numpy(rng.standard_normal((5, 7, 3)))
    patterns, group = fixed_effects.head_patterns(w)
    groups = fixed_effects.pair_groups(
        y, [patterns[g].reshape(5, 7) for g in range(patterns.shape[0])],
        [torch.nonzero(group == g).flatten().numpy() for g in range(patterns.shape[0])])
    parts = [(fixed_effects.fit_group(g, g.demean(x)), g.heads) for g in groups]
    full = fixed_effects.collect_fits(parts, 6, 3)
    lean = fixed_effects.collect_fits(parts, 6, 3, pooled=False)
    for name in ("coef", "se", "df", "n_pairs", "n_queries"):
        assert np.array_equal(getattr(full, name), getattr(lean, name), equal_nan=True)
    assert np.isfinite(full.pooled_coef).any()
    assert np.isnan(lean.pooled_coef).all() and np.isnan(lean.pooled_df)


def test_block_columns_from_scalars_and_arrays():
    est = np.array([0.1, -0.2, 0.3])
    b = frames.block("M1", "plain", np.array([0, 1, 2]), 5, est, np.array([0.5]),
                     n_queries=np.int64(4), n_pairs=[1, 2, 3], extra_value=2)
    want = {"metric": np.array(["M1"] * 3, dtype=object), "layer": np.array([0, 1, 2]),
            "head": np.full(3, 5), "se": np.full(3, 0.5), "n_queries": np.full(3, 4),
            "n_pairs": np.array([1, 2, 3]), "extra_value": np.full(3, 2.0)}
    for name, values in want.items():
        assert b[name].dtype == values.dtype and np.array_equal(b[name], values), name
        assert b[name].flags.writeable and b[name].flags.owndata, name
