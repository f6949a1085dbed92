"""Parallel generation, replay, interventions and the compat preset on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch

import attnvar
from attnvar import _core

pytest.importorskip("transformers")

from tiny_models import additive_mask, attnvar_model, tiny_hf_model  # noqa: E402

MODES = ["isolated", "visible", "causal"]


@pytest.fixture(scope="module")
def hf():
    return tiny_hf_model("llama", seed=11)


@pytest.fixture(scope="module")
def model(hf):
    return attnvar_model(hf)


PROMPT = [1, 17, 42, 9, 33]


def gen(model, **kw):
    opts = dict(threshold=0.04, max_steps=8, capture=True, scores=True, keep_distributions=True)
    opts.update(kw)
    return _core.generate(model, PROMPT, **opts)


def members(run):
    return [[m.token_id for m in s.members] for s in run.tree.steps]


@pytest.mark.parametrize("mode", MODES)
def test_generated_tree_has_parallel_sets_fed_at_one_shared_position(model, mode):
    run = gen(model, mode=mode)
    P = len(PROMPT)
    assert any(len(s.members) >= 2 for s in run.tree.steps), "threshold too high for the test"
    for t, step in enumerate(run.tree.steps):
        probs = [m.probability for m in step.members]
        assert probs == sorted(probs, reverse=True)
        assert all(p >= 0.04 for p in probs) or len(probs) == 1
        for m in step.members:
            rec = run.slots[m.slot]
            assert (rec.token_id, rec.position, rec.step) == (m.token_id, P + t, t)
    assert len(run.passes) == 1 + len(run.tree.steps)  # prefill + one pass per set


@pytest.mark.parametrize("mode", MODES)
def test_replay_under_its_own_encoding_reproduces_the_online_run(model, mode):
    run = gen(model, mode=mode)
    rep = _core.replay(model, run.tree, "shared_" + mode, capture=True, scores=True)
    assert [(s.token_id, s.position) for s in rep.layout.slots] == [
        (s.token_id, s.position) for s in run.slots
    ]
    da = (rep.dense("probabilities") - run.dense("probabilities")).abs().max().item()
    ds = (rep.dense("scores") - run.dense("scores")).nan_to_num(0.0).abs().max().item()
    dq = (rep.distributions - run.distributions).abs().max().item()
    print(f"[parity] {mode}: replay vs online attention {da:.2e}, scores {ds:.2e}, q_t {dq:.2e}")
    assert da < 1e-5 and ds < 1e-4 and dq < 1e-5
    # Chunked replay (whole steps per pass) gives the same numbers.
    chunked = _core.replay(model, run.tree, "shared_" + mode, capture=True, chunk_size=3)
    assert len(chunked.passes) > 1
    assert (chunked.dense() - run.dense()).abs().max().item() < 1e-5


@pytest.mark.parametrize("mode", ["isolated", "visible"])
def test_generated_capture_equals_hf_with_explicit_mask_and_positions(model, hf, mode):
    run = gen(model, mode=mode)
    layout = _core.encode(run.tree, "shared_" + mode)
    ids = layout.token_ids
    with torch.no_grad():
        out = hf(input_ids=ids[None], position_ids=layout.positions.float()[None],
                 attention_mask=additive_mask(layout.visibility), output_attentions=True)
    dense = run.dense()
    worst = max((dense[i] - out.attentions[i][0]).abs().max().item() for i in range(3))
    print(f"[parity] {mode}: generated capture vs HF eager: max |diff| = {worst:.3e}")
    assert worst < 1e-4
    # Masked entries exactly zero, each pair once, rows sum to one over visible keys.
    assert torch.all(dense[:, :, ~layout.visibility] == 0)
    assert torch.allclose(dense.sum(-1), torch.ones(dense.shape[:3]), atol=1e-5)


def test_same_seed_same_tree_and_bit_identical_capture_different_seeds_differ(model):
    a = gen(model, sample=True, seed=5)
    b = gen(model, sample=True, seed=5)
    assert members(a) == members(b)
    assert torch.equal(a.dense(), b.dense())
    trees = {str(members(gen(model, sample=True, seed=s, capture=False))) for s in range(6)}
    assert len(trees) > 1


def test_policies_follow_their_definitions_on_a_case_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    w = [0.6, 0.2]
    sm = torch.softmax(logits, -1)
    by_hand = {
        "mixture": 0.75 * sm[0] + 0.25 * sm[1],
        "top": sm[0],
        "last": sm[1],
        "mean_logits": torch.softmax(torch.tensor([1.0, 0.5, -0.25]), -1),
    }
    for policy, expected in by_hand.items():
        got = _core.next_distribution(logits, w, policy)
        assert torch.allclose(got, expected, atol=1e-7), policy
    hot = _core.next_distribution(logits, w, "top", temperature=0.5)
    assert torch.allclose(hot, torch.softmax(logits[0] / 0.5, -1))
    with pytest.raises(attnvar.ConfigError, match="policy"):
        _core.next_distribution(logits, w, "vote")


def test_selection_threshold_ties_width_and_argmax_fallback():
    q = torch.tensor([0.05, 0.3, 0.3, 0.2, 0.15])
    assert _core.select_set(q, threshold=0.15) == [
        (1, pytest.approx(0.3)), (2, pytest.approx(0.3)), (3, pytest.approx(0.2)),
        (4, pytest.approx(0.15)),
    ]  # inclusive, ties by id
    assert [t for t, _ in _core.select_set(q, threshold=0.15, max_width=2)] == [1, 2]
    assert [t for t, _ in _core.select_set(q, threshold=0.9)] == [1]  # argmax, lowest id
    assert [t for t, _ in _core.select_set(q, threshold=1.0)] == [1]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(attnvar.ConfigError, match="threshold"):
            _core.select_set(q, threshold=bad)
    drawn = {tuple(t for t, _ in _core.select_set(q, threshold=0.9, sample=True, seed=s))
             for s in range(40)}
    assert (1,) in drawn and any(len(d) == 2 for d in drawn)


def test_theta_one_is_greedy_decoding(model, hf):
    run = gen(model, threshold=1.0, capture=False)
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        greedy = hf.generate(ids[None], max_new_tokens=8, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(PROMPT):].tolist()
    assert [s[0] for s in members(run)] == greedy
    assert all(len(s) == 1 for s in members(run))


def test_low_theta_hits_max_width(model):
    run = gen(model, threshold=1e-9, max_width=5, max_steps=2)
    assert all(len(s.members) == 5 for s in run.tree.steps)


def test_eos_inside_a_set_under_both_stop_rules(model):
    base = gen(model, capture=False)
    t, eos = next((t, s.members[1].token_id) for t, s in enumerate(base.tree.steps)
                  if len(s.members) >= 2)
    any_eos = gen(model, capture=False, eos_ids=[eos])
    assert any_eos.stop_reason == "eos" and any_eos.tree.num_steps <= t + 1
    last = any_eos.tree.steps[-1]
    assert any(m.is_eos and m.slot is None for m in last.members)
    assert all(m.slot is not None for m in last.members if not m.is_eos)  # final set fed
    top = gen(model, capture=False, eos_ids=[eos], stop_on="top_eos")
    assert top.tree.num_steps > any_eos.tree.num_steps or top.stop_reason == "eos"


def test_edge_cases_one_token_prompt_empty_prompt_zero_steps(model):
    one = _core.generate(model, [5], threshold=0.05, max_steps=3)
    assert one.tree.prompt_length == 1 and one.tree.num_steps == 3
    zero = _core.generate(model, PROMPT, max_steps=0, capture=True)
    assert zero.tree.num_steps == 0 and len(zero.slots) == len(PROMPT)
    with pytest.raises(attnvar.ConfigError, match="empty"):
        _core.generate(model, [])
    with pytest.raises(attnvar.ConfigError, match="max_steps"):
        _core.generate(model, PROMPT, max_steps=-1)
    with pytest.raises(attnvar.ConfigError, match="mode"):
        _core.generate(model, PROMPT, mode="open")
    with pytest.raises(attnvar.ConfigError, match="temperature"):
        _core.generate(model, PROMPT, temperature=0.0)


def test_hand_built_tree_replays_under_every_encoding(model):
    tree = _core.Tree.build(PROMPT, [[10, 11, 12], [13], [14, 15]])
    P = len(PROMPT)
    expected_positions = {
        "shared_isolated": [P, P, P, P + 1, P + 2, P + 2],
        "serial": [P, P + 1, P + 2, P + 3, P + 4, P + 5],
        "fractional": [P, P + 1 / 3, P + 2 / 3, P + 1, P + 2, P + 2.5],
        "top_only": [P, P + 1, P + 2],
    }
    for enc, pos in expected_positions.items():
        rep = _core.replay(model, tree, enc, capture=True)
        got = rep.layout.positions.tolist()[P:]
        assert got == pytest.approx(pos), enc
        assert rep.logits.shape == (len(PROMPT) + len(pos), 97)
    serial = _core.encode(tree, "serial")
    assert torch.equal(serial.visibility, torch.ones(11, 11, dtype=torch.bool).tril())
    iso = _core.encode(tree, "shared_isolated").visibility
    assert not iso[6, 5] and not iso[7, 6] and iso[8, 5:8].all()  # siblings hidden, later sees
    with pytest.raises(attnvar.ConfigError, match="twice"):
        _core.Tree.build(PROMPT, [[10, 10]])
    with pytest.raises(attnvar.ConfigError, match="vocabulary"):
        _core.replay(model, _core.Tree.build(PROMPT, [[500]]), "serial")
    with pytest.raises(attnvar.ConfigError, match="encoding"):
        _core.replay(model, tree, "sideways")


def test_positive_control_injected_bias_equals_delta_in_its_layer(model):
    tree = _core.Tree.build(PROMPT, [[10, 11], [13], [14, 15], [16]])
    base = _core.replay(model, tree, "shared_isolated", capture=True, scores=True)
    parallel = [i for i, s in enumerate(base.layout.slots)
                if s.step >= 0 and len(tree.steps[s.step].members) >= 2]
    delta = -math.log(2)
    hit = _core.replay(model, tree, "shared_isolated", capture=True, scores=True,
                       interventions=[{"layer_begin": 1, "layer_end": 2, "key_slots": parallel,
                                       "delta": delta}])
    d = hit.dense("scores")[1] - base.dense("scores")[1]
    finite = torch.isfinite(d)
    expected = torch.zeros_like(d)
    expected[:, :, parallel] = delta
    err = (d[finite] - expected[finite]).abs().max().item()
    print(f"[parity] positive control: injected - baseline in layer 1 vs delta: {err:.2e}")
    assert err < 1e-4
    assert torch.equal(hit.dense("scores")[0], base.dense("scores")[0])


# ---- compat preset: an independent implementation of the prototype's rules ------------------

def tempo_reference(hf, prompt, threshold, max_steps, bug):
    """Re-derive the prototype's fed sequence with HF (full recompute, no KV cache)."""
    fed = list(prompt) + [prompt[-1]]  # slot P repeats the last prompt token
    sets, printed_starts, printed = [], [], len(prompt)

    def mask_for(n):
        vis = torch.ones(n, n, dtype=torch.bool).tril()
        if bug:
            for start, k in zip(printed_starts, [len(s) for s in sets], strict=True):
                if k < 2:
                    continue
                for row in range(n):
                    if start <= row < start + k:
                        for col in range(start, min(start + k, row + 1)):
                            if col != row:
                                vis[row, col] = False
        return vis

    for t in range(max_steps):
        n = len(fed)
        with torch.no_grad():
            out = hf(input_ids=torch.tensor(fed)[None],
                     position_ids=torch.arange(n)[None].float(),
                     attention_mask=additive_mask(mask_for(n)))
        q = torch.softmax(out.logits[0, -1], -1)
        order = sorted(range(len(q)), key=lambda v: (-q[v].item(), v))
        s = [v for v in order if q[v].item() >= threshold] or [order[0]]
        printed_starts.append(printed)
        sets.append(s)
        printed += len(s)
        if t + 1 == max_steps:
            break
        fed.append(s[-1])
    return fed, sets


