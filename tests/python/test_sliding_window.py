"""Sliding-window attention (Mistral and Phi-3 on every layer, Qwen2 from max_window_layers
on, Gemma 2 on alternate layers, Gemma 3 on all but every pattern-th, with its own RoPE):
the window is applied inside each attention layer on logical positions (a key is visible
to a query only while q − k < window, HF's rule on token indices), intersected with the
pass's visibility. Checked against HF eager on tiny models with a window shorter than the
run: HF's own per-layer-type masks in a serial pass (where positions are indices, so HF's
rule and attnvar's coincide), prefill and decode through the cache; and HF given explicit
4-D masks built from the rule, one per layer type, in passes with a parallel set at one
shared position. Max differences are printed."""

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
SLIDING = ["mistral", "phi3", "qwen2", "gemma2", "gemma3"]


def windowed(family: str):
    shape = {"sliding_window": WINDOW}
    if family == "qwen2":  # layer-dependent: the window from max_window_layers (1) on
        shape.update(use_sliding_window=True, max_window_layers=1,
                     layer_types=["full_attention", "sliding_attention", "sliding_attention"])
    return tiny_hf_model(family, shape=shape)


def hf_masks(hf, visible: torch.Tensor, positions: torch.Tensor):
    """The explicit masks for HF: per layer type where the model takes them (a dict), else
    the one mask of a model whose every layer slides."""
    rule = visible & ((positions[:, None] - positions[None, :]) < WINDOW)
    if "sliding_attention" in (getattr(hf.config, "layer_types", None) or []) and \
            hf.config.model_type in ("qwen2", "gemma2", "gemma3_text"):
        return {"full_attention": additive_mask(visible),
                "sliding_attention": additive_mask(rule)}, rule
    return additive_mask(rule), rule


@pytest.mark.parametrize("family", SLIDING)
def test_serial_prefill_and_decode_match_hf_own_sliding_mask(family):
    hf = windowed(family)
    ours = attnvar_model(hf)
    assert ours.config["model_type"] == hf.config.model_type
    kinds = ours.config["layer_types"]
    assert kinds == (getattr(hf.config, "layer_types", None) or ["sliding_attention"] * 3)
    n = 12
    ids = torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(1))
    logits, attn = hf_forward(hf, ids)  # no explicit mask: HF builds its sliding mask
    out = ours.forward(ours.new_cache(), ids, torch.arange(float(n)),
                       _core.causal_visibility(n, 0), capture=True)
    assert report(f"{family} window {WINDOW} prefill logits", out["logits"], logits) < TOL
    far = torch.ones(n, n, dtype=torch.bool).tril(-WINDOW)
    for layer, (a, b) in enumerate(zip(out["attention"], attn, strict=True)):
        assert report(f"{family} window prefill attention L{layer}", a, b) < TOL
        # In a sliding layer keys WINDOW or more behind get exactly 0; a full layer sees them.
        if kinds[layer] == "sliding_attention":
            assert torch.count_nonzero(a[:, far]) == 0
        else:
            assert torch.count_nonzero(a[:, far]) == a[:, far].numel()
    cache = ours.new_cache()
    ours.forward(cache, ids[:3], torch.arange(3.0), _core.causal_visibility(3, 0))
    worst = 0.0
    for t in range(3, n):
        step = ours.forward(cache, ids[t:t + 1], torch.tensor([float(t)]),
                            _core.causal_visibility(1, t))
        worst = max(worst, (step["logits"][0] - logits[t]).abs().max().item())
    print(f"[parity] {family} window {WINDOW} decode through the cache: max |diff| = {worst:.3e}")
    assert worst < TOL


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma2", "gemma3"])
@pytest.mark.parametrize("mode", ["isolated", "visible", "causal"])
def test_shared_position_set_matches_hf_with_the_rule_as_an_explicit_mask(family, mode):
    hf = windowed(family)
    ours = attnvar_model(hf)
    positions, visible = tree_layout(6, 3, mode)
    n = positions.shape[0]
    ids = torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(2))
    masks, rule = hf_masks(hf, visible, positions)
    with torch.no_grad():
        expected = hf(input_ids=ids[None], position_ids=positions[None].long(),
                      attention_mask=masks, output_attentions=True, use_cache=False)
    # In one pass, and online: prefill, the set in one pass, then the next token.
    out = ours.forward(ours.new_cache(), ids, positions, visible, capture=True)
    assert report(f"{family} window {mode} shared-position logits", out["logits"],
                  expected.logits[0]) < TOL
    for layer, (a, b) in enumerate(zip(out["attention"], expected.attentions, strict=True)):
        assert report(f"{family} window {mode} attention L{layer}", a, b[0]) < TOL
    cache = ours.new_cache()
    P, k = 6, 3
    passes = [
        ours.forward(cache, ids[:P], positions[:P], _core.causal_visibility(P, 0)),
        ours.forward(cache, ids[P:P + k], positions[P:P + k], _core.set_visibility(k, P, mode)),
        ours.forward(cache, ids[P + k:], positions[P + k:], _core.causal_visibility(1, P + k)),
    ]
    online = torch.cat([p["logits"] for p in passes])
    assert report(f"{family} window {mode} online logits", online, expected.logits[0]) < TOL
    # The members share a position: the window counts positions, not slots, so the slot
    # after the set (position P + 1) still sees the prompt token at P + 1 − (WINDOW − 1).
    last = n - 1
    assert bool(rule[last, int(positions[last].item()) - (WINDOW - 1)])


