"""M3 (value-weighted), M4 (rollout) and M5 (knockout) on a tiny random model, each
against an implementation written here from the definitions (loops, numpy, or HF
transformers as the oracle for the knocked-out forward passes)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import attnvar
import attnvar.metrics as am
from attnvar import _core
from attnvar.model import Model

pytest.importorskip("transformers")

from tiny_models import additive_mask, attnvar_model, tiny_hf_model  # noqa: E402

PROMPT = [1, 17, 42, 9, 33]
# Widths 1,2,1,3,1,1,2,1,1,1,2,1: 4 parallel sets, 8 single steps (ids avoid EOS = 2).
STEPS = [[5], [6, 7], [8], [10, 11, 12], [13], [14], [15, 16], [18], [19], [20],
         [21, 22], [23]]


@pytest.fixture(scope="module")
def hf():
    return tiny_hf_model("llama", seed=11)


@pytest.fixture(scope="module")
def model(hf):
    return Model(attnvar_model(hf), None, {"note": "tiny"}, [2], "tiny", torch.float32)


@pytest.fixture(scope="module")
def tree():
    return _core.Tree.build(PROMPT, STEPS, [2])


@pytest.fixture(scope="module")
def generated(model):
    run = model.generate(PROMPT, threshold=0.04, max_steps=8, mode="isolated",
                         capture=attnvar.Capture(scores=True, value_norms=True))
    assert sum(len(s.members) >= 2 for s in run.tree.steps) >= 2
    return run


@pytest.fixture(scope="module")
def replayed(model, tree):
    return model.replay(tree, "shared_isolated",
                        capture=attnvar.Capture(scores=True, value_norms=True))


# ---- M3 --------------------------------------------------------------------------------

def test_value_norms_are_the_norms_of_each_keys_value_through_the_heads_output_projection(
        hf, replayed):
    """What M3 multiplies α by: ‖v_j W_O^h‖, from HF's own v_proj outputs and o_proj."""
    layout = _core.encode(replayed.tree, "shared_isolated")
    values = {}
    hooks = [layer.self_attn.v_proj.register_forward_hook(
        lambda mod, args, out, i=i: values.__setitem__(i, out[0].detach()))
        for i, layer in enumerate(hf.model.layers)]
    try:
        with torch.no_grad():
            hf(input_ids=layout.token_ids[None], position_ids=layout.positions.float()[None],
               attention_mask=additive_mask(layout.visibility))
    finally:
        for h in hooks:
            h.remove()
    cfg = hf.config
    d = cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    worst = 0.0
    for layer, block in enumerate(hf.model.layers):
        w_o = block.self_attn.o_proj.weight.detach()  # (hidden, heads * d)
        for h in range(cfg.num_attention_heads):
            kv = h // group
            v = values[layer][:, kv * d:(kv + 1) * d]  # (N, d)
            expected = (v @ w_o[:, h * d:(h + 1) * d].T).norm(dim=-1)
            worst = max(worst, (replayed.value_norms[layer, h] - expected).abs().max().item())
    print(f"[M3] value norms vs HF v_proj · W_O^h: max |diff| = {worst:.2e}")
    assert worst < 1e-4


def _hand_m3(run, sinks):
    """Per (layer, head): the three M3 variants by loops over steps, queries and keys."""
    a = run.attention.double().numpy()
    s = run.scores.double().numpy()
    vn = run.value_norms.double().numpy()
    slots = run.slots
    step = slots["step"].to_numpy()
    par = slots["is_parallel"].to_numpy()
    vis = run.visibility.numpy()
    view = am.as_view(run)
    sink = sinks.mask_for(view)
    L, H = a.shape[:2]
    out = {v: np.full((L, H), np.nan) for v in ("log_contrast", "value_norm", "share")}
    shares = np.full((L, H), np.nan)
    for layer in range(L):
        for head in range(H):
            per_step = {v: [] for v in out}
            share_steps = []
            for u in sorted(set(step[step >= 0])):
                vals = {v: [] for v in out}
                sh = []
                for i in np.flatnonzero(step == u):
                    keys = [j for j in range(len(step)) if 0 <= step[j] < u and vis[i, j]
                            and not sink[layer, head, j]]
                    p = [j for j in keys if par[j]]
                    n = [j for j in keys if not par[j]]
                    if not p or not n:
                        continue
                    lc = {j: s[layer, head, i, j] + math.log(vn[layer, head, j]) for j in keys}
                    vals["log_contrast"].append(np.mean([lc[j] for j in p])
                                                - np.mean([lc[j] for j in n]))
                    vals["value_norm"].append(np.mean([math.log(vn[layer, head, j]) for j in p])
                                              - np.mean([math.log(vn[layer, head, j])
                                                         for j in n]))
                    c = {j: a[layer, head, i, j] * vn[layer, head, j] for j in keys}
                    mp = sum(c[j] for j in p)
                    mn = sum(c[j] for j in n)
                    vals["share"].append(math.log(mp / len(p)) - math.log(mn / len(n)))
                    sh.append(mp / (mp + mn))
                for v in out:
                    if vals[v]:
                        per_step[v].append(np.mean(vals[v]))
                if sh:
                    share_steps.append(np.mean(sh))
            for v in out:
                if per_step[v]:
                    out[v][layer, head] = np.mean(per_step[v])
            if share_steps:
                shares[layer, head] = np.mean(share_steps)
    return out, shares


