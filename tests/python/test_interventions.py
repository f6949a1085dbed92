"""Interventions at hook points, executed in the engine, against HF transformers eager with
the same edit made by a forward hook (tiny random models, serial and shared-position
passes); activation patching against the source run itself; the run-level API
(generate, replay, generate_many), what runs record, and the validation of every field.
Max differences are printed."""

from __future__ import annotations

import pytest
import torch

import attnvar
from attnvar import ConfigError

transformers = pytest.importorskip("transformers")

from test_engine_parity import tree_layout  # noqa: E402
from tiny_models import FAMILIES, additive_mask, attnvar_model, report, tiny_hf_model  # noqa: E402

TOL = 1e-5


def hf_logits(model, ids, positions, visible, pre_hooks=(), hooks=()):
    """HF eager logits with forward pre-hooks / hooks installed: (module, fn) pairs."""
    handles = [m.register_forward_pre_hook(fn, with_kwargs=True) for m, fn in pre_hooks]
    handles += [m.register_forward_hook(fn) for m, fn in hooks]
    try:
        with torch.no_grad():
            return model(input_ids=ids[None], position_ids=positions[None].long(),
                         attention_mask=additive_mask(visible), use_cache=False).logits[0]
    finally:
        for h in handles:
            h.remove()


def layout(kind):
    if kind == "serial":
        return torch.arange(10.0), torch.ones(10, 10, dtype=torch.bool).tril()
    return tree_layout(6, 3, "isolated")


def ours_logits(model, ids, positions, visible, edits=(), hook_fns=None):
    return model.forward(model.new_cache(), ids, positions, visible, edits=list(edits),
                         hook_fns=hook_fns)["logits"]


def close(label, a, b):
    d = report(label, a, b, "interventions")
    assert d <= TOL * max(1.0, b.abs().max().item()), label


def ids_for(positions, seed=4):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 97, (positions.shape[0],), generator=generator)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["serial", "shared_position"])
def test_zero_ablating_a_head_equals_hf_with_its_o_proj_input_zeroed(family, kind):
    hf = tiny_hf_model(family)
    ours = attnvar_model(hf)
    positions, visible = layout(kind)
    ids = ids_for(positions)
    layer, head = 1, 2
    d = hf.config.head_dim if getattr(hf.config, "head_dim", None) else 16

    def zero_head(module, args, kwargs):
        x = args[0].clone()
        x[..., head * d:(head + 1) * d] = 0
        return (x, *args[1:]), kwargs

    expected = hf_logits(hf, ids, positions, visible,
                         pre_hooks=[(hf.model.layers[layer].self_attn.o_proj, zero_head)])
    got = ours_logits(ours, ids, positions, visible,
                      [{"kind": "zero", "hook": f"blocks.{layer}.attn.hook_z", "heads": [head]}])
    close(f"{family} {kind} zero-ablate L{layer}H{head}", got, expected)
    plain = ours_logits(ours, ids, positions, visible)
    assert (plain - got).abs().max() > 1e-3  # the ablation did something


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("kind", ["serial", "shared_position"])
def test_a_steering_vector_equals_hf_with_the_vector_added_by_a_hook(family, kind):
    hf = tiny_hf_model(family)
    ours = attnvar_model(hf)
    positions, visible = layout(kind)
    ids = ids_for(positions)
    vector = torch.randn(hf.config.hidden_size, generator=torch.Generator().manual_seed(1))

    def add(module, args, kwargs):
        if args:
            return (args[0] + vector, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + vector}

    expected = hf_logits(hf, ids, positions, visible, pre_hooks=[(hf.model.layers[2], add)])
    got = ours_logits(ours, ids, positions, visible,
                      [{"kind": "add", "hook": "blocks.2.hook_resid_pre", "value": vector}])
    close(f"{family} {kind} steer resid_pre L2", got, expected)
    # The same through attnvar.Steer's scale, slot by slot (a [N, hidden] value).
    per_slot = vector.expand(ids.shape[0], -1) * 0.5
    got2 = ours_logits(ours, ids, positions, visible,
                       [{"kind": "add", "hook": "blocks.2.hook_resid_pre", "value": per_slot},
                        {"kind": "add", "hook": "blocks.2.hook_resid_pre", "value": per_slot}])
    close(f"{family} {kind} steer as two halves", got2, expected)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_mean_ablating_a_value_head_equals_hf_with_v_proj_output_replaced(family):
    hf = tiny_hf_model(family)
    ours = attnvar_model(hf)
    positions, visible = layout("shared_position")
    ids = ids_for(positions)
    d = hf.config.hidden_size // hf.config.num_attention_heads
    kv = hf.config.num_key_value_heads
    mean = torch.randn(kv, d, generator=torch.Generator().manual_seed(3))
    slots = [2, 6, 7]

    def replace(module, args, output):
        out = output.clone()
        out[0, slots, d:2 * d] = mean[1]  # kv head 1
        return out

    expected = hf_logits(hf, ids, positions, visible,
                         hooks=[(hf.model.layers[0].self_attn.v_proj, replace)])
    got = ours_logits(ours, ids, positions, visible,
                      [{"kind": "set", "hook": "blocks.0.attn.hook_v", "heads": [1],
                        "slots": slots, "value": mean}])
    close(f"{family} mean-ablate v head 1 at slots {slots}", got, expected)


