"""A/B of the per-cell analysis of two attnvar builds on the same stored runs: each build,
in its own fresh process, loads and analyses the same seeded sample of cells of a study
results directory (its generation and replays, as ``attnvar.analysis`` does for one
cell). Reports seconds per cell for loading the runs and for ``analyze_cell``, one
thread; builds alternate round by round so both see the same machine load.

    ATTNVAR_BENCH_STUDY=results python bench/ab_analysis.py build/base/pkg build/dev/pkg \\
        [--rounds 3] [--reps 24]

``--reps`` is the number of cells. The study must have been run by a build whose run
format both builds read (a newer build reads older runs). One build alone gives the
per-cell figures without a ratio.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness_util import ab_main, print_round_ratios  # noqa: E402


def worker(reps: int, threads: int) -> dict:
    import time

    import pandas as pd
    import torch

    from attnvar.analysis import per_cell
    from attnvar.analysis.metrics import covariates
    from attnvar.engine import load_run
    from attnvar.study import preregistration

    torch.set_num_threads(1)  # the analysis runs one thread per worker (util/threads.py)
    root = Path(os.environ["ATTNVAR_BENCH_STUDY"])
    runs = pd.read_parquet(root / "tables" / "runs.parquet")
    prereg = preregistration.Preregistration.from_dict(preregistration.load(root)["plan"])
    rule = prereg.exclusion_rule()
    plan = per_cell.placebo_plan(prereg) if hasattr(per_cell, "placebo_plan") else None
    gen = runs[runs["kind"] == "generate"].sample(min(reps, int((runs["kind"] == "generate")
                                                                 .sum())), random_state=0)
    covariates.zipf_frequency("the")  # the one-time word-frequency import, not timed
    load_s = analyze_s = 0.0
    for g in gen.itertuples():
        t0 = time.perf_counter()
        reps_of = runs[runs["parent_id"] == g.run_id]
        generated = load_run(root / "runs" / g.run_id)
        replays = {e: load_run(root / "runs" / r)
                   for e, r in zip(reps_of["encoding"], reps_of["run_id"], strict=True)}
        _ = generated.scores, [r.scores for r in replays.values()]  # force the lazy loads
        t1 = time.perf_counter()
        kw = {"placebo": plan} if plan is not None else {}
        per_cell.analyze_cell(generated, replays, rule, g.prompt_id, g.run_id, **kw)
        t2 = time.perf_counter()
        load_s += t1 - t0
        analyze_s += t2 - t1
    n = len(gen)
    return {"cells": n, "load_s_per_cell": load_s / n, "analyze_s_per_cell": analyze_s / n,
            "threads": 1}


def main() -> int:
    ab = ab_main(__doc__, __file__, worker, rounds=3, reps=24, fmt=".3f")
    if ab is None:
        return 0
    builds, results = ab
    keys = ["load_s_per_cell", "analyze_s_per_cell"]
    print("\nmedian over rounds (s per cell, one thread)")
    for b in builds:
        print(f"{b}: " + ", ".join(
            f"{k} {statistics.median(x[k] for x in results[b]):.3f}" for k in keys))
    print_round_ratios(builds, results, keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