@pytest.mark.parametrize("which", ["generated", "replayed"])
def test_m3_equals_a_hand_computation_from_captured_alpha_and_value_norms(
        model, generated, replayed, which):
    run = generated if which == "generated" else replayed
    top = model.replay(run.tree, "top_only", capture=attnvar.Capture())
    sinks = am.find_sinks(top, threshold=0.15)
    table = am.value_weighted(run, sinks=sinks)
    hand, shares = _hand_m3(run, sinks)
    worst = 0.0
    for variant, expected in hand.items():
        rows = table[(table.variant == variant) & (table.layer >= 0)]
        got = rows.estimate.to_numpy().reshape(expected.shape)
        assert np.array_equal(np.isnan(got), np.isnan(expected))
        worst = max(worst, np.nanmax(np.abs(got - expected)))
        prompt_row = table[(table.variant == variant) & (table.layer == -1)].estimate.item()
        assert prompt_row == pytest.approx(np.nanmean(expected), abs=1e-10)
    rows = table[(table.variant == "share") & (table.layer >= 0)]
    worst = max(worst, np.nanmax(np.abs(rows["share"].to_numpy().reshape(shares.shape)
                                        - shares)))
    print(f"[M3] {which}: table vs hand computation, max |diff| = {worst:.2e}")
    assert worst < 1e-9
    # log c = log α + log ‖v W_O‖: the log contrast is M1 plain plus the value part.
    m1 = am.score_contrast(run, sinks=sinks)
    m1 = m1[m1.layer >= 0].estimate.to_numpy()
    lc = table[(table.variant == "log_contrast") & (table.layer >= 0)].estimate.to_numpy()
    vp = table[(table.variant == "value_norm") & (table.layer >= 0)].estimate.to_numpy()
    assert np.allclose(lc, m1 + vp, atol=1e-10, equal_nan=True)


def test_analyze_adds_m3_when_value_norms_were_captured_and_names_the_missing_capture(
        model, generated):
    table = am.analyze(generated, metrics=None)
    assert {"M3"} <= set(table.metric) and "M4" not in set(table.metric)
    plain = model.generate(PROMPT, threshold=0.04, max_steps=4,
                           capture=attnvar.Capture(scores=True))
    assert "M3" not in set(am.analyze(plain).metric)
    with pytest.raises(ValueError, match="value_norms=True"):
        am.analyze(plain, metrics=["M3"])
    with pytest.raises(ValueError, match="top_only"):
        am.analyze(plain, metrics=["M4"])


# ---- M4 --------------------------------------------------------------------------------

def _numpy_rollout(attention: np.ndarray) -> np.ndarray:
    L, _, n, _ = attention.shape
    r = np.eye(n)
    out = []
    for layer in range(L):
        a_hat = 0.5 * attention[layer].mean(0) + 0.5 * np.eye(n)
        r = a_hat @ r
        out.append(r.copy())
    return np.stack(out)