@pytest.mark.parametrize("bug", [False, True])
def test_compat_preset_matches_an_independent_implementation(model, hf, bug):
    run = _core.generate_tempo2025(model, PROMPT, threshold=0.05, max_steps=7,
                                   emulate_isolation_bug=bug, eos_ids=[96], capture=True)
    fed, sets = tempo_reference(hf, PROMPT, 0.05, 7, bug)
    assert [s.token_id for s in run.slots] == fed
    assert [s.position for s in run.slots] == list(range(len(fed)))
    assert members(run) == sets
    P = len(PROMPT)
    # Only the last member of each non-final set has a slot, at P + 1 + t.
    for t, step in enumerate(run.tree.steps):
        slots = [m.slot for m in step.members]
        if t + 1 < len(run.tree.steps):
            assert slots[:-1] == [None] * (len(slots) - 1) and slots[-1] == P + 1 + t
        else:
            assert slots == [None] * len(slots)
    assert _core.printed_set_starts(run.tree)[1] == P + len(sets[0])
    assert any(len(s) >= 2 for s in sets)
    # With the bug, some query had causal keys hidden (exactly zero attention).
    dense = run.dense()
    n = dense.shape[-1]
    hidden_causal = (dense[0, 0] == 0) & torch.ones(n, n, dtype=torch.bool).tril()
    assert bool(hidden_causal.any()) == bug


def test_step_entropy_is_the_entropy_of_q_t(model):
    run = gen(model, capture=False)
    q = run.distributions.double()
    expected = -(q * q.clamp_min(1e-300).log()).sum(-1)
    got = torch.tensor([s.entropy for s in run.tree.steps], dtype=torch.float64)
    assert torch.allclose(got, expected[: len(got)], atol=1e-9)
