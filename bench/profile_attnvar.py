"""Where attnvar's time goes, per benchmark case: torch profiler tables of the ATen ops the
engine calls (the C++ engine dispatches through the same libtorch, so its ops are recorded),
plus wall-clock splits between the C++ call and the Python wrapper.

    PYTHONPATH=build/dev/pkg python bench/profile_attnvar.py [--threads 2] [--rows 14]
        [--only decode parallel generation replay save] [--omp-wait-policy passive]

Findings are summarised in docs/benchmarks.md ("Where the time goes").
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness_util import env_spincount, pin_threads_env, pin_threads_torch  # noqa: E402

SECTIONS = ("decode", "parallel", "generation", "replay", "save")


def table(prof, rows: int, title: str) -> None:
    print(f"\n=== {title} ===")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows,
                                    max_name_column_width=42))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=14)
    ap.add_argument("--omp-wait-policy", default="passive", choices=("passive", "active", "unset"))
    ap.add_argument("--only", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    args = ap.parse_args()
    pin_threads_env(args.threads, None if args.omp_wait_policy == "unset" else args.omp_wait_policy,
                    env_spincount())
    import torch
    from torch.profiler import ProfilerActivity, profile

    import attnvar
    from attnvar import _core

    print(pin_threads_torch(args.threads))
    model = attnvar.load_model()
    core = model.core
    ids = torch.randint(32, core.vocab_size, (700,), generator=torch.Generator().manual_seed(0))
    prompt = model.encode(attnvar.prompts.suite("core")[1].text)

    def prefilled(ctx):
        cache = core.new_cache(initial_capacity=ctx + 64)
        core.forward(cache, ids[:ctx], torch.arange(float(ctx)), _core.causal_visibility(ctx, 0),
                     last_logits_only=True)
        return cache

    if "decode" in args.only:
        ctx, n = 128, 16
        cache = prefilled(ctx)
        core.forward(cache, ids[ctx:ctx + 1], torch.tensor([float(ctx)]),
                     _core.causal_visibility(1, ctx))
        cache.truncate(ctx)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for t in range(ctx, ctx + n):
                core.forward(cache, ids[t:t + 1], torch.tensor([float(t)]),
                             _core.causal_visibility(1, t))
            wall = time.perf_counter() - t0
        table(prof, args.rows, f"decode k=1, context {ctx}, {n} steps, no capture "
                               f"({1000 * wall / n:.1f} ms/step under the profiler)")

    if "parallel" in args.only:
        ctx = 128
        cache = prefilled(ctx)
        for k in (1, 4):
            for capture in (False, True):
                vis = _core.set_visibility(k, ctx, "isolated")

                def step(k=k, vis=vis, capture=capture):
                    core.forward(cache, ids[ctx:ctx + k], torch.full((k,), float(ctx)), vis,
                                 capture=capture, scores=capture)
                    cache.truncate(ctx)

                step()
                with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
                    t0 = time.perf_counter()
                    for _ in range(8):
                        step()
                    wall = (time.perf_counter() - t0) / 8
                table(prof, args.rows, f"one step, k={k}, context {ctx}, capture={capture} "
                                       f"({1000 * wall:.1f} ms/pass under the profiler)")

    if "generation" in args.only:
        cap = attnvar.Capture(scores=True)
        model.generate(prompt, threshold=0.1, max_steps=4, capture=cap)
        kw = cap.kwargs()
        # C++ alone vs the whole Python call (Run construction, slot table, visibility)
        t0 = time.perf_counter()
        res = _core.generate(core, prompt, threshold=0.1, max_steps=30, eos_ids=model.eos_ids,
                             **kw)
        t_core = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(prompt, threshold=0.1, max_steps=30, capture=cap)
        t_py = time.perf_counter() - t0
        t0 = time.perf_counter()
        _core.generate(core, prompt, threshold=0.1, max_steps=30, eos_ids=model.eos_ids)
        t_nocap = time.perf_counter() - t0
        print(f"\n=== generation, 30 steps, {res.tree.num_steps} sets, "
              f"{len(res.slots)} slots ===")
        print(f"_core.generate with capture {t_core:.2f} s (prefill {res.prefill_seconds:.2f} s, "
              f"steps {res.generate_seconds:.2f} s); model.generate {t_py:.2f} s "
              f"(Python wrapper {t_py - t_core:+.2f} s); _core.generate without capture "
              f"{t_nocap:.2f} s")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.generate(prompt, threshold=0.1, max_steps=30, capture=cap)
        table(prof, args.rows, "model.generate, 30 steps, capture α+scores")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.generate(prompt, threshold=0.1, max_steps=30)
        table(prof, args.rows, "model.generate, 30 steps, no capture")
        pr = cProfile.Profile()
        pr.enable()
        model.generate(prompt, threshold=0.1, max_steps=30, capture=cap)
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(14)
        print("\n=== cProfile of model.generate (Python side) ===")
        print(s.getvalue())

    if "replay" in args.only or "save" in args.only:
        tree = model.generate(prompt, threshold=0.1, max_steps=30).tree
        cap = attnvar.Capture(scores=True)
        model.replay(tree, "serial", capture=cap)
        if "replay" in args.only:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                for enc in ("shared_isolated", "serial"):
                    run = model.replay(tree, enc, capture=cap)
                wall = (time.perf_counter() - t0) / 2
            table(prof, args.rows, f"replay of the generated tree ({run.num_slots} slots), "
                                   f"capture α+scores ({wall:.2f} s/replay under the profiler)")
        if "save" in args.only:
            run = model.generate(prompt, threshold=0.1, max_steps=30, capture=cap)
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                run.save(Path(d) / "run")
                t_save = time.perf_counter() - t0
                pr = cProfile.Profile()
                pr.enable()
                run.save(Path(d) / "run2")
                pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(10)
            print(f"\n=== run.save of a 30-step generation with capture: {t_save:.2f} s ===")
            print(s.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