def test_m4_equals_an_independent_numpy_rollout_of_the_dense_matrices(model, replayed):
    top = model.replay(replayed.tree, "top_only", capture=attnvar.Capture())
    r_run = _numpy_rollout(replayed.attention.double().numpy())
    r_top = _numpy_rollout(top.attention.double().numpy())
    worst_r = np.abs(am.rollout(replayed).numpy() - r_run).max()
    assert np.allclose(r_run.sum(-1), 1.0, atol=1e-6)
    table = am.rollout_contrast(replayed, top, sinks=None)
    # By hand: rank-0 query of each step u; parallel positions t < u.
    run_slots, top_slots = replayed.slots, top.slots
    key_run = {(s, r): i for i, (s, r) in
               enumerate(zip(run_slots.step, run_slots["rank"], strict=True))}
    key_top = {(s, r): i for i, (s, r) in
               enumerate(zip(top_slots.step, top_slots["rank"], strict=True))}
    widths = [len(s) for s in STEPS]
    expected = {"position_mass": [], "generated_share": []}
    for layer in range(r_run.shape[0]):
        logs = {v: [] for v in expected}
        for u in range(len(STEPS)):
            par = [t for t in range(u) if widths[t] >= 2]
            if not par:
                continue
            qr, qt = key_run[(u, 0)], key_top[(u, 0)]
            m = sum(r_run[layer, qr, key_run[(t, r)]] for t in par for r in range(widths[t]))
            mt = sum(r_top[layer, qt, key_top[(t, 0)]] for t in par)
            g = sum(r_run[layer, qr, key_run[(t, r)]] for t in range(u) for r in range(widths[t]))
            gt = sum(r_top[layer, qt, key_top[(t, 0)]] for t in range(u))
            logs["position_mass"].append(math.log(m / mt))
            logs["generated_share"].append(math.log((m / g) / (mt / gt)))
        for v in expected:
            expected[v].append(np.mean(logs[v]))
    worst = 0.0
    for v, values in expected.items():
        rows = table[table.variant == v]
        got = rows[rows.layer >= 0].sort_values("layer").estimate.to_numpy()
        worst = max(worst, np.abs(got - np.array(values)).max())
        assert rows[rows.layer == -1].estimate.item() == pytest.approx(values[-1], abs=1e-12)
    print(f"[M4] rollout vs numpy: max |diff| = {worst_r:.2e}; contrast vs hand: "
          f"{worst:.2e}; full-rollout position_mass = {expected['position_mass'][-1]:+.4f}")
    assert worst_r < 1e-12 and worst < 1e-10
    # The tree's parallel sets do move the rollout (so the identity check below is not
    # vacuous).
    assert abs(expected["position_mass"][-1]) > 1e-3


def test_m4_is_zero_for_a_run_without_parallel_steps_against_its_top_only_replay(model):
    tree = _core.Tree.build(PROMPT, [[t[0]] for t in STEPS], [2])
    run = model.replay(tree, "shared_isolated", capture=attnvar.Capture())
    top = model.replay(tree, "top_only", capture=attnvar.Capture())
    labels = am.placebo_labels(run, 0.5, np.random.default_rng(3))
    table = am.rollout_contrast(run, top, labels=labels)
    worst = np.abs(table.estimate.to_numpy()).max()
    print(f"[M4] identity (no parallel step, placebo labels): max |estimate| = {worst:.2e}")
    assert (table.n_queries > 0).all() and worst <= 1e-6


def test_m4_refuses_a_partial_capture(model, tree):
    run = model.replay(tree, "shared_isolated", capture=attnvar.Capture(layers=[0, 2]))
    with pytest.raises(ValueError, match="every layer and head"):
        am.rollout(run)


# ---- M5 --------------------------------------------------------------------------------

def _slots_of(layout, steps):
    return [i for i, s in enumerate(layout.slots) if s.step in steps]


def test_m5_knockout_of_nothing_changes_nothing_and_equals_the_replay(model, tree):
    rep = model.replay(tree, "shared_isolated")
    base = am.knockout_replay(model, tree)
    dq = (base.log_next[: rep.distributions.shape[0]].exp() - rep.distributions).abs().max()
    steps = list(range(1, len(STEPS) - 1))
    none = am.knockout_replay(model, tree, [])
    kl, dlogp = am.next_token_effects(base, none, tree, steps)
    # Keys of the last step have no later query: knocking them out is a no-op too.
    layout = _core.encode(tree, "shared_isolated")
    last = am.knockout_replay(model, tree, _slots_of(layout, {len(STEPS) - 1}))
    kl2, dlogp2 = am.next_token_effects(base, last, tree, steps)
    print(f"[M5] pass-per-step replay vs Model.replay q_t: max |diff| = {dq:.2e}; "
          f"no-op knockouts: max KL = {max(kl.max(), kl2.max()):.1e}, "
          f"max |Δlog p| = {max(np.abs(dlogp).max(), np.abs(dlogp2).max()):.1e}")
    assert dq < 1e-5
    assert np.all(kl == 0) and np.all(dlogp == 0) and np.all(kl2 == 0) and np.all(dlogp2 == 0)