@pytest.mark.parametrize("layer", [0, 2])
def test_patching_resid_pre_from_run_a_reproduces_run_a(layer):
    """Patching every slot's resid_pre at layer l from run A into run B (whose earlier
    tokens differ) gives A's logits: from layer l on, every input is A's."""
    hf = tiny_hf_model("qwen2")
    ours = attnvar_model(hf)
    positions, visible = layout("shared_position")
    ids_a = ids_for(positions, 1)
    ids_b = ids_a.clone()
    ids_b[:4] = torch.tensor([10, 11, 12, 13])
    name = f"blocks.{layer}.hook_resid_pre"
    a = ours.forward(ours.new_cache(), ids_a, positions, visible, hooks=[name])
    b = ours_logits(ours, ids_b, positions, visible)
    patched = ours_logits(ours, ids_b, positions, visible,
                          [{"kind": "set", "hook": name, "value": a["hooks"][name]}])
    d = report(f"patch {name}", patched, a["logits"], "interventions")
    assert d <= 1e-6
    assert (b - a["logits"]).abs().max() > 1e-2  # the runs did differ


def test_a_python_hook_function_equals_the_declared_edit_and_sees_each_pass():
    hf = tiny_hf_model("llama")
    ours = attnvar_model(hf)
    positions, visible = layout("serial")
    ids = ids_for(positions)
    vector = torch.randn(hf.config.intermediate_size, generator=torch.Generator().manual_seed(7))
    seen = []

    def steer(name, t):
        seen.append((name, tuple(t.shape)))
        return t + vector

    declared = ours_logits(ours, ids, positions, visible,
                           [{"kind": "add", "hook": "blocks.1.mlp.hook_post", "value": vector}])
    by_fn = ours_logits(ours, ids, positions, visible, hook_fns={"blocks.1.mlp.hook_post": steer})
    assert torch.equal(declared, by_fn)
    assert seen == [("blocks.1.mlp.hook_post", (10, hf.config.intermediate_size))]
    # None keeps the tensor; in-place edits of the argument do nothing (it is a copy).
    plain = ours_logits(ours, ids, positions, visible)

    def noop(name, t):
        t.zero_()

    assert torch.equal(ours_logits(ours, ids, positions, visible,
                                   hook_fns={"blocks.1.mlp.hook_post": noop}), plain)
    with pytest.raises(ConfigError, match=r"returned shape \[3\]"):
        ours_logits(ours, ids, positions, visible,
                    hook_fns={"blocks.1.hook_resid_pre": lambda n, t: torch.zeros(3)})
    with pytest.raises(ConfigError, match="must return a tensor or None"):
        ours_logits(ours, ids, positions, visible,
                    hook_fns={"blocks.1.hook_resid_pre": lambda n, t: "no"})
    with pytest.raises(ZeroDivisionError):
        ours_logits(ours, ids, positions, visible,
                    hook_fns={"blocks.1.hook_resid_pre": lambda n, t: 1 / 0})


