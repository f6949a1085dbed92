"""Engine behaviour beyond HF parity: fast path, capture options, interventions, the KV
cache's truncate/remove, and clear errors that leave the cache untouched."""

from __future__ import annotations

import pytest
import torch

import attnvar
from attnvar import _core

pytest.importorskip("transformers")

from tiny_models import attnvar_model, tiny_hf_model  # noqa: E402


@pytest.fixture(scope="module")
def hf():
    return tiny_hf_model("llama", seed=3)


@pytest.fixture(scope="module")
def model(hf):
    return attnvar_model(hf)


def prefill(model, ids, **kw):
    cache = model.new_cache()
    out = model.forward(cache, ids, torch.arange(float(len(ids))),
                        _core.causal_visibility(len(ids), 0), **kw)
    return cache, out


def test_fast_path_equals_capture_path(model):
    ids = torch.randint(3, 97, (9,))
    _, fast = prefill(model, ids)
    _, slow = prefill(model, ids, capture=True)
    d = (fast["logits"] - slow["logits"]).abs().max().item()
    print(f"[parity] fused fast path vs explicit capture path logits: max |diff| = {d:.3e}")
    assert d < 1e-5
    assert fast["attention"] == [] and len(slow["attention"]) == 3


def test_capture_selects_layers_heads_and_dtype(model):
    ids = torch.randint(3, 97, (7,))
    _, full = prefill(model, ids, capture=True, scores=True)
    _, part = prefill(model, ids, capture=True, layers=[2, 0], heads=[3, 1], scores=True,
                      capture_dtype="float16")
    assert part["layers"] == [0, 2]
    for i, layer in enumerate([0, 2]):
        a = part["attention"][i]
        assert a.dtype == torch.float16 and a.shape == (2, 7, 7)
        assert torch.allclose(a.float(), full["attention"][layer][[3, 1]], atol=1e-3)
    with pytest.raises(attnvar.ConfigError, match="capture dtype"):
        prefill(model, ids, capture=True, capture_dtype="int8")


def test_scores_are_masked_minus_inf_and_softmax_to_the_probabilities(model):
    ids = torch.randint(3, 97, (6,))
    cache, _ = prefill(model, ids)
    vis = _core.set_visibility(3, 6, "isolated")
    out = model.forward(cache, torch.tensor([5, 6, 7]), torch.full((3,), 6.0), vis,
                        capture=True, scores=True)
    for s, a in zip(out["scores"], out["attention"], strict=True):
        assert torch.all(torch.isneginf(s[:, ~vis]))
        assert torch.all(a[:, ~vis] == 0)
        assert torch.allclose(torch.softmax(s, -1), a, atol=1e-6)


