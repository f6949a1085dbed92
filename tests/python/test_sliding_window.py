"""Sliding-window attention (Mistral, Phi-3): the window is applied inside the engine on
logical positions (a key is visible to a query only while q − k < window, HF's rule on
token indices), intersected with the pass's visibility. Checked against HF eager on tiny
models with a window shorter than the run: HF's own sliding mask in a serial pass (where
positions are indices, so HF's rule and attnvar's coincide), prefill and decode through
the cache; and HF given the explicit 4-D mask built from the rule in passes with a parallel
set at one shared position. Max differences are printed."""

from __future__ import annotations

import pytest
import torch

from attnvar import _core

transformers = pytest.importorskip("transformers")

from test_engine_parity import tree_layout  # noqa: E402
from tiny_models import (  # noqa: E402
    additive_mask,
    attnvar_model,
    hf_forward,
    report,
    tiny_hf_model,
)

WINDOW = 4
TOL = 1e-4


def windowed(family: str):
    return tiny_hf_model(family, shape={"sliding_window": WINDOW})


@pytest.mark.parametrize("family", ["mistral", "phi3"])
def test_serial_prefill_and_decode_match_hf_own_sliding_mask(family):
    hf = windowed(family)
    ours = attnvar_model(hf)
    assert ours.config["model_type"] == family
    n = 12
    ids = torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(1))
    logits, attn = hf_forward(hf, ids)  # no explicit mask: HF builds its sliding mask
    out = ours.forward(ours.new_cache(), ids, torch.arange(float(n)),
                       _core.causal_visibility(n, 0), capture=True)
    assert report(f"{family} window {WINDOW} prefill logits", out["logits"], logits) < TOL
    for layer, (a, b) in enumerate(zip(out["attention"], attn, strict=True)):
        assert report(f"{family} window prefill attention L{layer}", a, b) < TOL
        # Keys WINDOW or more behind get exactly 0.
        far = torch.ones(n, n, dtype=torch.bool).tril(-WINDOW)
        assert torch.count_nonzero(a[:, far]) == 0
    cache = ours.new_cache()
    ours.forward(cache, ids[:3], torch.arange(3.0), _core.causal_visibility(3, 0))
    worst = 0.0
    for t in range(3, n):
        step = ours.forward(cache, ids[t:t + 1], torch.tensor([float(t)]),
                            _core.causal_visibility(1, t))
        worst = max(worst, (step["logits"][0] - logits[t]).abs().max().item())
    print(f"[parity] {family} window {WINDOW} decode through the cache: max |diff| = {worst:.3e}")
    assert worst < TOL


@pytest.mark.parametrize("mode", ["isolated", "visible", "causal"])
def test_shared_position_set_matches_hf_with_the_rule_as_an_explicit_mask(mode):
    hf = windowed("mistral")
    ours = attnvar_model(hf)
    positions, visible = tree_layout(6, 3, mode)
    n = positions.shape[0]
    ids = torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(2))
    rule = visible & ((positions[:, None] - positions[None, :]) < WINDOW)
    with torch.no_grad():
        expected = hf(input_ids=ids[None], position_ids=positions[None].long(),
                      attention_mask=additive_mask(rule), output_attentions=True,
                      use_cache=False)
    out = ours.forward(ours.new_cache(), ids, positions, visible, capture=True)
    assert report(f"mistral window {mode} shared-position logits", out["logits"],
                  expected.logits[0]) < TOL
    for layer, (a, b) in enumerate(zip(out["attention"], expected.attentions, strict=True)):
        assert report(f"mistral window {mode} attention L{layer}", a, b[0]) < TOL
    # The members share a position: the window counts positions, not slots, so the slot
    # after the set (position P + 1) still sees the prompt token at P + 1 − (WINDOW − 1).
    last = n - 1
    assert bool(rule[last, int(positions[last].item()) - (WINDOW - 1)])


def test_qwen2_layer_dependent_window_is_still_refused_past_the_window():
    import json

    cfg = {"model_type": "qwen2", "vocab_size": 97, "hidden_size": 64,
           "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "use_sliding_window": True, "sliding_window": 4,
           "max_window_layers": 1}
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**cfg))
    tensors = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    ours = _core.Model.from_tensors(json.dumps(cfg), tensors)
    with pytest.raises(_core.ConfigError, match="layer-dependent sliding window"):
        ours.forward(ours.new_cache(), torch.arange(3, 9), torch.arange(6.0),
                     _core.causal_visibility(6, 0))
