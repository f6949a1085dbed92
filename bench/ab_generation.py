"""A/B of two attnvar builds on the harness's generation case: a 30-step parallel generation
(θ = 0.1, the core suite's second prompt, isolated) with full capture (α and scores), and
without capture. Each build runs in its own fresh process and the builds alternate round by
round (the order flips every round), so both see the same machine load; the report gives
per-round medians and the ratio of the two builds. Also checks that both builds generate the
same tree.

    python bench/ab_generation.py build/base/pkg build/dev/pkg [--rounds 4] [--reps 3]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness_util import ab_main  # noqa: E402

GEN_PROMPT_INDEX = 1  # as bench/harness.py: "Nobody in the village knew where the stranger ..."
STEPS, THRESHOLD = 30, 0.1


def worker(reps: int, threads: int) -> dict:
    import time

    import torch

    import attnvar

    torch.set_num_threads(threads)
    model = attnvar.load_model()
    prompt = attnvar.prompts.suite("core")[GEN_PROMPT_INDEX].text
    variants = {"capture": attnvar.Capture(scores=True), "nocapture": None}

    def once(capture):
        t0 = time.perf_counter()
        run = model.generate(prompt, threshold=THRESHOLD, max_steps=STEPS, capture=capture)
        return time.perf_counter() - t0, run

    once(None)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    tree = None
    for _ in range(reps):
        for name, capture in variants.items():
            dt, run = once(capture)
            times[name].append(dt)
            tree = [[m.token_id for m in s.members] for s in run.tree.steps]
    out = {f"gen_{name}_ms": 1000 * statistics.median(xs) for name, xs in times.items()}
    out["tree"] = tree
    return out


def main() -> int:
    ab = ab_main(__doc__, __file__, worker, rounds=4, reps=3, min_builds=2, fmt=".0f")
    if ab is None:
        return 0
    builds, results = ab
    a, b = builds
    same = all(x["tree"] == y["tree"] for x, y in zip(results[a], results[b], strict=True))
    print(f"\ntrees identical across builds and rounds: {'yes' if same else 'NO'}")
    keys = [k for k in results[a][0] if k != "tree"]
    print("median over rounds (ms)")
    for build in builds:
        med = {k: statistics.median(x[k] for x in results[build]) for k in keys}
        print(f"  {build}: " + ", ".join(f"{k} {v:.0f}" for k, v in med.items()))
    print(f"per-round ratio {a} ÷ {b} (speed-up of the second):")
    for k in keys:
        rs = [x[k] / y[k] for x, y in zip(results[a], results[b], strict=True)]
        print(f"  {k}: " + " ".join(f"{r:.2f}" for r in rs)
              + f"  (median {statistics.median(rs):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