def test_edits_are_validated_before_the_pass_naming_the_field():
    hf = tiny_hf_model("llama")
    ours = attnvar_model(hf)
    positions, visible = layout("serial")
    ids = ids_for(positions)
    z = "blocks.0.attn.hook_z"
    cases = [
        ({"kind": "zero", "hook": z, "head": [1]}, "unknown key 'head'"),
        ({"hook": z}, "'kind' is missing"),
        ({"kind": "zero"}, "'hook' is missing"),
        ({"kind": "scale", "hook": z}, "kind 'scale' is not one of"),
        ({"kind": "zero", "hook": "blocks.0.attn.hook_zz"}, "is not one of"),
        ({"kind": "zero", "hook": "blocks.7.hook_resid_pre"}, r"layer 7 is outside \[0, 3\)"),
        ({"kind": "zero", "hook": z, "heads": [4]}, r"head 4 is outside \[0, 4\)"),
        ({"kind": "zero", "hook": "blocks.0.hook_resid_pre", "heads": [0]}, "has no head axis"),
        ({"kind": "zero", "hook": z, "slots": [-1]}, "slot -1 is negative"),
        ({"kind": "add", "hook": z}, "value is missing"),
        ({"kind": "add", "hook": z, "value": torch.ones(4, 15)}, r"value has shape \[4, 15\]"),
        ({"kind": "add", "hook": z, "value": torch.full((4, 16), float("nan"))}, "NaN"),
        ({"kind": "set", "hook": z, "value": torch.ones(5, 4, 16)}, "layouts differ"),
        ({"kind": "zero", "hook": "ln_final.hook_normalized"}, "recorded, not edited"),
        ({"kind": "zero", "hook": z, "value": torch.ones(4, 16)}, "zero-ablation takes none"),
    ]
    for edit, match in cases:
        cache = ours.new_cache()
        with pytest.raises(ConfigError, match=match):
            ours.forward(cache, ids, positions, visible, edits=[edit])
        assert cache.size == 0, edit


# ---- the run-level API ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from tiny_models import tiny_llama_model

    return tiny_llama_model(seed=11)


def test_generation_with_an_ablation_records_it_and_the_edited_values(tiny):
    run = tiny.generate([5, 9, 14, 3], threshold=0.04, max_steps=4,
                        interventions=[attnvar.ZeroAblate("blocks.1.attn.hook_z", heads=[2])],
                        capture=attnvar.Capture(names=["blocks.1.attn.hook_z"]))
    z = run.hooks["blocks.1.attn.hook_z"]
    assert torch.count_nonzero(z[:, 2]) == 0 and torch.count_nonzero(z[:, 1]) > 0
    assert run.options["interventions"] == [
        {"kind": "zero_ablate", "hook": "blocks.1.attn.hook_z", "heads": [2], "slots": None}]
    # A zero steering vector changes nothing, bit for bit.
    plain = tiny.generate([5, 9, 14, 3], threshold=0.04, max_steps=4, capture=attnvar.Capture())
    zero = tiny.generate([5, 9, 14, 3], threshold=0.04, max_steps=4, capture=attnvar.Capture(),
                         interventions=[attnvar.Steer("blocks.0.hook_resid_pre", torch.ones(64),
                                                      scale=0.0)])
    assert plain.bracketed == zero.bracketed and torch.equal(plain.attention, zero.attention)


def test_generation_and_replay_apply_an_edit_in_the_same_slot_space(tiny):
    """An ablation at slots of the parallel sets: generation's next-step distributions
    equal those of a shared-isolated replay of its tree with the same intervention."""
    iv = [attnvar.ZeroAblate("blocks.2.hook_attn_out", slots=[4, 5, 6, 7])]
    run = tiny.generate([5, 9, 14, 3], threshold=0.04, max_steps=4, interventions=iv,
                        keep_distributions=True)
    rep = tiny.replay(run, "shared_isolated", interventions=iv)
    n = min(len(run.distributions), len(rep.distributions))
    d = report("generate vs replay, ablated", rep.distributions[:n], run.distributions[:n],
               "interventions")
    assert d <= 1e-5


def test_patching_from_a_serial_replay_and_layout_checks(tiny):
    """The mechanism question in miniature: patch the parallel slots' post-RoPE keys of a
    shared-position replay with their serial-replay values."""
    source = tiny.generate([5, 9, 14, 3], threshold=0.04, max_steps=4)
    name = "blocks.1.attn.hook_rot_k"
    serial = tiny.replay(source, "serial", capture=attnvar.Capture(names=[name]))
    shared = tiny.replay(source, "shared_isolated", capture=attnvar.Capture(names=[name]))
    patched = tiny.replay(source, "shared_isolated", capture=attnvar.Capture(names=[name]),
                          interventions=[attnvar.Patch(name, serial)])
    assert torch.equal(patched.hooks[name], serial.hooks[name])
    assert not torch.equal(shared.hooks[name], serial.hooks[name])
    assert patched.options["interventions"][0]["source_encoding"] == "serial"
    other = tiny.generate([7, 7, 8], threshold=0.04, max_steps=3)
    other_serial = tiny.replay(other, "serial", capture=attnvar.Capture(names=[name]))
    with pytest.raises(ConfigError, match="layouts differ"):
        tiny.replay(source, "shared_isolated", interventions=[attnvar.Patch(name, other_serial)])
    with pytest.raises(ConfigError, match="did not record"):
        tiny.replay(source, "serial", interventions=[attnvar.Patch("blocks.0.hook_resid_pre",
                                                                   serial)])
    ref = attnvar.MeanAblate(name, reference=serial, reference_slots=[0, 1])
    assert torch.equal(ref.value(), serial.hooks[name][:2].mean(0))
    rep = tiny.replay(source, "serial", interventions=[ref])
    assert rep.options["interventions"][0]["mean_of"] == "reference run"