def test_value_norms_equal_the_norm_of_each_heads_output_contribution(model, hf):
    ids = torch.randint(3, 97, (8,))
    cache, out = prefill(model, ids, capture=True, value_norms=True)
    heads, kv_heads, d = 4, 2, 16
    for layer in range(3):
        o_proj = hf.model.layers[layer].self_attn.o_proj.weight.detach()  # (hidden, H*D)
        values = cache.values(layer)  # (Hkv, S, D)
        expected = torch.stack([
            (values[h // (heads // kv_heads)] @ o_proj[:, h * d : (h + 1) * d].T).norm(dim=-1)
            for h in range(heads)
        ])
        got = out["value_norms"][layer]
        diff = (got - expected).abs().max().item()
        print(f"[parity] value norms L{layer}: max |diff| = {diff:.3e}")
        assert got.shape == (heads, 8) and diff < 1e-5


def test_key_bias_shifts_scores_by_delta_only_in_the_window(model):
    ids = torch.randint(3, 97, (8,))
    _, base = prefill(model, ids, capture=True, scores=True)
    delta = -0.6931471805599453  # −log 2, the metrics' positive control (docs/metrics.md)
    iv = [{"layer_begin": 1, "layer_end": 2, "heads": [0, 2], "key_slots": [2, 4], "delta": delta}]
    _, hit = prefill(model, ids, capture=True, scores=True, interventions=iv)
    assert torch.equal(hit["scores"][0], base["scores"][0])  # before the window: untouched
    diff = hit["scores"][1] - base["scores"][1]
    finite = torch.isfinite(diff)
    expected = torch.zeros_like(diff)
    expected[[0, 2][0], :, [2, 4]] = delta
    expected[2][:, [2, 4]] = delta
    err = (diff[finite] - expected[finite]).abs().max().item()
    print(f"[parity] injected key bias in its layer: max |diff - delta| = {err:.3e}")
    assert err < 1e-5
    assert not torch.equal(hit["scores"][2], base["scores"][2])  # propagates to later layers


def test_knockout_zeroes_attention_to_the_keys_and_hiding_all_is_an_error(model):
    ids = torch.randint(3, 97, (8,))
    iv = [{"layer_begin": 0, "layer_end": 3, "key_slots": [1, 3]}]
    _, out = prefill(model, ids, capture=True, interventions=iv)
    for a in out["attention"]:
        assert torch.all(a[:, :, [1, 3]] == 0)
    # Query 0 sees only slot 0: knocking it out leaves nothing to attend to.
    cache = model.new_cache()
    with pytest.raises(attnvar.ConfigError, match="hide every key"):
        model.forward(cache, ids, torch.arange(8.0), _core.causal_visibility(8, 0),
                      interventions=[{"layer_begin": 0, "layer_end": 1, "key_slots": [0]}])
    assert cache.size == 0


def test_truncate_equals_a_cache_built_from_the_remaining_tokens(model):
    ids = torch.randint(3, 97, (10,))
    cache, _ = prefill(model, ids)
    cache.truncate(6)
    direct, _ = prefill(model, ids[:6])
    assert cache.size == 6 and cache.token_ids == ids[:6].tolist()
    # Equal up to BLAS blocking (a 10-row and a 6-row matmul round differently).
    worst = 0.0
    for layer in range(3):
        worst = max(worst, (cache.keys(layer) - direct.keys(layer)).abs().max().item(),
                    (cache.values(layer) - direct.values(layer)).abs().max().item())
    a = model.forward(cache, ids[6:7], torch.tensor([6.0]), _core.causal_visibility(1, 6))
    b = model.forward(direct, ids[6:7], torch.tensor([6.0]), _core.causal_visibility(1, 6))
    worst = max(worst, (a["logits"] - b["logits"]).abs().max().item())
    print(f"[parity] truncated vs directly built cache: max |diff| = {worst:.3e}")
    assert worst < 1e-5


def test_remove_slots_deletes_exactly_those_rows(model):
    ids = torch.randint(3, 97, (9,))
    cache, _ = prefill(model, ids)
    before = [(cache.keys(layer), cache.values(layer)) for layer in range(3)]
    cache.remove_slots([7, 2, 4])
    keep = [0, 1, 3, 5, 6, 8]
    assert cache.size == 6 and cache.token_ids == ids[keep].tolist()
    assert cache.positions.tolist() == [float(i) for i in keep]
    for layer in range(3):
        assert torch.equal(cache.keys(layer), before[layer][0][:, keep])
        assert torch.equal(cache.values(layer), before[layer][1][:, keep])
    # A direct rebuild from the kept tokens differs in later layers: the kept tokens had
    # attended to the removed ones, and removal does not recompute them.
    rebuilt = model.new_cache()
    model.forward(rebuilt, ids[keep], torch.tensor([float(i) for i in keep]),
                  _core.causal_visibility(6, 0))
    assert torch.allclose(rebuilt.keys(0)[:, :2], cache.keys(0)[:, :2], atol=1e-5)
    assert not torch.allclose(rebuilt.keys(2), cache.keys(2), atol=1e-3)
    with pytest.raises(attnvar.ConfigError):
        cache.remove_slots([6])
    with pytest.raises(attnvar.ConfigError):
        cache.remove_slots([1, 1])


@pytest.mark.parametrize(
    "ids, positions, vis, match",
    [
        (torch.tensor([3, 200]), torch.tensor([4.0, 5.0]), "causal", "vocabulary"),
        (torch.tensor([3, 4]), torch.tensor([4.0]), "causal", "positions"),
        (torch.tensor([3, 4]), torch.tensor([4.0, float("nan")]), "causal", "finite"),
        (torch.tensor([3, 4]), torch.tensor([4.0, 5.0]), "wrong-shape", "visibility"),
        (torch.tensor([3, 4]), torch.tensor([4.0, 5.0]), "blind", "sees no slot"),
        (torch.tensor([], dtype=torch.long), torch.tensor([]), "causal", "non-empty"),
    ],
)
def test_bad_inputs_raise_config_error_and_leave_the_cache_unchanged(model, ids, positions, vis,
                                                                     match):
    cache, _ = prefill(model, torch.tensor([5, 6, 7, 8]))
    keys = cache.keys(0)
    n = len(ids)
    visibility = {
        "causal": _core.causal_visibility(max(n, 1), 4)[:n],
        "wrong-shape": torch.ones(n, n, dtype=torch.bool),
        "blind": torch.zeros(n, 4 + n, dtype=torch.bool),
    }[vis]
    with pytest.raises(attnvar.ConfigError, match=match):
        model.forward(cache, ids, positions, visibility)
    assert cache.size == 4 and torch.equal(cache.keys(0), keys)


def test_missing_tensor_and_shape_mismatch_name_the_tensor(hf):
    import json

    cfg = json.dumps(hf.config.to_dict())
    tensors = dict(hf.state_dict())
    del tensors["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(attnvar.FormatError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        _core.Model.from_tensors(cfg, tensors, origin="demo.safetensors")
    tensors = dict(hf.state_dict())
    tensors["model.norm.weight"] = torch.ones(3)
    with pytest.raises(attnvar.FormatError, match=r"demo.*model\.norm\.weight.*shape"):
        _core.Model.from_tensors(cfg, tensors, origin="demo")


def test_bfloat16_model_tracks_float32(hf, model):
    ids = torch.randint(3, 97, (8,))
    _, f32 = prefill(model, ids)
    _, bf16 = prefill(attnvar_model(hf, dtype=torch.bfloat16), ids)
    d = (bf16["logits"] - f32["logits"]).abs().max().item()
    # Yardstick: how far HF's own bf16 run lands from f32 on the same input.
    import copy

    hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
    with torch.no_grad():
        ref = hf_bf16(input_ids=ids[None]).logits[0].float()
    d_hf = (ref - f32["logits"]).abs().max().item()
    print(f"[parity] bf16 vs f32 logits: attnvar {d:.3e}, HF transformers {d_hf:.3e}")
    assert bf16["logits"].dtype == torch.float32
    assert d <= 2 * d_hf + 1e-3


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17])
def test_project_matches_torch_linear_at_every_row_count(rows):
    # 1-16 rows take gemv_rows (its tiles change between 1, 2-5 and 6-16 rows), 17 takes
    # linear; odd sizes exercise the 8-column tails and the output blocks.
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 2 * 77, generator=g)[:, ::2]  # strided rows
    w = torch.randn(45, 77, generator=g)
    b = torch.randn(45, generator=g)
    got, ref = _core.project(x, w, b), torch.nn.functional.linear(x, w, b)
    d = (got - ref).abs().max().item()
    print(f"[parity] project rows={rows} vs torch linear: max |diff| = {d:.3e}")
    assert got.shape == (rows, 45) and d < 1e-4
    if rows <= 16:  # gemv_rows: a row's result is the same alone as in any batch
        assert torch.equal(_core.project(x[:1], w, b)[0], got[0])
    assert torch.allclose(_core.project(x, w), torch.nn.functional.linear(x, w), atol=1e-4)


