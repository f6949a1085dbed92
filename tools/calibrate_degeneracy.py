"""Calibrate attnvar.degeneracy's flag thresholds on the project's own sequential runs.

Generates greedy sequential runs (``threshold=1.0``: one token per step) of the bundled
model on prompts from the ``core`` suite, taken round-robin over categories so that a
short run still covers every category, at the longest of ``--lengths`` (default 20 and
30 steps, the lengths studies use). Greedy decoding is deterministic, so each shorter
length's runs are the prefixes of the longer runs; ``--check-prefix N`` regenerates N
prompts at each shorter length and records whether ids and entropies are identical.
Every degeneracy metric is computed per run and length, and the reference percentiles
are written as JSON (``python/attnvar/study/data/degeneracy_thresholds.json``).

``--evaluate-threshold θ`` (default 0.1, the study default; 0 to skip) also generates
ordinary parallel runs at θ on the same prompts and records their flag and exclusion
rates per length (prefixes again), under ``ordinary_flag_rates``.

    PYTHONPATH=build/dev/pkg python tools/calibrate_degeneracy.py --time-budget 300

``--raw FILE`` keeps the generated runs (ids, pieces, text, entropies); ``--from-raw FILE``
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

DEFAULT_OUT = (Path(__file__).resolve().parents[1] / "python" / "attnvar" / "study" / "data"
               / "degeneracy_thresholds.json")


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


def top_path(model, run) -> dict:
    """ids, per-token pieces, text and entropies of a run's top path, trailing EOS off."""
    ids = [s.members[0].token_id for s in run.tree.steps]
    entropies = [float(s.entropy) for s in run.tree.steps]
    ended_eos = bool(ids) and ids[-1] in model.eos_ids
    if ended_eos:  # the EOS token is not part of the text
        ids, entropies = ids[:-1], entropies[:-1]
    pieces = [run.pieces[i] for i in ids]
    return {"ids": ids, "pieces": pieces, "text": "".join(pieces), "entropies": entropies,
            "stop_reason": run.stop_reason, "ended_eos": ended_eos,
            "parallel_steps": sum(len(s.members) >= 2 for s in run.tree.steps)}


def generate_runs(model, prompts, threshold: float, max_steps: int, time_budget: float,
                  label: str) -> tuple[list[dict], float]:
    runs = []
    t0 = time.time()
    for p in prompts:
        if runs and time.time() - t0 > time_budget:
            break
        run = model.generate(p.text, threshold=threshold, max_steps=max_steps)
        runs.append({"prompt_id": p.id, "category": p.category, **top_path(model, run)})
        print(f"{label} {len(runs):3d} {p.id:24s} {time.time() - t0:6.1f}s", file=sys.stderr)
    return runs, time.time() - t0


def check_prefixes(model, prompts, runs: list[dict], lengths: list[int], n: int) -> dict:
    """Regenerate the first ``n`` prompts at each shorter length; compare with the
    prefixes of the longest runs."""
    by_id = {r["prompt_id"]: r for r in runs}
    checked = []
    for p in prompts[:n]:
        for L in lengths[:-1]:
            short = top_path(model, model.generate(p.text, threshold=1.0, max_steps=L))
            long = by_id[p.id]
            m = len(short["ids"])
            checked.append({
                "prompt_id": p.id, "length": L,
                "ids_equal": short["ids"] == long["ids"][:m],
                "max_entropy_diff": max((abs(a - b) for a, b in
                                         zip(short["entropies"], long["entropies"][:m],
                                             strict=True)), default=0.0)})
    return {"n_checked": len(checked),
            "all_equal": all(c["ids_equal"] and c["max_entropy_diff"] == 0.0 for c in checked),
            "runs": checked}


