"""A/B of two attnvar builds on the engine's hot paths: one pass of k members at one position
after a 128-token context (isolated set, no capture), decode steps, and a pass of 4 members
capturing one layer's attention pattern (``attn.hook_pattern`` of the last layer, asked for
by name where the build has hook points). Each build runs in
its own fresh process, the builds alternate round by round, so both see the same machine
load; the report gives per-round medians and the ratio of the two builds.

    python bench/ab_step.py build/perf-before/pkg build/perf/pkg [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness_util import ab_main, print_round_ratios  # noqa: E402

KS = (1, 2, 4, 8, 16)


def worker(reps: int, threads: int) -> dict:
    import time

    import torch

    import attnvar
    from attnvar import _core

    torch.set_num_threads(threads)
    core = attnvar.load_model().core
    ids = torch.randint(32, core.vocab_size, (200,), generator=torch.Generator().manual_seed(0))
    ctx = 128
    cache = core.new_cache(initial_capacity=ctx + 64)
    core.forward(cache, ids[:ctx], torch.arange(float(ctx)), _core.causal_visibility(ctx, 0),
                 last_logits_only=True)
    out = {}
    for k in KS:
        vis = _core.set_visibility(k, ctx, "isolated")
        pos = torch.full((k,), float(ctx))
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            core.forward(cache, ids[ctx:ctx + k], pos, vis)
            times.append(time.perf_counter() - t0)
            cache.truncate(ctx)
        out[f"k{k}_ms"] = 1000 * statistics.median(times[1:])
    times = []
    for i in range(reps * 2):
        t0 = time.perf_counter()
        core.forward(cache, ids[ctx + i:ctx + i + 1], torch.tensor([float(ctx + i)]),
                     _core.causal_visibility(1, ctx + i))
        times.append(time.perf_counter() - t0)
    out["decode_ms"] = 1000 * statistics.median(times)
    # One layer's pattern: by hook name where the build has Capture(names=...), else the
    # attention capture of that layer (the same engine call either way).
    last = core.num_layers - 1
    try:
        spec = attnvar.Capture(layers=[last], names=[f"blocks.{last}.attn.hook_pattern"])
        kw = spec.kwargs(core.num_layers)
    except TypeError:
        kw = attnvar.Capture(layers=[last]).kwargs()
    cache.truncate(ctx)
    vis = _core.set_visibility(4, ctx, "isolated")
    pos = torch.full((4,), float(ctx))
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        core.forward(cache, ids[ctx:ctx + 4], pos, vis, **kw)
        times.append(time.perf_counter() - t0)
        cache.truncate(ctx)
    out["k4_pattern_ms"] = 1000 * statistics.median(times[1:])
    return out


def main() -> int:
    ab = ab_main(__doc__, __file__, worker, rounds=3, reps=5)
    if ab is None:
        return 0
    builds, results = ab
    keys = list(next(iter(results.values()))[0])
    print("\nmedian over rounds (ms); ratio k/k1 in brackets")
    for b in builds:
        med = {k: statistics.median(x[k] for x in results[b]) for k in keys}
        print(f"{b}: " + ", ".join(
            f"{k} {v:.1f}" + (f" [{v / med['k1_ms']:.2f}]" if k.startswith("k") and
                              k.endswith("_ms") and "pattern" not in k else "")
            for k, v in med.items()))
    print_round_ratios(builds, results, keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
