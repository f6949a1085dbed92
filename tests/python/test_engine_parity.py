"""The engine against HF transformers eager attention on tiny random models of each family:
logits and every layer's attention probabilities, printed as max differences."""

from __future__ import annotations

import pytest
import torch

from attnvar import _core

transformers = pytest.importorskip("transformers")

from tiny_models import (  # noqa: E402
    FAMILIES,
    SHAPES,
    attnvar_model,
    hf_forward,
    report,
    tiny_hf_model,
)

TOL = 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_prefill_matches_hf(family):
    hf = tiny_hf_model(family)
    ours = attnvar_model(hf)
    ids = torch.randint(3, 97, (11,))
    logits, attn = hf_forward(hf, ids)
    cache = ours.new_cache()
    out = ours.forward(cache, ids, torch.arange(11.0), _core.causal_visibility(11, 0), capture=True)
    assert report(f"{family} prefill logits", out["logits"], logits) < TOL
    assert out["layers"] == list(range(hf.config.num_hidden_layers))
    for layer, (a, b) in enumerate(zip(out["attention"], attn, strict=True)):
        assert report(f"{family} prefill attention L{layer}", a, b) < TOL
    assert cache.size == 11


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_decode_through_cache_matches_hf(family):
    hf = tiny_hf_model(family)
    ours = attnvar_model(hf)
    ids = torch.randint(3, 97, (12,))
    logits, attn = hf_forward(hf, ids)
    cache = ours.new_cache(initial_capacity=4)  # forces geometric growth on the way
    out = ours.forward(cache, ids[:5], torch.arange(5.0), _core.causal_visibility(5, 0))
    worst = report(f"{family} prefill(5) logits", out["logits"], logits[:5])
    for t in range(5, 12):
        step = ours.forward(
            cache, ids[t : t + 1], torch.tensor([float(t)]), _core.causal_visibility(1, t),
            capture=True,
        )
        worst = max(worst, (step["logits"][0] - logits[t]).abs().max().item())
        for layer in range(hf.config.num_hidden_layers):
            row = step["attention"][layer][:, 0, :]  # (H, t + 1)
            worst = max(worst, (row - attn[layer][:, t, : t + 1]).abs().max().item())
    print(f"[parity] {family} decode logits+attention: max |diff| = {worst:.3e}")
    assert worst < TOL
    assert cache.capacity >= 12


def tree_layout(prompt_len: int, k: int, mode: str):
    """Prompt, then a parallel set of k members at position P, then one token at P + 1
    that sees everything. Returns positions and the (N, N) visibility."""
    n = prompt_len + k + 1
    positions = torch.tensor(
        [float(i) for i in range(prompt_len)] + [float(prompt_len)] * k + [prompt_len + 1.0]
    )
    visible = torch.ones(n, n, dtype=torch.bool).tril()
    s = prompt_len
    if mode == "isolated":
        visible[s : s + k, s : s + k] = torch.eye(k, dtype=torch.bool)
    elif mode == "visible":
        visible[s : s + k, s : s + k] = True
    return positions, visible


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["isolated", "visible", "causal"])
def test_parallel_set_at_shared_position_matches_hf_with_explicit_mask(family, mode):
    hf = tiny_hf_model(family)
    ours = attnvar_model(hf)
    P, k = 6, 3
    ids = torch.randint(3, 97, (P + k + 1,))
    positions, visible = tree_layout(P, k, mode)
    logits, attn = hf_forward(hf, ids, positions, visible)

    # Online: prefill, the set in one pass, then the next token.
    cache = ours.new_cache()
    passes = [
        ours.forward(cache, ids[:P], positions[:P], _core.causal_visibility(P, 0), capture=True),
        ours.forward(cache, ids[P : P + k], positions[P : P + k], _core.set_visibility(k, P, mode),
                     capture=True),
        ours.forward(cache, ids[P + k :], positions[P + k :], _core.causal_visibility(1, P + k),
                     capture=True),
    ]
    n = P + k + 1
    got_logits = torch.cat([p["logits"] for p in passes])
    assert report(f"{family}/{mode} tree logits", got_logits, logits) < TOL
    for layer in range(hf.config.num_hidden_layers):
        full = torch.zeros(hf.config.num_attention_heads, n, n)
        row = 0
        for p in passes:
            a = p["attention"][layer]
            full[:, row : row + a.shape[1], : a.shape[2]] = a
            row += a.shape[1]
        assert report(f"{family}/{mode} tree attention L{layer}", full, attn[layer]) < TOL
        # Masked entries are exactly zero; rows sum to one over visible keys.
        assert torch.all(full[:, ~visible] == 0)
        assert torch.allclose(full.sum(-1), torch.ones(full.shape[:2]), atol=1e-5)

    # The same tree in one teacher-forced pass gives the same numbers.
    one = ours.forward(ours.new_cache(), ids, positions, visible, capture=True)
    assert report(f"{family}/{mode} one-pass logits", one["logits"], logits) < TOL
    for layer in range(hf.config.num_hidden_layers):
        assert (one["attention"][layer] - attn[layer]).abs().max().item() < TOL


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("family", FAMILIES)
def test_other_head_counts_and_head_dims_match_hf(family, shape):
    """Multi-query (8 heads, 1 kv head), multi-head (2 × 32) and a head_dim that is not
    hidden / heads (4 × 24 over a hidden size of 64), with a parallel set at one position."""
    hf = tiny_hf_model(family, shape=SHAPES[shape])
    ours = attnvar_model(hf)
    assert ours.config["head_dim"] == SHAPES[shape]["head_dim"]
    positions, visible = tree_layout(5, 3, "isolated")
    n = positions.shape[0]
    ids = torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(3))
    logits, attn = hf_forward(hf, ids, positions, visible)
    out = ours.forward(ours.new_cache(), ids, positions, visible, capture=True)
    assert report(f"{family} {shape} logits", out["logits"], logits) < TOL
    for layer, (a, b) in enumerate(zip(out["attention"], attn, strict=True)):
        assert report(f"{family} {shape} attention L{layer}", a, b) < TOL