def generate_all(args) -> dict:
    import attnvar

    t0 = time.time()
    model = attnvar.load_model()
    prompts = round_robin(attnvar.prompts.suite(args.suite))[: args.n_prompts]
    lengths = sorted(set(args.lengths))
    runs, seq_s = generate_runs(model, prompts, 1.0, lengths[-1], args.time_budget, "seq")
    prefix = check_prefixes(model, prompts, runs, lengths, args.check_prefix)
    raw = {
        "model_sha256": model.identity.get("sha256"),
        "model_file": Path(model.path).name,
        "suite": args.suite,
        "lengths": lengths,
        "generation": {"threshold": 1.0, "max_steps": lengths[-1], "lengths": lengths,
                       "mode": "isolated",
                       "shorter_lengths": f"prefixes of the {lengths[-1]}-step runs"},
        "prefix_check": prefix,
        "runs": runs,
        "sequential_seconds": round(seq_s, 1),
    }
    if args.evaluate_threshold > 0:
        ordinary, ord_s = generate_runs(model, prompts, args.evaluate_threshold, lengths[-1],
                                        args.evaluate_budget, f"θ={args.evaluate_threshold}")
        raw["ordinary"] = {"threshold": args.evaluate_threshold, "runs": ordinary,
                           "seconds": round(ord_s, 1)}
    raw["generation_seconds"] = round(time.time() - t0, 1)
    return raw


def ordinary_rates(degeneracy, raw: dict, rec: dict) -> dict:
    """Flag and exclusion rates of the ordinary (parallel) runs at each length."""
    ordinary = raw["ordinary"]
    out: dict = {"threshold": ordinary["threshold"], "n_generated": len(ordinary["runs"])}
    for L in raw["lengths"]:
        cut = [degeneracy._prefix(r, L) for r in ordinary["runs"]]
        kept = [r for r in cut if len(r["ids"]) >= -(-2 * L // 3)]
        out[str(L)] = {
            **degeneracy.flag_rates(kept, rec, length=L),
            "mean_parallel_steps": round(
                sum(r["parallel_steps"] for r in ordinary["runs"]) / len(ordinary["runs"]), 2)
            if L == raw["lengths"][-1] else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[20, 30],
                    help="generation lengths (steps) to calibrate; runs are made at the "
                         "longest, shorter lengths are their prefixes")
    ap.add_argument("--n-prompts", type=int, default=132)
    ap.add_argument("--time-budget", type=float, default=300.0,
                    help="stop starting new sequential runs after this many seconds")
    ap.add_argument("--check-prefix", type=int, default=3,
                    help="prompts regenerated at each shorter length to check the prefix rule")
    ap.add_argument("--evaluate-threshold", type=float, default=0.1,
                    help="θ of the ordinary parallel runs whose flag rates are recorded "
                         "(0: skip)")
    ap.add_argument("--evaluate-budget", type=float, default=360.0,
                    help="stop starting new ordinary runs after this many seconds")
    ap.add_argument("--suite", default="core")
    ap.add_argument("--raw", type=Path, help="also write the generated runs here")
    ap.add_argument("--from-raw", type=Path, help="use runs from this file; generate nothing")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--raw-only", action="store_true", help="generate and write --raw only")
    ap.add_argument("--note", default="", help="free text stored with the result")
    args = ap.parse_args(argv)

    t0 = time.time()
    if args.from_raw:
        raw = json.loads(args.from_raw.read_text())
    else:
        raw = generate_all(args)
        if args.raw:
            args.raw.write_text(json.dumps(raw))
    if args.raw_only:
        return 0

    from attnvar import degeneracy

    result = degeneracy.calibrate(raw["runs"], lengths=raw["lengths"])
    if "ordinary" in raw:
        result["ordinary_flag_rates"] = ordinary_rates(degeneracy, raw, result)
    cmd = "python tools/calibrate_degeneracy.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    result.update({
        "command": cmd.strip(),
        "date": _dt.date.today().isoformat(),
        "wall_seconds": {"generation": raw.get("generation_seconds"),
                         "sequential": raw.get("sequential_seconds"),
                         "ordinary": (raw.get("ordinary") or {}).get("seconds"),
                         "this_command": round(time.time() - t0, 1)},
        "model_file": raw["model_file"],
        "model_sha256": raw["model_sha256"],
        "suite": raw["suite"],
        "generation": raw["generation"],
        "prefix_check": {k: raw["prefix_check"][k] for k in ("n_checked", "all_equal")},
        "prompt_ids": [r["prompt_id"] for r in raw["runs"]],
    })
    if args.note:
        result["note"] = args.note
    args.out.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    print(json.dumps({L: v["thresholds"]["ids"] for L, v in result["by_length"].items()},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