def test_m5_knockout_in_all_layers_equals_the_tree_without_those_tokens(model, hf, tree):
    """HF on the layout with the knocked slots removed (same positions for the rest)."""
    layout = _core.encode(tree, "shared_isolated")
    knocked = _slots_of(layout, {1, 4})  # a parallel set and a single step
    ko = am.knockout_replay(model, tree, knocked, 0, 3)
    base = am.knockout_replay(model, tree)
    keep = torch.tensor([i for i in range(len(layout.slots)) if i not in knocked])
    vis = layout.visibility[keep][:, keep]
    with torch.no_grad():
        out = hf(input_ids=layout.token_ids[keep][None],
                 position_ids=layout.positions.float()[keep][None],
                 attention_mask=additive_mask(vis))
    # Queries later than the knocked keys that remain in the shortened sequence.
    later_kept = torch.tensor([k for k, i in enumerate(keep.tolist())
                               if layout.slots[i].step > 1])
    later = keep[later_kept]
    diff = (ko.logits[later] - out.logits[0][later_kept]).abs().max().item()
    moved = (ko.logits[later] - base.logits[later]).abs().max().item()
    worst_all = (ko.logits[keep] - out.logits[0]).abs().max().item()
    print(f"[M5] all-layer knockout vs HF without the tokens: later queries max |diff| = "
          f"{diff:.2e} (all kept slots {worst_all:.2e}); knockout moved them by {moved:.2f}")
    assert diff < 1e-4 and worst_all < 1e-4 and moved > 1e-2


def test_m5_knockout_in_a_layer_window_equals_hf_with_masks_changed_in_those_layers(
        model, hf, tree):
    """HF eager; forward pre-hooks swap in the knocked-out mask in layers a..b−1 only."""
    layout = _core.encode(tree, "shared_isolated")
    step = torch.tensor([s.step for s in layout.slots])
    knocked = _slots_of(layout, {3, 5})
    a, b = 1, 2
    ko = am.knockout_replay(model, tree, knocked, a, b)
    full = additive_mask(layout.visibility)
    cut = full.clone()
    for k in knocked:
        cut[0, 0, step > step[k], k] = float("-inf")

    def swap(module, args, kwargs):
        return args, {**kwargs, "attention_mask": cut}

    hooks = [hf.model.layers[i].self_attn.register_forward_pre_hook(swap, with_kwargs=True)
             for i in range(a, b)]
    try:
        with torch.no_grad():
            out = hf(input_ids=layout.token_ids[None],
                     position_ids=layout.positions.float()[None], attention_mask=full)
    finally:
        for h in hooks:
            h.remove()
    diff = (ko.logits - out.logits[0]).abs().max().item()
    moved = (ko.logits - am.knockout_replay(model, tree).logits).abs().max().item()
    print(f"[M5] window [{a}, {b}) knockout vs HF pre-hook masks: max |diff| = {diff:.2e}; "
          f"knockout moved the logits by {moved:.2f}")
    assert diff < 1e-4 and moved > 1e-2


def test_match_keys_is_a_least_total_cost_assignment():
    position = np.array([0, 10, 10, 12, 9, 11, 13, 20, 10.0])
    cls = np.array(["a", "a", "b", "a", "a", "a", "b", "a", "b"])
    out = am.match_keys(np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8]), position, cls,
                        np.random.default_rng(0), class_weight=2.0)
    assert list(out) == [4, 8, 5]  # total cost 1 + 0 + 1
    short = am.match_keys(np.array([1, 2, 3]), np.array([4]), position, cls,
                          np.random.default_rng(0))
    assert list(short) == [4, -1, -1]
    # Against brute force over every injective assignment, more targets than candidates.
    rng = np.random.default_rng(5)
    for _ in range(20):
        position = rng.integers(0, 12, size=10).astype(float)
        cls = rng.choice(["a", "b"], size=10)
        targets, cands = np.arange(6), np.arange(6, 10)
        got = am.match_keys(targets, cands, position, cls, rng, class_weight=1.5)

        def cost(t, c, position=position, cls=cls):
            return abs(position[t] - position[c]) + 1.5 * (cls[t] != cls[c])

        best = min(sum(cost(t, c) for t, c in zip(ts, cands, strict=True))
                   for ts in itertools.permutations(targets, len(cands)))
        total = sum(cost(t, c) for t, c in zip(targets, got, strict=True) if c >= 0)
        assert (got >= 0).sum() == 4 and len(set(got[got >= 0])) == 4
        assert total == pytest.approx(best)


