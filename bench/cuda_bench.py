"""attnvar beside HF transformers on a CUDA device, in one process, on a SmolLM2-135M-shaped
model with random weights (no weights can be fetched on a GPU machine; speed does not depend
on their values). Part of the CUDA check (scripts/cuda_check.sh); prints a Markdown table.

Cases (f32, eager HF attention with the explicit 4-D mask, as in bench/harness.py):
- decode: single-token passes after a 128-token context, no capture;
- parallel step: one pass of k members at one shared position after 128 tokens;
- generation: 30 steps, every set of width 4 (θ tiny, max_width 4: random weights give a
  near-flat q), full capture brought back to the host after each pass.

    python bench/cuda_bench.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness_hf  # noqa: E402
from harness_util import attnvar_from_hf, median_seconds, smollm2_shape_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="4 layers, fewer repeats (dry run)")
    a = ap.parse_args()
    from transformers import DynamicCache

    from attnvar import _core

    dev = torch.device(a.device)
    layers, repeats, steps, ctx = (4, 2, 8, 32) if a.quick else (30, 5, 32, 128)
    hf = smollm2_shape_model(layers)
    core = attnvar_from_hf(hf, a.device)
    hf = hf.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None

    def timer(fn, repeats):
        return median_seconds(fn, repeats, sync)

    ids = torch.randint(32, 49152, (ctx + 64,), generator=torch.Generator().manual_seed(0))
    ids_dev = ids.to(dev)
    rows: list[tuple[str, float, float]] = []  # case, attnvar s, HF s

    # -- parity on this device (the tests do it thoroughly; this is the headline) ---------
    with torch.inference_mode():
        out = core.forward(core.new_cache(), ids[:ctx], torch.arange(float(ctx)),
                           _core.causal_visibility(ctx, 0), capture=True)
        ref = hf(input_ids=ids_dev[None, :ctx], output_attentions=True, use_cache=False)
    d_logits = (out["logits"] - ref.logits[0]).abs().max().item()
    d_attn = max((x - y[0].cpu()).abs().max().item()
                 for x, y in zip(out["attention"], ref.attentions, strict=True))

    # -- decode ----------------------------------------------------------------------------
    def av_decode():
        cache = core.new_cache(initial_capacity=ctx + steps)
        core.forward(cache, ids[:ctx], torch.arange(float(ctx)), _core.causal_visibility(ctx, 0),
                     last_logits_only=True)
        for t in range(ctx, ctx + steps):
            core.forward(cache, ids[t:t + 1], torch.tensor([float(t)]),
                         _core.causal_visibility(1, t))

    def hf_decode():
        with torch.inference_mode():
            cache = DynamicCache(config=hf.config)
            hf(input_ids=ids_dev[None, :ctx], position_ids=torch.arange(ctx, device=dev)[None],
               past_key_values=cache, use_cache=True, logits_to_keep=1)
            for t in range(ctx, ctx + steps):
                hf(input_ids=ids_dev[None, t:t + 1],
                   position_ids=torch.tensor([[t]], device=dev), past_key_values=cache,
                   use_cache=True)

    rows.append((f"prefill {ctx} + {steps} decode steps", timer(av_decode, repeats),
                 timer(hf_decode, repeats)))

    # -- one parallel step of k members ---------------------------------------------------
    cache = core.new_cache(initial_capacity=ctx + 16)
    core.forward(cache, ids[:ctx], torch.arange(float(ctx)), _core.causal_visibility(ctx, 0))
    with torch.inference_mode():
        hf_cache = DynamicCache(config=hf.config)
        hf(input_ids=ids_dev[None, :ctx], position_ids=torch.arange(ctx, device=dev)[None],
           past_key_values=hf_cache, use_cache=True, logits_to_keep=1)
    saved = [(layer.keys, layer.values) for layer in hf_cache.layers]
    for k in (1, 4, 8):
        vis = _core.set_visibility(k, ctx, "isolated")
        mask = harness_hf.set_mask(k, ctx).to(dev)

        def av_step(k=k, vis=vis):
            core.forward(cache, ids[ctx:ctx + k], torch.full((k,), float(ctx)), vis)
            cache.truncate(ctx)

        def hf_step(k=k, mask=mask):
            with torch.inference_mode():
                hf(input_ids=ids_dev[None, ctx:ctx + k],
                   position_ids=torch.full((1, k), ctx, device=dev), attention_mask=mask,
                   past_key_values=hf_cache, use_cache=True)
            for layer, (kk, vv) in zip(hf_cache.layers, saved, strict=True):
                layer.keys, layer.values = kk, vv

        rows.append((f"parallel step k = {k}", timer(av_step, repeats * 4),
                     timer(hf_step, repeats * 4)))

    # -- generation with full capture -----------------------------------------------------
    prompt = ids[:24].tolist()
    gen_steps = 10 if a.quick else 30
    trees = {}

    def av_gen():
        res = _core.generate(core, prompt, threshold=1e-9, max_width=4, max_steps=gen_steps,
                             eos_ids=[0], capture=True, scores=True)
        trees["attnvar"] = [[m.token_id for m in s.members] for s in res.tree.steps]

    def hf_gen():
        trees["hf"] = harness_hf.generate(hf, prompt, 1e-9, gen_steps, [0], capture=True,
                                          max_width=4)["tree"]

    rows.append((f"generation {gen_steps} steps × 4 members, capture", timer(av_gen, repeats),
                 timer(hf_gen, repeats)))

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    print(f"# attnvar on {dev} ({name})\n")
    print(f"torch {torch.__version__}, {layers} layers of SmolLM2-135M shape, f32, random "
          f"weights; median of {repeats} (parallel steps: {repeats * 4}) after a warm-up\n")
    print(f"parity on this device, {ctx}-token prefill: logits {d_logits:.2e}, "
          f"attention {d_attn:.2e}; generated trees identical: "
          f"{trees.get('attnvar') == trees.get('hf')}\n")
    print("| case | attnvar ms | HF eager ms | attnvar speed ÷ HF |")
    print("|---|---|---|---|")
    for case, t_av, t_hf in rows:
        print(f"| {case} | {t_av * 1e3:.1f} | {t_hf * 1e3:.1f} | {t_hf / t_av:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
