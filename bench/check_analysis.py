"""Compare ``analyze_cell`` of this build with the per-cell tables a study stored: every
table of a seeded sample of cells is recomputed from the stored runs and compared with
``analysis/<cell>.<table>.parquet`` (same columns, rows and text; numbers to a tolerance,
NaN where NaN, same dtypes). Prints per table the largest relative difference (to max(|stored|, 1))
and the largest absolute one, the latter also without the columns that exponentiate an
estimate (ratio, effect_pct and its interval), whose magnitudes reach 1e6.

    ATTNVAR_BENCH_STUDY=results PYTHONPATH=build/dev/pkg python bench/check_analysis.py \\
        [--cells 40] [--tol 1e-10]

Exit status 1 when a table differs beyond ``--tol`` (absolute, or relative where the
stored value is larger than 1 in magnitude) or in its shape, columns or text.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

EXPONENTIATED = ("ratio", "effect_pct", "effect_pct_low", "effect_pct_high")


def table_difference(new: pd.DataFrame, old: pd.DataFrame) -> tuple[float, float, float, str]:
    """(max absolute, max absolute outside EXPONENTIATED, max relative difference of the
    numeric columns, mismatch message or ""). Rows are compared in order; NaN must meet
    NaN."""
    if list(new.columns) != list(old.columns):
        return np.inf, np.inf, np.inf, f"columns {list(new.columns)} != {list(old.columns)}"
    if len(new) != len(old):
        return np.inf, np.inf, np.inf, f"{len(new)} rows != {len(old)}"
    worst_abs = worst_log = worst_rel = 0.0
    for col in new.columns:
        if new[col].dtype != old[col].dtype:
            return np.inf, np.inf, np.inf, f"column {col}: {new[col].dtype} != {old[col].dtype}"
        a, b = new[col].to_numpy(), old[col].to_numpy()
        numeric = (np.issubdtype(a.dtype, np.number) or a.dtype == bool) \
            and (np.issubdtype(b.dtype, np.number) or b.dtype == bool)
        if not numeric:
            if not all((x == y) or (pd.isna(x) and pd.isna(y)) for x, y in zip(a, b, strict=True)):
                return np.inf, np.inf, np.inf, f"column {col} differs"
            continue
        a, b = a.astype(np.float64), b.astype(np.float64)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return np.inf, np.inf, np.inf, f"column {col}: NaN in different rows"
        both = np.isfinite(a) & np.isfinite(b)
        if not np.array_equal(a[~both & ~np.isnan(a)], b[~both & ~np.isnan(b)]):
            return np.inf, np.inf, np.inf, f"column {col}: infinities differ"
        if both.any():
            d = np.abs(a[both] - b[both])
            worst_abs = max(worst_abs, float(d.max()))
            if col not in EXPONENTIATED:
                worst_log = max(worst_log, float(d.max()))
            worst_rel = max(worst_rel, float((d / np.maximum(np.abs(b[both]), 1.0)).max()))
    return worst_abs, worst_log, worst_rel, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cells", type=int, default=40)
    ap.add_argument("--tol", type=float, default=1e-10)
    args = ap.parse_args()

    import torch

    from attnvar.analysis import per_cell
    from attnvar.engine import load_run
    from attnvar.study import preregistration

    torch.set_num_threads(1)
    root = Path(os.environ["ATTNVAR_BENCH_STUDY"])
    runs = pd.read_parquet(root / "tables" / "runs.parquet")
    prereg = preregistration.Preregistration.from_dict(preregistration.load(root)["plan"])
    rule, plan = prereg.exclusion_rule(), per_cell.placebo_plan(prereg)
    gen = runs[runs["kind"] == "generate"]
    gen = gen.sample(min(args.cells, len(gen)), random_state=1)
    worst = {name: [0.0, 0.0, 0.0] for name in per_cell.TABLE_NAMES}
    failures = []
    seconds = 0.0
    for g in gen.itertuples():
        reps = runs[runs["parent_id"] == g.run_id]
        generated = load_run(root / "runs" / g.run_id)
        replays = {e: load_run(root / "runs" / r)
                   for e, r in zip(reps["encoding"], reps["run_id"], strict=True)}
        t0 = time.perf_counter()
        tables = per_cell.analyze_cell(generated, replays, rule, g.prompt_id, g.run_id, plan)
        seconds += time.perf_counter() - t0
        for name in per_cell.TABLE_NAMES:
            old = pd.read_parquet(root / "analysis" / f"{g.run_id}.{name}.parquet")
            # As written to disk and read back (the stored tables went through parquet).
            new = pd.read_parquet(_roundtrip(tables[name]))
            d_abs, d_log, d_rel, why = table_difference(new, old)
            for i, d in enumerate((d_abs, d_log, d_rel)):
                worst[name][i] = max(worst[name][i], d)
            if why or d_rel > args.tol:
                failures.append(f"{g.run_id}.{name}: {why or f'difference {d_rel:.3g}'}")
    print(f"{len(gen)} cells of {root}, analyze_cell {seconds / len(gen):.3f} s per cell")
    print(f"{'table':<12} {'max abs diff':>14} {'(not exp.)':>12} {'max rel diff':>14}")
    for name, (d_abs, d_log, d_rel) in worst.items():
        print(f"{name:<12} {d_abs:>14.3g} {d_log:>12.3g} {d_rel:>14.3g}")
    for f in failures[:20]:
        print("FAIL", f)
    return 1 if failures else 0


def _roundtrip(frame: pd.DataFrame):
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    buf.seek(0)
    return buf


if __name__ == "__main__":
    sys.exit(main())
