"""One source of layout truth: every run carries the visibility the engine applied, and
Run.to_frame, the metrics' view and the plots all read it — the compat preset's emulated
isolation bug included. The engine's mask is read back from the capture: a pre-softmax
score is -inf exactly where the engine hid the key."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import attnvar
import attnvar.metrics as am
from attnvar.engine.run_store import EXTRAS_FILE
from attnvar.engine.visibility import applied_visibility
from attnvar.report import plots

pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402
from tiny_models import tiny_llama_model  # noqa: E402

PROMPT = [1, 17, 42, 9, 33]


@pytest.fixture(scope="module")
def model():
    return tiny_llama_model(seed=11)


@pytest.fixture(scope="module")
def bug_run(model):
    run = model.tempo2025(PROMPT, threshold=0.05, max_steps=7, emulate_isolation_bug=True,
                          capture=attnvar.Capture(scores=True))
    causal = torch.tril(torch.ones(run.num_slots, run.num_slots, dtype=torch.bool))
    assert (run.visibility != causal).any(), "the emulated bug hid nothing: widen the sets"
    return run


def engine_mask(run) -> np.ndarray:
    """[L, H, N, N]: where the engine let a query see a key (its score is finite)."""
    return torch.isfinite(run.scores).numpy()


def test_to_frame_visible_equals_the_engine_mask_row_by_row(bug_run):
    frame = bug_run.to_frame("scores", include_masked=True)
    n = bug_run.num_slots
    applied = engine_mask(bug_run)
    for (layer, head), sub in frame.groupby(["layer", "head"]):
        visible = np.zeros((n, n), dtype=bool)
        visible[sub["query"], sub["key"]] = sub["visible"]
        for q in range(n):
            assert np.array_equal(visible[q], applied[layer, head, q]), (layer, head, q)
    # Without include_masked, exactly the visible pairs, and nothing masked leaks in.
    shown = bug_run.to_frame("scores")
    assert shown["visible"].all() and np.isfinite(shown["value"]).all()
    assert len(shown) == int(applied.sum())


def test_every_consumer_reads_the_same_mask(bug_run):
    vis = bug_run.visibility.numpy()
    assert np.array_equal(vis, engine_mask(bug_run)[0, 0])
    assert np.array_equal(am.as_view(bug_run).visibility, vis)
    assert np.array_equal(plots._visibility(bug_run), vis)
    # Each fed query's row is the engine's own row function's.
    for q in range(bug_run.tree.prompt_length, bug_run.num_slots):
        row = attnvar._core.tempo_bug_visibility(bug_run.tree, q).numpy()[0]
        assert np.array_equal(vis[q, : q + 1], row) and not vis[q, q + 1:].any()


def test_to_frame_with_steps_leaves_the_run_mask_alone(bug_run):
    before = bug_run.visibility.clone()
    bug_run.to_frame("scores", steps=[0])
    assert torch.equal(bug_run.visibility, before)


@pytest.mark.parametrize("stored", [True, False])
def test_saved_runs_keep_it_and_older_saves_get_it_rebuilt(bug_run, tmp_path, stored):
    bug_run.save(tmp_path / "run")
    if not stored:  # a compat run saved before runs carried their visibility
        extras = load_file(str(tmp_path / "run" / EXTRAS_FILE))
        del extras["visibility"]
        if extras:
            save_file(extras, str(tmp_path / "run" / EXTRAS_FILE))
        else:
            (tmp_path / "run" / EXTRAS_FILE).unlink()
        # Saved before runs recorded checksums too: run.json names no extras checksum.
        meta = json.loads((tmp_path / "run" / "run.json").read_text())
        meta.pop("extras_sha256", None)
        (tmp_path / "run" / "run.json").write_text(json.dumps(meta))
    loaded = attnvar.load_run(tmp_path / "run")
    assert torch.equal(loaded.visibility, bug_run.visibility)
    assert np.array_equal(am.as_view(loaded).visibility, bug_run.visibility.numpy())


def test_generated_and_replayed_runs_carry_their_layout(model):
    gen = model.generate(PROMPT, threshold=0.04, max_steps=6, mode="isolated",
                         capture=attnvar.Capture(scores=True))
    assert sum(len(s.members) >= 2 for s in gen.tree.steps) >= 1
    for run in (gen, model.replay(gen, "shared_visible", capture=attnvar.Capture(scores=True)),
                model.replay(gen, "serial", capture=attnvar.Capture(scores=True))):
        assert torch.equal(run.visibility,
                           attnvar._core.encode(run.tree, run.encoding).visibility)
        assert np.array_equal(run.visibility.numpy(), engine_mask(run)[0, 0])


def test_a_slot_table_that_does_not_fit_the_layout_is_refused(model):
    gen = model.generate(PROMPT, threshold=0.04, max_steps=3)
    with pytest.raises(ValueError, match="slots"):
        applied_visibility("generate", gen.encoding, gen.tree, gen.num_slots + 1, {})