def test_batched_generation_with_edits_is_bit_identical_to_solo(tiny):
    iv = [attnvar.Steer("blocks.1.hook_resid_mid", torch.linspace(-1, 1, 64))]
    prompts = [[5, 9, 14, 3], [7, 8], [20, 21, 22]]
    cap = attnvar.Capture(names=["blocks.2.hook_resid_post"])
    batch = tiny.generate_many(prompts, threshold=0.04, max_steps=4, interventions=iv,
                               capture=cap)
    for prompt, run in zip(prompts, batch, strict=True):
        solo = tiny.generate(prompt, threshold=0.04, max_steps=4, interventions=iv, capture=cap)
        assert run.bracketed == solo.bracketed
        assert torch.equal(run.hooks["blocks.2.hook_resid_post"],
                           solo.hooks["blocks.2.hook_resid_post"])


def test_intervention_objects_and_dicts_are_validated(tiny):
    tree = tiny.generate([5, 9], threshold=0.04, max_steps=2).tree
    for make, match in [
        (lambda: attnvar.ZeroAblate("blocks.0.attn.hook_pattern"), "cannot be edited"),
        (lambda: attnvar.ZeroAblate("blocks.0.attn.hook_z", heads=[]), "heads is empty"),
        (lambda: attnvar.Steer("blocks.0.hook_resid_pre", [float("nan")] * 64), "NaN"),
        (lambda: attnvar.Steer("blocks.0.hook_resid_pre", torch.ones(64), scale=float("inf")),
         "finite number"),
        (lambda: attnvar.MeanAblate("blocks.0.hook_resid_pre"), "exactly one of"),
        (lambda: attnvar.KeyBias(2, 1, [0]), "is empty"),
        (lambda: attnvar.KeyBias(0, 1, [0], delta=float("nan")), "finite number or -inf"),
    ]:
        with pytest.raises(ConfigError, match=match):
            make()
    for bad, match in [
        ({"layer_end": 1, "key_slots": [0]}, "'layer_begin' is missing"),
        ({"layer_begin": 0, "layer_end": 1, "key_slots": [0], "slot": 1}, "unknown keys"),
        ({"layer_begin": 0, "layer_end": 1, "key_slots": [0], "delta": float("nan")},
         "finite number or -inf"),
        ("not a list", "must be a list"),
    ]:
        with pytest.raises(ConfigError, match=match):
            tiny.replay(tree, "serial", interventions=[bad] if isinstance(bad, dict) else bad)
    with pytest.raises(ConfigError, match="slot 99 is outside"):
        tiny.replay(tree, "serial", interventions=[attnvar.ZeroAblate("blocks.0.hook_resid_pre",
                                                                      slots=[99])])
    with pytest.raises(ConfigError, match="belong"):
        tiny.generate([5, 9], max_steps=1, interventions=[attnvar.Knockout(0, 1, [0])])
    with pytest.raises(ConfigError, match="not a hook point"):
        tiny.generate([5, 9], max_steps=1, hook_fns={"blocks.9.hook_resid_pre": print})
    run = tiny.generate([5, 9], max_steps=1,
                        hook_fns={"blocks.0.hook_resid_pre": lambda n, t: None})
    recorded = run.options["hook_fns"]["blocks.0.hook_resid_pre"]
    assert recorded.endswith("<locals>.<lambda>")