def test_project_rejects_mismatched_shapes_naming_them():
    w = torch.randn(5, 7)
    with pytest.raises(attnvar.ConfigError, match=r"x \[3, 6\] and w \[5, 7\]"):
        _core.project(torch.randn(3, 6), w)
    with pytest.raises(attnvar.ConfigError, match=r"b must be \(out,\) = \(5,\); got \[4\]"):
        _core.project(torch.randn(3, 7), w, torch.randn(4))


def test_soft_capped_scores_take_a_key_bias_exactly_and_stay_inside_the_cap():
    """Gemma 2 caps scores at ±cap (cap · tanh(s / cap)) before the mask and any key bias
    are added: the captured scores are what enters the softmax, the visible ones inside the
    cap, and a −log 2 bias moves the biased keys' scores by −log 2 (the cap does not squash
    it), in the layer it names only."""
    gemma = attnvar_model(tiny_hf_model("gemma2", seed=5))
    cap = gemma.config["attn_logit_softcapping"]
    assert cap == 5.0
    ids = torch.randint(3, 97, (8,))
    _, base = prefill(gemma, ids, capture=True, scores=True)
    for s in base["scores"]:
        finite = s[torch.isfinite(s)]
        assert finite.abs().max().item() < cap
    delta = -0.6931471805599453
    iv = [{"layer_begin": 1, "layer_end": 2, "key_slots": [2, 4], "delta": delta}]
    _, hit = prefill(gemma, ids, capture=True, scores=True, interventions=iv)
    assert torch.equal(hit["scores"][0], base["scores"][0])
    diff = hit["scores"][1] - base["scores"][1]
    finite = torch.isfinite(diff)
    expected = torch.zeros_like(diff)
    expected[:, :, [2, 4]] = delta
    err = (diff[finite] - expected[finite]).abs().max().item()
    print(f"[parity] gemma2 key bias after soft-capping: max |diff - delta| = {err:.3e}")
    assert err < 1e-6