def test_m5_table_pairs_parallel_and_matched_knockouts(model, tree):
    kw = dict(windows=[(0, 3), (1, 2)], draws=3, seed=4, prompt="tiny")
    table = am.knockout(model, tree, **kw)
    assert set(table.variant) == {"all_parallel", "parallel", "matched_nonparallel", "contrast"}
    assert set(table.term) == {"kl", "delta_logp"} and (table.scale == "nats").all()
    assert len(table.groupby(["layer_begin", "layer_end"])) == 2
    for _, g in table.groupby(["layer_begin", "layer_end"]):
        est = {(v, t): e for v, t, e in zip(g.variant, g.term, g.estimate, strict=True)}
        for term in ("kl", "delta_logp"):
            assert est[("contrast", term)] == pytest.approx(
                est[("parallel", term)] - est[("matched_nonparallel", term)], abs=1e-12)
        assert est[("all_parallel", "kl")] > 0
        kl = g[(g.variant == "contrast") & (g.term == "kl")]
        ratio = est[("parallel", "kl")] / est[("matched_nonparallel", "kl")]
        assert kl.ratio.item() == pytest.approx(ratio)
        assert kl.effect_pct.item() == pytest.approx(100 * (1 - ratio))
    # 9 parallel keys, 8 single: size-matched draws of 8; 12 steps, the first parallel
    # at step 1, so steps 2..10 are evaluated.
    par = table[table.variant == "parallel"]
    assert (par.n_pairs == 8).all() and (table.n_queries == 9).all()
    assert (table[table.variant == "all_parallel"].n_pairs == 9).all()
    again = am.knockout(model, tree, **kw)
    assert np.array_equal(table.estimate.to_numpy(), again.estimate.to_numpy())
    print("[M5] tiny tree, all layers: "
          + ", ".join(f"{v}/{t} {e:+.4f}" for v, t, e, a in
                      zip(table.variant, table.term, table.estimate, table.layer_begin,
                          strict=True)
                      if a == 0))


# ---- bundled model (slow: about 2 minutes of CPU) ----------------------------------------

@pytest.mark.slow
def test_m345_on_the_bundled_model(bundled_path):
    """The figures quoted in docs/metrics.md, and M5's all-layer identity at full size:
    knocking out every rank ≥ 1 member equals replaying the tree without them."""
    import pandas as pd

    model = attnvar.load_model(bundled_path)
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=30,
                         capture=attnvar.Capture(scores=True, value_norms=True))
    top = model.replay(run.tree, "top_only", capture=attnvar.Capture())
    sinks = am.find_sinks(top)
    print(f"\n{run.bracketed!r}: {run.num_slots} slots")
    table = am.analyze(run, sinks=sinks, metrics=["M1", "M3", "M4"], top_only=top)
    cols = ["metric", "variant", "sinks_excluded", "estimate", "se", "share",
            "attention_share", "key_share", "mass_run", "mass_top_only", "share_run",
            "share_top_only"]
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(table[(table.layer == -1) & table.metric.isin(["M3", "M4"])][cols])
    m5 = am.knockout(model, run, windows=[(0, 30), (0, 10), (10, 20), (20, 30)],
                     sinks=sinks, draws=4, seed=0)
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(m5[["variant", "term", "layer_begin", "layer_end", "estimate", "se", "ratio",
                  "n_pairs", "match_distance", "class_match"]])
    assert np.allclose(am.rollout(run)[-1].sum(-1).numpy(), 1.0, atol=1e-5)

    tree = run.tree
    layout = _core.encode(tree, "shared_isolated")
    slots = layout.slots
    extra = [i for i, s in enumerate(slots)
             if s.step >= 0 and tree.steps[s.step].members[s.member].rank >= 1]
    assert extra, "the generation has no parallel set"
    ko = am.knockout_replay(model, tree, extra)
    top_tree = _core.Tree.build(list(tree.prompt),
                                [[s.members[0].token_id] for s in tree.steps], model.eos_ids)
    rep = _core.replay(model.core, top_tree, "shared_isolated")
    keep = [i for i in range(len(slots)) if i not in set(extra)]
    first = min(slots[j].step for j in extra)
    later = [k for k, i in enumerate(keep) if slots[i].step > first]
    diff = (ko.logits[keep][later] - rep.logits[later]).abs().max().item()
    print(f"[M5] bundled: {len(extra)} rank ≥ 1 members knocked out in all layers vs the "
          f"tree without them, {len(later)} later queries: max |logit diff| = {diff:.2e}")
    assert diff < 1e-3