BASE = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 7, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.mark.parametrize("cfg,kinds", [
    # Without layer_types the family's rule decides, as transformers derives it.
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4,
      "max_window_layers": 5}, "FFFFFSS"),
    ({"model_type": "qwen2", "use_sliding_window": False, "sliding_window": 4}, "FFFFFFF"),
    ({"model_type": "mistral", "sliding_window": 4}, "SSSSSSS"),
    ({"model_type": "mistral", "sliding_window": None}, "FFFFFFF"),
    ({"model_type": "gemma2", "sliding_window": 4}, "SFSFSFS"),
    ({"model_type": "gemma3_text", "sliding_window": 4}, "SSSSSFS"),
    ({"model_type": "gemma3_text", "sliding_window": 4, "sliding_window_pattern": 3},
     "SSFSSFS"),
    ({"model_type": "gemma2", "sliding_window": 4, "layer_types": ["full_attention"] * 7},
     "FFFFFFF"),
])
def test_layer_kinds_follow_each_family_rule(cfg, kinds):
    import json

    got = _core.config_from_hf_json(json.dumps({**BASE, **cfg}), "cfg.json")["layer_types"]
    assert "".join("S" if k == "sliding_attention" else "F" for k in got) == kinds


def test_bad_layer_types_are_named():
    import json

    for bad, why in [(["full_attention"] * 3, "3 entries for 7 layers"),
                     (["full_attention"] * 6 + ["chunked_attention"], "chunked_attention")]:
        with pytest.raises(_core.ConfigError, match=f"cfg.json: config field 'layer_types'.*{why}"):
            _core.config_from_hf_json(json.dumps({**BASE, "model_type": "gemma2",
                                                  "layer_types": bad}), "cfg.json")


def test_a_query_the_window_leaves_nothing_to_see_is_refused():
    """A query whose visible keys all lie a window or more behind it (here: it sees only
    the first slot, at position 0, from position 9) would give NaN probabilities."""
    ours = attnvar_model(windowed("mistral"))
    vis = torch.zeros(10, 10, dtype=torch.bool)
    vis[:9] = torch.ones(9, 10, dtype=torch.bool).tril()[:9]
    vis[9, 0] = True
    with pytest.raises(_core.ConfigError, match="query 9 of the pass sees no slot within the "
                                                "sliding window of 4 positions"):
        ours.forward(ours.new_cache(), torch.arange(3, 13), torch.arange(10.0), vis)


# config.json as transformers 4.x wrote Gemma 2 and Gemma 3 (the spelling of the released
# checkpoints): no layer_types, the local RoPE base as rope_local_base_freq, the global
# scaling as rope_scaling, the pattern as sliding_window_pattern.
LEGACY = {
    "gemma2": {"model_type": "gemma2", "hidden_act": "gelu_pytorch_tanh",
               "hidden_activation": "gelu_pytorch_tanh", "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 24,
               "sliding_window": 4, "rope_theta": 10000.0, "head_dim": 16},
    "gemma3_text": {"model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh",
                    "attn_logit_softcapping": None, "final_logit_softcapping": None,
                    "query_pre_attn_scalar": 16, "rope_local_base_freq": 10000,
                    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
                    "rope_theta": 1000000, "sliding_window": 4, "sliding_window_pattern": 3,
                    "head_dim": 16},
}


@pytest.mark.parametrize("model_type", list(LEGACY))
def test_legacy_gemma_config_spelling_reads_as_transformers_reads_it(model_type):
    import json

    legacy = {**BASE, "num_hidden_layers": 4, "max_position_embeddings": 256,
              "rms_norm_eps": 1e-6, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1,
              **LEGACY[model_type]}
    cls = {"gemma2": "Gemma2", "gemma3_text": "Gemma3"}[model_type]
    config = getattr(transformers, "Gemma2Config" if cls == "Gemma2" else "Gemma3TextConfig")(
        **legacy)
    config._attn_implementation = "eager"
    torch.manual_seed(4)
    hf = getattr(transformers, f"{cls}ForCausalLM")(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(0.15 * torch.randn_like(p))
    ours = _core.Model.from_tensors(json.dumps(legacy),
                                    {k: v.detach().clone() for k, v in hf.state_dict().items()})
    assert ours.config["layer_types"] == config.layer_types
    n = 10
    ids = torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(6))
    logits, attn = hf_forward(hf, ids)
    out = ours.forward(ours.new_cache(), ids, torch.arange(float(n)),
                       _core.causal_visibility(n, 0), capture=True)
    assert report(f"{model_type} legacy config logits", out["logits"], logits) < TOL
    for layer, (a, b) in enumerate(zip(out["attention"], attn, strict=True)):
        assert report(f"{model_type} legacy config attention L{layer}", a, b) < TOL
