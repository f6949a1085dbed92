"""The compat preset's stale-mask leak (several prompts run in one process).

An isolated-mode run leaves the mask of its last pass, M_j ([S_j, S_j], printed-index
space: causal plus holes between members of S_0 … S_{T−2}); every pass of every later run
takes row clamp(c, 0, S_j − 1) of each kept mask (c: the cache slot of the pass's first
query) over keys 0 … S_j − 1, ANDed with its own mask. The engine's applied mask is read
back from the capture: a pre-softmax score is -inf exactly where a key was hidden."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import attnvar
from attnvar import _core
from attnvar.engine import MaskLeak, Model
from attnvar.engine.run_store import EXTRAS_FILE
from attnvar.engine.visibility import tempo2025_visibility

pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402
from tiny_models import attnvar_model, tiny_hf_model  # noqa: E402

A = [1, 17, 42, 9, 33]
B = [1, 60, 61, 62, 63, 64, 65, 66, 67, 68]
C = [1, 70, 71, 72, 73, 74]
SCORES = attnvar.Capture(scores=True, probabilities=True)


@pytest.fixture(scope="module")
def model():
    core = attnvar_model(tiny_hf_model("llama", seed=11))
    return Model(core, None, {"note": "tiny"}, [2], "tiny", torch.float32)


def compat(model, prompt, *, bug, steps, leak=None, capture=SCORES):
    """A compat run that never stops on EOS, so its length is known in advance."""
    return model.tempo2025(prompt, threshold=0.05, max_steps=steps, emulate_isolation_bug=bug,
                           eos_ids=[], capture=capture, mask_leak=leak)


def bools(rows: list[str]) -> torch.Tensor:
    """A bool matrix written as strings of 0/1, one row each."""
    return torch.tensor([[c == "1" for c in row] for row in rows], dtype=torch.bool)


def engine_mask(run) -> torch.Tensor:
    """[L, H, N, N]: where the engine let a query see a key (its score is finite)."""
    return torch.isfinite(run.scores)


def applied_everywhere(run, expected: torch.Tensor) -> bool:
    """The capture shows exactly ``expected`` in every layer and head."""
    return torch.equal(engine_mask(run), expected.expand_as(run.scores))


def with_leak(own: torch.Tensor, prompt_length: int, masks) -> torch.Tensor:
    """Reference: ``own`` with row clamp(c) of every kept mask ANDed into each query's row.
    The prefill's queries share c = 0; a fed slot's pass starts at its own slot."""
    vis = own.clone()
    for m in masks:
        size = m.shape[0]
        for q in range(vis.shape[0]):
            c = 0 if q < prompt_length else q
            r = min(max(c, 0), size - 1)
            keys = min(size, (prompt_length if q < prompt_length else q + 1))
            vis[q, :keys] &= m[r, :keys]
    return vis


# ---- (a) the mask a run leaves ---------------------------------------------------------

def test_the_mask_of_a_hand_reasoned_tree():
    # P = 3; recorded S_0 = {7, 8} (printed 3..4), S_1 = {9} (5), S_2 = {10, 11, 12}
    # (6..8); S_3 = {13} is the final set, never fed, not recorded: S = 3 + 2 + 1 + 3 = 9.
    tree = _core.Tree.build([1, 5, 6], [[7, 8], [9], [10, 11, 12], [13]])
    assert torch.equal(_core.tempo_leak_mask(tree), bools([
        "100000000",
        "110000000",
        "111000000",
        "111100000",
        "111010000",
        "111111000",
        "111111100",
        "111111010",
        "111111001",
    ]))
    # The final set's size never matters, even when it has several members.
    wide_last = _core.Tree.build([1, 5], [[7], [8, 9, 10]])
    assert torch.equal(_core.tempo_leak_mask(wide_last), bools(["100", "110", "111"]))
    # T = 1: the run stopped at its first set; its last pass fed the duplicate prompt
    # token, when no set was recorded: plain causal [P, P].
    first_only = _core.Tree.build([1, 5, 6, 7], [[8, 9]])
    assert torch.equal(_core.tempo_leak_mask(first_only),
                       torch.ones(4, 4, dtype=torch.bool).tril())


def test_an_isolated_run_keeps_its_mask_and_a_visible_one_none(model):
    leak = MaskLeak()
    one = compat(model, A, bug=True, steps=1, leak=leak, capture=None)
    assert len(leak) == 1 and torch.equal(leak.masks[0],
                                          torch.ones(5, 5, dtype=torch.bool).tril())
    three = compat(model, A, bug=True, steps=3, leak=MaskLeak(), capture=None)
    k = [len(s.members) for s in three.tree.steps]
    assert k[0] >= 2 and k[1] >= 2, "the sets must be wide enough to leave holes"
    kept = MaskLeak.from_runs([three]).masks[0]
    size = len(A) + k[0] + k[1]
    expected = torch.ones(size, size, dtype=torch.bool).tril()
    for start, width in ((len(A), k[0]), (len(A) + k[0], k[1])):
        block = expected[start:start + width, start:start + width]
        block.copy_(torch.eye(width, dtype=torch.bool))
    assert torch.equal(kept, expected)
    assert one.options["mask_leak"] == 0
    visible = compat(model, A, bug=False, steps=3, capture=None)
    assert visible.options["mask_leak"] is None
    assert not leak.record(visible) and len(leak) == 1
    assert leak.record(three) and len(leak) == 2
    assert isinstance(leak.masks, tuple)
    leak.clear()
    assert len(leak) == 0 and leak.masks == ()


# ---- (b) a later prompt's prefill sees only key 0 below S_j -----------------------------

def test_a_later_prefill_sees_only_bos_below_the_kept_size(model):
    leak = MaskLeak()
    first = compat(model, A, bug=True, steps=3, leak=leak, capture=None)
    size = leak.masks[0].shape[0]
    assert size > len(B)  # the whole later prompt lies below S_1
    later = compat(model, B, bug=True, steps=3, leak=leak)
    P = len(B)
    expected = torch.zeros(P, later.num_slots, dtype=torch.bool)
    expected[:, 0] = True  # BOS only, for every prompt token
    assert torch.equal(later.visibility[:P], expected)
    assert torch.equal(engine_mask(later)[:, :, :P], expected.expand(
        later.scores.shape[0], later.scores.shape[1], P, later.num_slots))
    assert first.options["mask_leak"] == 0 and later.options["mask_leak"] == 1


def test_prompt_keys_at_or_beyond_the_kept_size_stay_causal(model):
    leak = MaskLeak()
    compat(model, [1, 17], bug=True, steps=1, leak=leak, capture=None)  # S = 2, causal
    later = compat(model, C, bug=False, steps=2, leak=leak)
    # Row 0 of the kept [2, 2] mask hides key 1 from every prompt token; keys 2.. are the
    # pass's own causal ones. Decode passes get its last row, which hides nothing.
    expected = bools([
        "10000000",
        "10000000",
        "10100000",
        "10110000",
        "10111000",
        "10111100",
        "11111110",
        "11111111",
    ])
    assert torch.equal(later.visibility, expected)
    assert applied_everywhere(later, expected)


# ---- (c) decode passes get the holes of row clamp(c) ------------------------------------

HAND_TREE = _core.Tree.build([1, 5], [[7, 8], [9, 10, 11], [12]])  # kept mask: S = 7


def hand_leak(*trees) -> MaskLeak:
    """A process whose earlier isolated-mode prompts chose the sets of these trees."""
    leak = MaskLeak()
    for tree in trees or (HAND_TREE,):
        assert leak.record(SimpleNamespace(kind="tempo-2025", tree=tree,
                                           options={"emulate_isolation_bug": True}))
    return leak


def test_decode_rows_get_the_holes_of_row_c_hand_computed(model):
    # Kept mask rows (printed 2..3 and 4..6 are sets): 0 1000000, 3 1101000, 4 1111100,
    # 5 1111010, 6 1111001. Later prompt P = 3, visible mode (own mask causal): prefill
    # rows get row 0 over keys 0..2; slot c = 3..6 gets row c; c = 7, 8 get row 6 over
    # keys 0..6, keys 7 and 8 untouched.
    run = compat(model, [1, 20, 30], bug=False, steps=6, leak=hand_leak())
    expected = bools([
        "100000000",
        "100000000",
        "100000000",
        "110100000",
        "111110000",
        "111101000",
        "111100100",
        "111100110",
        "111100111",
    ])
    assert torch.equal(run.visibility, expected)
    assert applied_everywhere(run, expected)


def test_two_kept_masks_combine_by_and_hand_computed(model):
    # A second earlier prompt: P = 1, S_0 = {5, 6, 7} recorded at printed 1..3, S = 4;
    # its rows 0..3 are 1000, 1100, 1010, 1001, so from c = 3 on keys 1 and 2 are hidden.
    second = _core.Tree.build([1], [[5, 6, 7], [8]])
    run = compat(model, [1, 20, 30], bug=False, steps=6, leak=hand_leak(HAND_TREE, second))
    expected = bools([
        "100000000",
        "100000000",
        "100000000",
        "100100000",
        "100110000",
        "100101000",
        "100100100",
        "100100110",
        "100100111",
    ])
    assert run.options["mask_leak"] == 2
    assert torch.equal(run.visibility, expected)
    assert applied_everywhere(run, expected)


def test_decode_rows_are_the_own_mask_and_the_kept_row(model):
    leak = hand_leak()
    run = compat(model, [1, 20, 30], bug=True, steps=6, leak=leak)
    own = tempo2025_visibility(run.tree, run.num_slots, True)
    expected = with_leak(own, 3, leak.masks)
    assert not torch.equal(expected, own)
    assert torch.equal(run.visibility, expected)
    assert applied_everywhere(run, expected)


# ---- (d) chains of prompts ---------------------------------------------------------------

def test_a_visible_run_is_affected_but_leaves_nothing(model):
    leak = MaskLeak()
    compat(model, A, bug=True, steps=3, leak=leak, capture=None)
    kept = leak.masks
    visible = compat(model, C, bug=False, steps=8, leak=leak)
    assert len(leak) == 1 and visible.options["mask_leak"] == 1
    causal = torch.ones(visible.num_slots, visible.num_slots, dtype=torch.bool).tril()
    expected = with_leak(causal, len(C), kept)
    assert not torch.equal(expected, causal)
    assert torch.equal(visible.visibility, expected)
    assert applied_everywhere(visible, expected)
    # An isolated run after it adds its own mask, having seen only the first one.
    isolated = compat(model, B, bug=True, steps=3, leak=leak)
    assert isolated.options["mask_leak"] == 1 and len(leak) == 2
    assert torch.equal(leak.masks[0], kept[0])
    assert torch.equal(leak.masks[1], _core.tempo_leak_mask(isolated.tree))
    own = tempo2025_visibility(isolated.tree, isolated.num_slots, True)
    assert torch.equal(isolated.visibility, with_leak(own, len(B), kept))


def test_three_prompts_combine_two_kept_masks(model):
    leak = MaskLeak()
    compat(model, A, bug=True, steps=2, leak=leak, capture=None)
    compat(model, B, bug=True, steps=3, leak=leak, capture=None)
    assert len(leak) == 2
    first, second = leak.masks
    third = compat(model, C, bug=True, steps=20, leak=leak)
    assert third.options["mask_leak"] == 2
    own = tempo2025_visibility(third.tree, third.num_slots, True)
    both = with_leak(own, len(C), [first, second])
    # Each kept mask hides something the other does not: the AND needs both.
    assert not torch.equal(both, with_leak(own, len(C), [first]))
    assert not torch.equal(both, with_leak(own, len(C), [second]))
    assert torch.equal(third.visibility, both)
    assert applied_everywhere(third, both)
    assert len(leak) == 3


# ---- (e) an empty leak changes nothing ---------------------------------------------------

@pytest.mark.parametrize("bug", [False, True])
def test_an_empty_leak_is_bit_identical_to_none(model, bug):
    clean = compat(model, A, bug=bug, steps=6)
    leak = MaskLeak()
    compat(model, B, bug=False, steps=3, leak=leak, capture=None)  # leaves nothing
    assert len(leak) == 0
    for run in (compat(model, A, bug=bug, steps=6, leak=leak),
                compat(model, A, bug=bug, steps=6, leak=MaskLeak())):
        assert [[(m.token_id, m.probability, m.slot) for m in s.members]
                for s in run.tree.steps] == \
            [[(m.token_id, m.probability, m.slot) for m in s.members] for s in clean.tree.steps]
        assert run.slot_records == clean.slot_records
        assert torch.equal(run.attention, clean.attention)
        assert torch.equal(run.scores, clean.scores)
        assert torch.equal(run.visibility, clean.visibility)
        assert run.options["mask_leak"] == 0
    assert clean.options["mask_leak"] is None
    assert torch.equal(clean.visibility, tempo2025_visibility(clean.tree, clean.num_slots, bug))


# ---- (f) bad masks -----------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "message"), [
    (torch.ones(3, dtype=torch.bool), "2-D"),
    (torch.ones(2, 2, 2, dtype=torch.bool), "2-D"),
    (torch.ones(2, 3, dtype=torch.bool), "square"),
    (torch.ones(3, 3), "bool"),
    (torch.ones(0, 0, dtype=torch.bool), "empty"),
])
def test_bad_kept_masks_are_refused(model, bad, message):
    good = torch.ones(2, 2, dtype=torch.bool).tril()
    with pytest.raises(attnvar.ConfigError, match=message):
        _core.generate_tempo2025(model.core, A, max_steps=2, leaked_masks=[good, bad])


def test_mask_leak_takes_compat_runs_only(model):
    with pytest.raises(ValueError, match="mask_leak"):
        model.tempo2025(A, max_steps=1, mask_leak=[torch.ones(1, 1, dtype=torch.bool)])
    gen = model.generate(A, threshold=0.05, max_steps=2)
    with pytest.raises(ValueError, match="tempo-2025"):
        MaskLeak().record(gen)
    # The parallel generator does not report a per-query record; compat results do.
    assert _core.generate(model.core, A, max_steps=2).visibility is None


# ---- runs on disk --------------------------------------------------------------------------

def test_saved_runs_rebuild_the_state_and_keep_their_mask(model, tmp_path):
    leak = MaskLeak()
    runs = [compat(model, A, bug=True, steps=3, leak=leak),
            compat(model, C, bug=False, steps=4, leak=leak),
            compat(model, B, bug=True, steps=2, leak=leak)]
    for i, run in enumerate(runs):
        run.save(tmp_path / f"run{i}")
    loaded = [attnvar.load_run(tmp_path / f"run{i}") for i in range(3)]
    rebuilt = MaskLeak.from_runs(loaded)
    assert len(rebuilt) == len(leak) == 2
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.masks, leak.masks, strict=True))
    for run, back in zip(runs, loaded, strict=True):
        assert torch.equal(back.visibility, run.visibility)
        assert back.options["mask_leak"] == run.options["mask_leak"]
    # A leaked-into run without its stored mask cannot be rebuilt from its tree.
    extras = load_file(str(tmp_path / "run1" / EXTRAS_FILE))
    del extras["visibility"]
    if extras:
        save_file(extras, str(tmp_path / "run1" / EXTRAS_FILE))
    else:
        (tmp_path / "run1" / EXTRAS_FILE).unlink()
    # Saved before runs recorded checksums too: run.json names no extras checksum.
    meta = json.loads((tmp_path / "run1" / "run.json").read_text())
    meta.pop("extras_sha256", None)
    (tmp_path / "run1" / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="stale-mask leak"):
        attnvar.load_run(tmp_path / "run1")