@pytest.mark.parametrize("family", FAMILIES)
def test_an_edit_that_changes_nothing_changes_nothing_bit_for_bit(family):
    """Adding zeros at any hook point, to one slot, leaves the logits bit-identical: an
    edit's copy must not move any computation onto another kernel path (Qwen3's and OLMo 2's
    q/k norms once did, changing every head by ~1e-6)."""
    from attnvar.engine.capture import BLOCK_POINTS, hook_shape

    hf = tiny_hf_model(family)
    ours = attnvar_model(hf)
    positions, visible = layout("shared_position")
    ids = ids_for(positions)
    plain = ours_logits(ours, ids, positions, visible)
    cfg = ours.config
    dims = {"hidden": cfg["hidden_size"], "intermediate": cfg["intermediate_size"],
            "heads": cfg["num_attention_heads"], "kv_heads": cfg["num_key_value_heads"],
            "head_dim": cfg["head_dim"]}
    for point in BLOCK_POINTS:
        if "hook_pattern" in point or "hook_attn_scores" in point:
            continue
        name = f"blocks.1.{point}"
        zero = torch.zeros(hook_shape(name, dims))
        got = ours_logits(ours, ids, positions, visible,
                          [{"kind": "add", "hook": name, "slots": [5], "value": zero}])
        assert torch.equal(got, plain), name


def test_core_checks_hook_functions_and_raw_edit_fields():
    hf = tiny_hf_model("llama")
    ours = attnvar_model(hf)
    positions, visible = layout("serial")
    ids = ids_for(positions)
    for fns, match in [({"blocks.9.hook_resid_pre": print}, r"layer 9 is outside"),
                       ({"ln_final.hook_normalized": print}, "recorded, not edited"),
                       ({"blocks.0.hook_bogus": print}, "is not one of")]:
        cache = ours.new_cache()
        with pytest.raises(ConfigError, match=match):
            ours.forward(cache, ids, positions, visible, hook_fns=fns)
        assert cache.size == 0
    z = "blocks.0.attn.hook_z"
    for edit, match in [({"kind": 3, "hook": z}, r"edits\[0\]\.kind: expected a string"),
                        ({"kind": "zero", "hook": z, "slots": "ab"}, r"\.slots: expected"),
                        ({"kind": "add", "hook": z, "value": "x"}, r"\.value: expected a tensor"),
                        ({"kind": "zero", "hook": z, "slots": [1, 1]}, "appears twice"),
                        ({"kind": "zero", "hook": z, "heads": [2, 2]}, "appears twice")]:
        with pytest.raises(ConfigError, match=match):
            ours.forward(ours.new_cache(), ids, positions, visible, edits=[edit])


def test_recorded_points_and_hook_function_arguments_are_ordinary_tensors(tiny):
    kept = []
    run = tiny.generate([5, 9, 14, 3], threshold=0.04, max_steps=2,
                        capture=attnvar.Capture(names=["blocks.0.hook_resid_pre"]),
                        hook_fns={"blocks.1.hook_resid_pre": lambda n, t: kept.append(t)})
    t = run.hooks["blocks.0.hook_resid_pre"]
    assert not t.is_inference() and not kept[0].is_inference()
    t.add_(1.0)  # an inference tensor would refuse this outside inference mode
    kept[0].mul_(2.0)


def test_generation_checks_patches_on_the_prompt_and_warns_about_unreached_slots(tiny):
    name = "blocks.1.hook_resid_pre"
    source = tiny.generate([5, 9, 14, 3, 8, 8], threshold=0.04, max_steps=3,
                           capture=attnvar.Capture(names=[name]))
    with pytest.raises(ConfigError, match="slot 0 holds token 5 in the source run but 7"):
        tiny.generate([7, 7, 8], max_steps=2, interventions=[attnvar.Patch(name, source)])
    with pytest.warns(UserWarning, match="before slots named by 1 intervention"):
        run = tiny.generate([5, 9], threshold=0.5, max_steps=1,
                            interventions=[attnvar.ZeroAblate(name, slots=[1, 500])])
    assert run.options["unreached_interventions"] == [
        {"hook": name, "kind": "zero_ablate", "unreached": [500]}]


def test_hook_points_alone_keep_the_fast_attention_path(tiny):
    cap = attnvar.Capture(names="blocks.1", probabilities=False)
    assert cap.kwargs(3)["capture"] is False
    assert cap.hook_names(3)[0] == "blocks.1.hook_resid_pre"
    assert all(n.startswith("blocks.1.") for n in cap.hook_names(12))  # not 10, 11
    run = tiny.generate([5, 9, 14, 3], threshold=0.04, max_steps=2, capture=cap)
    assert run.hooks["blocks.1.attn.hook_z"].shape[0] == run.num_slots
    with pytest.raises(ValueError, match="did not capture attention"):
        _ = run.attention
