"""Batched generation against solo runs, in one process on the same load.

N prompts of the core suite (θ alternating 0.1 / 0.2, isolated and visible, 20 steps,
no stop before 4, scores and α captured — what a study's generations are) generated one
at a time with ``Model.generate`` and together with ``Model.generate_many`` at several
``max_batch``; rounds alternate the order. Reports sequences per second, the ratio to
solo, and checks every batched run is bit for bit its solo run. Threads pinned and printed.
``--conditions 4`` runs each prompt under a study's four conditions (θ 0.1 / 0.2 ×
isolated / visible, one after another, as a study orders its cells), so a batch holds
several requests of one prompt, which share their prefill. CPU seconds are printed beside
wall seconds (a shared machine slows the wall clock, less the CPU time).

    PYTHONPATH=build/dev/pkg python bench/batched_generation.py [--prompts 16] [--threads 2] \
        [--conditions 1|4]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batches", default="4,8,16")
    ap.add_argument("--conditions", type=int, choices=(1, 4), default=1)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch

    import attnvar
    from attnvar.engine.records import tree_to_dict

    torch.set_num_threads(a.threads)
    model = attnvar.load_model()
    texts = [p.text for p in attnvar.prompts.suite("core")][: a.prompts]
    if a.conditions == 1:
        reqs = [dict(prompt=t, threshold=0.1 if i % 2 else 0.2,
                     mode="visible" if (i // 2) % 2 else "isolated", max_steps=a.steps,
                     min_new_steps=4) for i, t in enumerate(texts)]
    else:
        reqs = [dict(prompt=t, threshold=theta, mode=mode, max_steps=a.steps, min_new_steps=4)
                for t in texts for theta in (0.1, 0.2) for mode in ("isolated", "visible")]
    capture = attnvar.Capture(scores=True)
    batches = [int(b) for b in a.batches.split(",")]
    print(f"# batched generation — {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, {len(texts)} prompts × "
          f"{a.conditions} conditions × {a.steps} steps, capture scores + α; load "
          f"{os.getloadavg()[0]:.1f}")
    times: dict[str, list[float]] = {"solo": [], **{f"batch {b}": [] for b in batches}}
    cpu: dict[str, list[float]] = {name: [] for name in times}
    solo_runs = None
    identical = True
    for r in range(a.rounds):
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "solo":
                runs = [model.generate(capture=capture, **q) for q in reqs]
                solo_runs = solo_runs or runs
            else:
                runs = model.generate_many(reqs, capture=capture, max_batch=int(name.split()[1]))
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            if solo_runs is not None and name != "solo":
                identical &= all(tree_to_dict(x.tree) == tree_to_dict(y.tree)
                                 and torch.equal(x.scores, y.scores)
                                 for x, y in zip(solo_runs, runs, strict=True))
    base = statistics.median(times["solo"])
    base_cpu = statistics.median(cpu["solo"])
    print("| mode | median s | sequences/s | × solo | median CPU s | × solo (CPU) |")
    print("|---|---|---|---|---|---|")
    for name, ts in times.items():
        m, c = statistics.median(ts), statistics.median(cpu[name])
        print(f"| {name} | {m:.2f} | {len(reqs) / m:.2f} | {base / m:.2f} | {c:.2f} | "
              f"{base_cpu / c:.2f} |")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    print(f"batched runs bit for bit their solo runs: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
