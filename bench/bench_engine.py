"""Engine speed beside HF transformers (eager) on the same weights and inputs, one run.

A random model of SmolLM2-135M's shape (f32), threads pinned. Prints prefill tokens/s and
decode steps/s, with and without attention capture, and attnvar ÷ HF ratios.

    PYTHONPATH=build/dev/pkg python bench/bench_engine.py [--quick] [--out bench/results/engine.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402
from harness_util import attnvar_from_hf, smollm2_shape_model  # noqa: E402
from harness_util import median_seconds as timed  # noqa: E402

THREADS = int(os.environ["OMP_NUM_THREADS"])
torch.set_num_threads(THREADS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shorter contexts")
    ap.add_argument("--out", default=None, help="write the Markdown table here")
    args = ap.parse_args()

    import transformers
    from transformers import DynamicCache

    import attnvar
    from attnvar import _core

    hf = smollm2_shape_model()
    ours = attnvar_from_hf(hf)
    repeats = 2 if args.quick else 5
    prefill_lengths = [128] if args.quick else [128, 512]
    decode_contexts = [128] if args.quick else [128, 512]
    decode_steps = 8 if args.quick else 16
    rows = []

    def add(case, ours_s, hf_s, unit_count, unit):
        rows.append((case, unit_count / ours_s, unit_count / hf_s, hf_s / ours_s, unit))

    gen = torch.Generator().manual_seed(1)
    for T in prefill_lengths:
        ids = torch.randint(0, 49152, (T,), generator=gen)
        pos = torch.arange(float(T))
        vis = _core.causal_visibility(T, 0)
        for capture in (False, True):
            t_ours = timed(lambda ids=ids, pos=pos, vis=vis, capture=capture: ours.forward(
                ours.new_cache(), ids, pos, vis, capture=capture, last_logits_only=True), repeats)
            with torch.inference_mode():
                t_hf = timed(lambda ids=ids, capture=capture: hf(
                    input_ids=ids[None], output_attentions=capture, use_cache=True,
                    logits_to_keep=1), repeats)
            add(f"prefill T={T}" + (" +capture" if capture else ""), t_ours, t_hf, T, "tok/s")

    for ctx in decode_contexts:
        ids = torch.randint(0, 49152, (ctx + decode_steps,), generator=gen)
        for capture in (False, True):
            def run_ours(ids=ids, ctx=ctx, capture=capture):
                cache = ours.new_cache(initial_capacity=ctx + decode_steps)
                ours.forward(cache, ids[:ctx], torch.arange(float(ctx)),
                             _core.causal_visibility(ctx, 0), last_logits_only=True)
                t0 = time.perf_counter()
                for t in range(ctx, ctx + decode_steps):
                    ours.forward(cache, ids[t : t + 1], torch.tensor([float(t)]),
                                 _core.causal_visibility(1, t), capture=capture)
                return time.perf_counter() - t0

            def run_hf(ids=ids, ctx=ctx, capture=capture):
                with torch.inference_mode():
                    cache = DynamicCache(config=hf.config)
                    hf(input_ids=ids[None, :ctx], past_key_values=cache, use_cache=True,
                       logits_to_keep=1)
                    t0 = time.perf_counter()
                    for t in range(ctx, ctx + decode_steps):
                        hf(input_ids=ids[None, t : t + 1], past_key_values=cache, use_cache=True,
                           position_ids=torch.tensor([[t]]), output_attentions=capture)
                    return time.perf_counter() - t0

            run_ours(), run_hf()  # warm-up
            t_ours = statistics.median(run_ours() for _ in range(repeats))
            t_hf = statistics.median(run_hf() for _ in range(repeats))
            add(f"decode ctx={ctx}" + (" +capture" if capture else ""), t_ours, t_hf,
                decode_steps, "steps/s")

    header = (
        f"attnvar {attnvar.__version__} · torch {torch.__version__} · transformers "
        f"{transformers.__version__} · threads {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}) · "
        f"{platform.processor() or platform.machine()}"
        f" · model: random SmolLM2-135M shape, f32"
    )
    lines = [header, "", "| case | attnvar | HF eager | attnvar ÷ HF |", "|---|---|---|---|"]
    for case, a, h, ratio, unit in rows:
        lines.append(f"| {case} | {a:.1f} {unit} | {h:.1f} {unit} | {ratio:.2f}× |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
