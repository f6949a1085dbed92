"""Named hook points (TransformerLens names) against HF transformers eager on tiny random
models of every family, in a serial pass and in a pass with a parallel set at a shared
position (explicit 4-D mask and position_ids). References come from forward hooks at HF's
module boundaries (q/k/v_proj outputs, o_proj's input, the norms, the MLP, the decoder
layers); post-RoPE q/k are recomputed from them with transformers' own
apply_rotary_pos_emb and rotary embedding. Max differences are printed."""

from __future__ import annotations

import inspect

import pytest
import torch

from attnvar import ConfigError, _core

transformers = pytest.importorskip("transformers")

from test_engine_parity import tree_layout  # noqa: E402
from tiny_models import FAMILIES, additive_mask, attnvar_model, report, tiny_hf_model  # noqa: E402

TOL = 1e-5
POINTS = ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q",
          "attn.hook_rot_k", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "mlp.hook_post",
          "hook_mlp_out", "hook_resid_post"]


def hf_hook_values(model, ids, positions, visible) -> dict[str, torch.Tensor]:
    """Every hook point of one HF eager pass, by TransformerLens name, tokens first."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name, take):
        def hook(module, args, output=None):
            seen[name] = take(args, output)[0].detach().clone()
        return hook

    def out_hook(name):
        return keep(name, lambda a, o: o[0] if isinstance(o, tuple) else o)

    def in_hook(name):
        return keep(name, lambda a, o: a[0])

    # OLMo 2, Gemma 2/3: a norm after each block, whose output is the block's output
    post_norms = hasattr(model.model.layers[0], "post_feedforward_layernorm")
    for index, layer in enumerate(model.model.layers):
        b = f"blocks.{index}."
        attn = layer.self_attn
        handles += [
            layer.register_forward_pre_hook(in_hook(b + "hook_resid_pre")),
            attn.o_proj.register_forward_pre_hook(in_hook(b + "z_flat")),
            layer.mlp.down_proj.register_forward_pre_hook(in_hook(b + "mlp.hook_post")),
            layer.register_forward_hook(out_hook(b + "hook_resid_post")),
        ]
        if hasattr(attn, "qkv_proj"):  # Phi-3: one fused projection, rows q, k, v
            handles.append(attn.qkv_proj.register_forward_hook(out_hook(b + "qkv_flat")))
        else:
            handles += [attn.q_proj.register_forward_hook(out_hook(b + "q_flat")),
                        attn.k_proj.register_forward_hook(out_hook(b + "k_flat")),
                        attn.v_proj.register_forward_hook(out_hook(b + "v_flat"))]
        if post_norms:  # a block's output is its post-norm's; resid_mid is computed below
            handles += [
                layer.post_attention_layernorm.register_forward_hook(
                    out_hook(b + "hook_attn_out")),
                layer.post_feedforward_layernorm.register_forward_hook(
                    out_hook(b + "hook_mlp_out")),
            ]
        else:
            handles += [
                attn.register_forward_hook(out_hook(b + "hook_attn_out")),
                layer.post_attention_layernorm.register_forward_pre_hook(
                    in_hook(b + "hook_resid_mid")),
                layer.mlp.register_forward_hook(out_hook(b + "hook_mlp_out")),
            ]
        if hasattr(attn, "q_norm"):
            handles += [attn.q_norm.register_forward_hook(out_hook(b + "q_normed")),
                        attn.k_norm.register_forward_hook(out_hook(b + "k_normed"))]
    handles.append(model.model.norm.register_forward_hook(out_hook("ln_final.hook_normalized")))
    try:
        with torch.no_grad():
            model(input_ids=ids[None], position_ids=positions[None].long(),
                  attention_mask=additive_mask(visible), use_cache=False)
            x, pos = seen["ln_final.hook_normalized"][None], positions[None].long()
            kinds = getattr(cfg, "layer_types", None) or ["full_attention"]
            if "layer_type" in inspect.signature(model.model.rotary_emb.forward).parameters:
                # Gemma 3: local and global layers have their own RoPE tables
                tables = {kind: model.model.rotary_emb(x, pos, kind) for kind in set(kinds)}
            else:
                tables = dict.fromkeys(set(kinds), model.model.rotary_emb(x, pos))
    finally:
        for h in handles:
            h.remove()
    n = ids.shape[0]
    for index in range(cfg.num_hidden_layers):
        b = f"blocks.{index}."
        if b + "qkv_flat" in seen:
            q_rows, kv_rows = heads * head_dim, kv_heads * head_dim
            qkv = seen.pop(b + "qkv_flat")
            seen[b + "q_flat"], seen[b + "k_flat"], seen[b + "v_flat"] = qkv.split(
                [q_rows, kv_rows, kv_rows], dim=-1)
        if b + "hook_resid_mid" not in seen:
            seen[b + "hook_resid_mid"] = seen[b + "hook_resid_pre"] + seen[b + "hook_attn_out"]
        seen[b + "attn.hook_q"] = seen.pop(b + "q_flat").view(n, heads, head_dim)
        seen[b + "attn.hook_k"] = seen.pop(b + "k_flat").view(n, kv_heads, head_dim)
        seen[b + "attn.hook_v"] = seen.pop(b + "v_flat").view(n, kv_heads, head_dim)
        seen[b + "attn.hook_z"] = seen.pop(b + "z_flat").view(n, heads, head_dim)
        q = seen.pop(b + "q_normed", seen[b + "attn.hook_q"])
        k = seen.pop(b + "k_normed", seen[b + "attn.hook_k"])
        if cfg.model_type == "gemma3_text":  # its q/k norms run on (heads, tokens, head_dim)
            q, k = q.transpose(0, 1), k.transpose(0, 1)
        q, k = q.reshape(n, heads, head_dim), k.reshape(n, kv_heads, head_dim)
        cos, sin = tables[kinds[index] if len(kinds) > index else kinds[0]]
        rot_q, rot_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                            cos, sin)
        seen[b + "attn.hook_rot_q"] = rot_q[0].transpose(0, 1)
        seen[b + "attn.hook_rot_k"] = rot_k[0].transpose(0, 1)
    return seen


def layout(kind: str, n_prompt: int = 6, k: int = 3):
    if kind == "serial":
        n = n_prompt + k + 1
        return torch.arange(float(n)), torch.ones(n, n, dtype=torch.bool).tril()
    return tree_layout(n_prompt, k, "isolated")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["serial", "shared_position"])
def test_every_hook_point_matches_hf(family, kind):
    """f32 on both sides; the bound is 1e-5 relative to max(1, the tensor's largest entry):
    the residual stream of these random models grows to tens, where one f32 ulp is ~2e-6 and
    the two sides' summation orders legitimately differ (absolute differences reach 1.1e-5
    there; on the attention points, whose entries are of order 1, they stay under 5e-6)."""
    hf = tiny_hf_model(family)
    ours = attnvar_model(hf)
    positions, visible = layout(kind)
    ids = torch.randint(3, 97, (positions.shape[0],), generator=torch.Generator().manual_seed(5))
    expected = hf_hook_values(hf, ids, positions, visible)
    names = _core.hook_point_names(hf.config.num_hidden_layers)
    assert sorted(names) == sorted(expected)
    out = ours.forward(ours.new_cache(), ids, positions, visible, hooks=names)
    assert sorted(out["hooks"]) == sorted(names)
    worst = 0.0
    for name in names:
        got, ref = out["hooks"][name], expected[name]
        assert got.shape == ref.shape, name
        assert got.dtype == torch.float32  # hook points are recorded in the capture dtype
        diff = report(f"{family} {kind} {name}", got, ref, "hooks")
        worst = max(worst, diff / max(1.0, ref.abs().max().item()))
    print(f"[hooks] {family} {kind}: {len(names)} points, "
          f"worst max |diff| / max(1, max |ref|) = {worst:.3e}")
    assert worst <= TOL


def test_hooks_of_a_prefill_and_decode_steps_concatenate_to_the_single_pass():
    hf = tiny_hf_model("qwen3")
    ours = attnvar_model(hf)
    positions, visible = layout("shared_position")
    n = positions.shape[0]
    ids = torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(2))
    names = _core.hook_point_names(hf.config.num_hidden_layers)
    whole = ours.forward(ours.new_cache(), ids, positions, visible, hooks=names)["hooks"]
    cache = ours.new_cache()
    split = [ours.forward(cache, ids[:4], positions[:4], visible[:4, :4], hooks=names)["hooks"]]
    for t in range(4, n):
        split.append(ours.forward(cache, ids[t:t + 1], positions[t:t + 1],
                                  visible[t:t + 1, :t + 1], hooks=names)["hooks"])
    for name in names:
        joined = torch.cat([s[name] for s in split])
        assert report(f"split {name}", joined, whole[name], "hooks") <= TOL


def test_hook_selection_records_only_what_is_named_and_refuses_unknown_names():
    hf = tiny_hf_model("llama")
    ours = attnvar_model(hf)
    ids = torch.tensor([5, 6, 7])
    vis = _core.causal_visibility(3, 0)
    out = ours.forward(ours.new_cache(), ids, torch.arange(3.0), vis,
                       hooks=["blocks.1.attn.hook_z", "ln_final.hook_normalized"])
    assert sorted(out["hooks"]) == ["blocks.1.attn.hook_z", "ln_final.hook_normalized"]
    assert out["hooks"]["blocks.1.attn.hook_z"].shape == (3, 4, 16)
    assert ours.forward(ours.new_cache(), ids, torch.arange(3.0), vis)["hooks"] == {}
    for bad, match in [("blocks.3.hook_resid_pre", r"layer 3 is outside \[0, 3\)"),
                       ("blocks.0.hook_resid", "is not one of"),
                       ("blocks.01.hook_resid_pre", "is not one of"),
                       ("hook_resid_pre", "is not one of"),
                       ("blocks.-1.hook_resid_pre", "is not one of")]:
        cache = ours.new_cache()
        with pytest.raises(ConfigError, match=match):
            ours.forward(cache, ids, torch.arange(3.0), vis, hooks=[bad])
        assert cache.size == 0  # nothing appended on error


def test_hooks_do_not_change_logits_or_attention():
    hf = tiny_hf_model("mistral")
    ours = attnvar_model(hf)
    positions, visible = layout("shared_position")
    ids = torch.randint(3, 97, (positions.shape[0],), generator=torch.Generator().manual_seed(9))
    names = _core.hook_point_names(hf.config.num_hidden_layers)
    plain = ours.forward(ours.new_cache(), ids, positions, visible, capture=True)
    hooked = ours.forward(ours.new_cache(), ids, positions, visible, capture=True, hooks=names)
    assert torch.equal(plain["logits"], hooked["logits"])
    for a, b in zip(plain["attention"], hooked["attention"], strict=True):
        assert torch.equal(a, b)


# ---- hook points in runs: generate, replay, batches, storage --------------------------------

RUN_NAMES = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_rot_k", "blocks.1.attn.hook_z",
             "blocks.2.mlp.hook_post", "blocks.2.hook_resid_post", "ln_final.hook_normalized"]


@pytest.fixture(scope="module")
def tiny():
    from tiny_models import tiny_llama_model

    return tiny_llama_model(seed=11), tiny_hf_model("llama", seed=11)


def run_layout(run):
    ids = torch.tensor([s["token_id"] for s in run.slot_records])
    positions = torch.tensor([float(s["position"]) for s in run.slot_records])
    return ids, positions, run.visibility


def check_against_hf(run, hf, label):
    ids, positions, visible = run_layout(run)
    expected = hf_hook_values(hf, ids, positions, visible)
    for name in RUN_NAMES:
        got = run.hooks[name]
        assert got.shape == (run.num_slots, *expected[name].shape[1:]), name
        d = report(f"{label} {name}", got, expected[name], "hooks")
        assert d <= TOL * max(1.0, expected[name].abs().max().item()), name


@pytest.mark.parametrize("mode", ["isolated", "visible"])
def test_generated_run_hooks_equal_one_hf_pass_over_its_layout(tiny, mode):
    """A run's hook points, pass by pass in slot order, equal one HF pass over the whole
    layout: the slots' ids, logical positions (siblings share one) and the visibility the
    engine applied."""
    import attnvar

    model, hf = tiny
    run = model.generate([5, 9, 14, 3], threshold=0.04, max_steps=5, mode=mode,
                         capture=attnvar.Capture(names=RUN_NAMES))
    assert max(len(s.members) for s in run.tree.steps) > 1  # a real parallel set
    assert list(run.hooks) == RUN_NAMES
    check_against_hf(run, hf, f"generate {mode}")


@pytest.mark.parametrize("encoding", ["serial", "shared_isolated"])
def test_replayed_run_hooks_equal_hf(tiny, encoding):
    import attnvar

    model, hf = tiny
    source = model.generate([5, 9, 14, 3], threshold=0.04, max_steps=4)
    rep = model.replay(source.tree, encoding, capture=attnvar.Capture(names=RUN_NAMES))
    check_against_hf(rep, hf, f"replay {encoding}")


def test_hooks_survive_save_load_and_streaming_bit_for_bit(tiny, tmp_path):
    import attnvar

    model, _ = tiny
    cap = attnvar.Capture(names=RUN_NAMES + ["blocks.1.attn.hook_pattern"])
    run = model.generate([5, 9, 14, 3], threshold=0.04, max_steps=4, capture=cap)
    run.save(tmp_path / "saved")
    streamed = model.generate([5, 9, 14, 3], threshold=0.04, max_steps=4, capture=cap,
                              stream_to=tmp_path / "streamed")
    for other in (attnvar.load_run(tmp_path / "saved"), attnvar.load_run(tmp_path / "streamed"),
                  streamed):
        assert list(other.hooks) == list(run.hooks)
        for name in run.hooks:
            assert torch.equal(other.hooks[name], run.hooks[name]), name
    # The pattern view is the attention capture's layer.
    assert torch.equal(run.hooks["blocks.1.attn.hook_pattern"], run.attention[1])


def test_batched_generation_hooks_are_bit_identical_to_solo_runs(tiny):
    import attnvar

    model, _ = tiny
    cap = attnvar.Capture(names=RUN_NAMES)
    prompts = [[5, 9, 14, 3], [7, 8], [20, 21, 22, 23, 24, 25]]
    batch = model.generate_many(prompts, threshold=0.04, max_steps=4, capture=cap)
    for prompt, run in zip(prompts, batch, strict=True):
        solo = model.generate(prompt, threshold=0.04, max_steps=4, capture=cap)
        for name in RUN_NAMES:
            assert torch.equal(run.hooks[name], solo.hooks[name]), name


def test_capture_names_are_validated_and_budgeted(tiny):
    import attnvar

    model, _ = tiny
    all_names = model.hook_point_names()
    assert len(all_names) == 3 * 14 + 1 and all_names[-1] == "ln_final.hook_normalized"
    assert attnvar.Capture(names="blocks.2.mlp").hook_names(3) == ["blocks.2.mlp.hook_post"]
    pred = attnvar.Capture(names=lambda n: n.endswith("hook_resid_post")).hook_names(3)
    assert pred == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    # A prefix includes attention views only where the attention capture records them.
    assert "blocks.0.attn.hook_pattern" in attnvar.Capture(names="blocks.0.").hook_names(3)
    assert "blocks.0.attn.hook_attn_scores" not in attnvar.Capture(
        names="blocks.0.").hook_names(3)
    for bad, match in [([], "is empty"), ("", "empty prefix"), (["x", "x"], "repeats"),
                       ([3], "must hold strings"), (iter(["a"]), "must be None")]:
        with pytest.raises(ValueError, match=match):
            attnvar.Capture(names=bad)
    for bad, match in [(["blocks.3.hook_resid_pre"], "is not a hook point"),
                       ("nothing", "selects no hook point"),
                       (["blocks.0.attn.hook_attn_scores"], "Capture.scores=True")]:
        with pytest.raises(ValueError, match=match):
            model.generate([5, 6], max_steps=1, capture=attnvar.Capture(names=bad))
    plain = attnvar.Capture()
    hooked = attnvar.Capture(names=["blocks.0.hook_resid_pre", "blocks.0.attn.hook_q",
                                    "blocks.0.mlp.hook_post"])
    extra = (hooked.estimate_bytes(3, 4, 10, model.dims) - plain.estimate_bytes(3, 4, 10))
    assert extra == 10 * (64 + 4 * 16 + 96) * 4
    with pytest.raises(ValueError, match="over the memory budget"):
        model.generate([5, 6], max_steps=1, capture=attnvar.Capture(
            names="blocks.", probabilities=False, memory_budget=10_000))
    run = model.generate([5, 6], max_steps=1, capture=attnvar.Capture())
    assert len(run.hooks) == 0
    with pytest.raises(KeyError, match="did not record hook point"):
        run.hooks["blocks.0.hook_resid_pre"]


def test_hook_frame_is_a_tidy_table_of_one_point(tiny):
    import attnvar

    model, _ = tiny
    run = model.generate([5, 9, 14, 3], threshold=0.04, max_steps=3,
                         capture=attnvar.Capture(names=RUN_NAMES))
    z = run.hooks["blocks.1.attn.hook_z"]
    frame = run.hook_frame("blocks.1.attn.hook_z", heads=[1, 3])
    assert len(frame) == run.num_slots * 2 * 16
    assert list(frame.columns) == ["slot", "step", "rank", "token_id", "piece", "position",
                                   "is_parallel", "head", "component", "value"]
    row = frame[(frame["slot"] == 5) & (frame["head"] == 3) & (frame["component"] == 7)]
    assert row["value"].item() == z[5, 3, 7].item()
    assert row["token_id"].item() == run.slot_records[5]["token_id"]
    resid = run.hook_frame("blocks.2.hook_resid_post", slots=[0, 4])
    assert len(resid) == 2 * 64 and "head" not in resid.columns
    assert resid["value"].to_numpy().tolist() == run.hooks["blocks.2.hook_resid_post"][
        [0, 4]].reshape(-1).tolist()
    with pytest.raises(ValueError, match="no head axis"):
        run.hook_frame("blocks.2.hook_resid_post", heads=[0])
