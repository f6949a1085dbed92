"""Calibrate attnvar.degeneracy's flag thresholds on the project's own sequential runs.

Generates greedy sequential runs (``threshold=1.0``: one token per step) of the bundled
model on prompts from the ``core`` suite, taken round-robin over categories so that a
short run still covers every category, computes every degeneracy metric per run and
writes the reference percentiles as JSON (``python/attnvar/data/degeneracy_thresholds.json``).

    PYTHONPATH=build/dev/pkg python tools/calibrate_degeneracy.py --time-budget 180

``--raw FILE`` keeps the generated runs (ids, text, entropies); ``--from-raw FILE``
recomputes the thresholds from such a file without generating.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "python/attnvar/data/degeneracy_thresholds.json"


def round_robin(prompts):
    """Prompts interleaved over categories, in suite order within each."""
    by_cat: dict[str, list] = defaultdict(list)
    for p in prompts:
        by_cat[p.category].append(p)
    queues = list(by_cat.values())
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def generate_runs(max_steps: int, n_prompts: int, time_budget: float, suite: str) -> dict:
    import attnvar

    model = attnvar.load_model()
    prompts = round_robin(attnvar.prompts.suite(suite))[:n_prompts]
    runs = []
    t0 = time.time()
    for p in prompts:
        if runs and time.time() - t0 > time_budget:
            break
        run = model.generate(p.text, threshold=1.0, max_steps=max_steps)
        ids = [s.members[0].token_id for s in run.tree.steps]
        entropies = [float(s.entropy) for s in run.tree.steps]
        ended_eos = bool(ids) and ids[-1] in model.eos_ids
        if ended_eos:  # the EOS token is not part of the text
            ids, entropies = ids[:-1], entropies[:-1]
        runs.append({
            "prompt_id": p.id,
            "category": p.category,
            "ids": ids,
            "text": "".join(run.pieces[i] for i in ids),
            "entropies": entropies,
            "stop_reason": run.stop_reason,
            "ended_eos": ended_eos,
        })
        print(f"{len(runs):3d} {p.id:24s} {time.time() - t0:6.1f}s", file=sys.stderr)
    return {
        "model_sha256": model.identity.get("sha256"),
        "model_file": Path(model.path).name,
        "suite": suite,
        "max_steps": max_steps,
        "generation": {"threshold": 1.0, "max_steps": max_steps, "mode": "isolated"},
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--n-prompts", type=int, default=132)
    ap.add_argument("--time-budget", type=float, default=180.0,
                    help="stop starting new runs after this many seconds")
    ap.add_argument("--suite", default="core")
    ap.add_argument("--raw", type=Path, help="also write the generated runs here")
    ap.add_argument("--from-raw", type=Path, help="use runs from this file; generate nothing")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--raw-only", action="store_true", help="generate and write --raw only")
    ap.add_argument("--note", default="", help="free text stored with the result")
    args = ap.parse_args(argv)

    if args.from_raw:
        raw = json.loads(args.from_raw.read_text())
    else:
        raw = generate_runs(args.max_steps, args.n_prompts, args.time_budget, args.suite)
        if args.raw:
            args.raw.write_text(json.dumps(raw))
    if args.raw_only:
        return 0

    from attnvar import degeneracy

    result = degeneracy.calibrate(raw["runs"])
    cmd = "python tools/calibrate_degeneracy.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    result.update({
        "command": cmd.strip(),
        "date": _dt.date.today().isoformat(),
        "model_file": raw["model_file"],
        "model_sha256": raw["model_sha256"],
        "suite": raw["suite"],
        "generation": raw["generation"],
        "prompt_ids": [r["prompt_id"] for r in raw["runs"]],
    })
    if args.note:
        result["note"] = args.note
    args.out.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    print(json.dumps(result["thresholds"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
