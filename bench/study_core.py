"""The core-suite study at scale (``study-core``), with the best HF way of doing its
generations and one replay encoding beside it.

Three phases, each in a fresh process with its threads pinned and printed:

``study``
    ``Study`` over the first N prompts of the core suite with the main job's design
    (θ 0.1 and 0.2, isolated and visible, 20 steps, no stop before 4, replays serial and
    top_only, scores and α captured), run end to end as ``attnvar study`` runs it:
    generations, replays, per-cell analysis, controls and report. Wall time, the largest
    process's peak RSS, and the bytes on disk per run and per study (with and without the
    raw captures: ``--tables-only`` drops them after each cell's analysis).
``attnvar``
    The study's generations through ``Model.generate_many`` (``--batch`` at a time) with
    scores and α captured, then their trees replayed in the serial encoding with capture
    through ``Model.replay_many`` (``--batch`` per pass; no next-step distributions, as a
    study's replays): what the HF phase does.
``hf``
    HF transformers, eager attention (needed for α), the same GGUF's weights in f32:
    prompts batched ``--batch`` at a time with left padding; every step feeds each
    sequence's parallel set in one pass at its shared position (``position_ids``), sets of
    different widths padded with dummy slots that nothing sees, an explicit 4-D additive
    mask per pass (the set's isolation, the padding), ``output_attentions=True``; the
    next-step distribution the probability-weighted mixture over the fed members, EOS
    excluded before step 4. Then the serial replays, batched with right padding, one pass
    each with the 4-D mask from the layout attnvar's encoder gives (``_core.encode``).
    Static batches (a finished sequence keeps dummy slots until its batch ends), as
    ``transformers``' own ``generate`` batches.

The trees of the two generation phases are compared (a tie within float rounding can pick
another token; HF's padded shapes round differently): the report gives the fraction that
agree exactly. Ratios are attnvar over HF time (> 1: attnvar faster).

    PYTHONPATH=build/dev/pkg python bench/study_core.py [--prompts 132] [--batch 8]
        [--threads 2] [--phases study attnvar hf] [--tables-only]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness_util import (  # noqa: E402
    cpu_count,
    cpu_model,
    dir_bytes,
    env_spincount,
    fmt_bytes,
    pin_threads_env,
    pin_threads_torch,
    uptime_line,
)

PHASES = ("study", "attnvar", "hf")
THRESHOLDS = (0.1, 0.2)
MODES = ("isolated", "visible")
STEPS = 20
MIN_NEW_STEPS = 4
MAX_WIDTH = 32
NEG_INF = float("-inf")


def conditions(prompts: list[dict]) -> list[dict]:
    """Every (prompt, θ, mode) of the design, in the study's order of prompts."""
    return [dict(prompt_id=p["id"], ids=p["ids"], threshold=t, mode=m)
            for p in prompts for t in THRESHOLDS for m in MODES]


def peak_rss_mb() -> dict:
    """This process's peak RSS and the largest peak among its finished children (MB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self_mb": own, "largest_child_mb": children, "largest_mb": max(own, children)}


# ---- phase: the study end to end ------------------------------------------------------------
def phase_study(spec: dict) -> dict:
    """``attnvar study`` as the README's main job runs it (its own worker processes)."""
    out = Path(spec["work"]) / "study"
    cmd = [sys.executable, "-m", "attnvar", "study", "--suite", "core", "--max-prompts",
           str(spec["prompts"]), "--workers", str(spec["workers"]), "--batch",
           str(spec["batch"]), "--out", str(out), "--no-progress",
           *(["--tables-only"] if spec["tables_only"] else [])]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    runs = [d for d in (out / "runs").iterdir() if (d / "run.json").exists()]
    return {"wall_s": wall, "runs": len(runs), "bytes_runs": dir_bytes(out / "runs"),
            "bytes_study": dir_bytes(out), "rss": peak_rss_mb()}


# ---- phase: attnvar's generations and serial replays ----------------------------------------
def phase_attnvar(spec: dict) -> dict:
    import attnvar

    model = attnvar.load_model()
    prompts = [dict(id=p.id, ids=list(model.encode(p.text)))
               for p in attnvar.prompts.suite("core")[: spec["prompts"]]]
    conds = conditions(prompts)
    cap = attnvar.Capture(scores=True)  # scores and α, every layer and head, as a study
    # (the figure compared below counts α alone: HF's eager attention returns no scores)
    requests = [dict(prompt=c["ids"], threshold=c["threshold"], mode=c["mode"],
                     max_steps=STEPS, min_new_steps=MIN_NEW_STEPS, max_width=MAX_WIDTH)
                for c in conds]
    trees, slots, captured, gen_s, rep_s = [], [], 0, 0.0, 0.0
    chunk = 4 * spec["batch"]  # runs held in memory at once
    for begin in range(0, len(requests), chunk):
        t0 = time.perf_counter()
        runs = model.generate_many(requests[begin:begin + chunk], capture=cap,
                                   max_batch=spec["batch"])
        t1 = time.perf_counter()
        reps = model.replay_many([(r.tree, "serial") for r in runs], capture=cap,
                                 logits=False, max_batch=spec["batch"])
        t2 = time.perf_counter()
        gen_s += t1 - t0
        rep_s += t2 - t1
        for run, rep in zip(runs, reps, strict=True):
            trees.append([[int(m.token_id) for m in s.members] for s in run.tree.steps])
            slots.append(run.num_slots)
            captured += sum(t.numel() * t.element_size() for r in (run, rep)
                            for ps in r.passes for t in (ps.attention or []))
    return {"generate_s": gen_s, "replay_s": rep_s, "trees": trees, "slots": slots,
            "prompts": prompts, "captured_bytes": captured, "eos_ids": list(model.eos_ids),
            "sha256": model.identity["sha256"], "path": model.identity["path"],
            "rss": peak_rss_mb()}


# ---- phase: HF, batched with padding -------------------------------------------------------
def _allowed_probs(q, eos: list[int], t: int):
    """Steps before MIN_NEW_STEPS choose without EOS (renormalised; q unchanged if all EOS)."""
    if t >= MIN_NEW_STEPS:
        return q
    kept = q.double().clone()
    kept[eos] = 0.0
    total = kept.sum()
    return q if total <= 0 else (kept / total).to(q.dtype)


def hf_generate_batch(model, seqs: list[dict], eos: list[int]) -> tuple[list, int]:
    """One static batch of parallel generations with left padding; returns each
    sequence's tree (member ids per step) and the bytes of attention captured."""
    import torch
    from harness_hf import mixture, select_set
    from transformers import DynamicCache

    B = len(seqs)
    lens = [len(s["ids"]) for s in seqs]
    P = max(lens)
    ids = torch.zeros(B, P, dtype=torch.long)
    pos = torch.zeros(B, P, dtype=torch.long)
    real = torch.zeros(B, P, dtype=torch.bool)  # which cache slots are real, per sequence
    for b, s in enumerate(seqs):
        pad = P - lens[b]
        ids[b, pad:] = torch.tensor(s["ids"])
        pos[b, pad:] = torch.arange(lens[b])
        real[b, pad:] = True
    # Prefill: causal over real slots; a padding slot sees only itself (no empty row).
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    eye = torch.eye(P, dtype=torch.bool)
    vis = (causal[None] & real[:, None, :]) | (eye[None] & ~real[:, :, None])
    mask = torch.zeros(B, 1, P, P).masked_fill_(~vis[:, None], NEG_INF)
    captured = 0
    trees: list[list[list[int]]] = [[] for _ in seqs]
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, position_ids=pos, attention_mask=mask,
                    past_key_values=cache, use_cache=True, output_attentions=True,
                    logits_to_keep=1)
        captured += sum(a.numel() * a.element_size() for a in out.attentions)
        q = [torch.softmax(out.logits[b, -1].float(), -1) for b in range(B)]
        active = [True] * B
        for t in range(STEPS):
            fed: list[list[tuple[int, float]]] = [[] for _ in seqs]
            for b, s in enumerate(seqs):
                if not active[b]:
                    continue
                members = select_set(_allowed_probs(q[b], eos, t), s["threshold"], MAX_WIDTH)
                trees[b].append([tok for tok, _ in members])
                fed[b] = [(tok, p) for tok, p in members if tok not in eos]
                if len(fed[b]) < len(members) or not fed[b] or t == STEPS - 1:
                    active[b] = False  # an EOS member ends the run; its set is still fed
            K = max(len(f) for f in fed)
            if K == 0:
                break
            S = real.shape[1]
            new_ids = torch.zeros(B, K, dtype=torch.long)
            new_pos = torch.zeros(B, K, dtype=torch.long)
            new_real = torch.zeros(B, K, dtype=torch.bool)
            block = torch.eye(K, dtype=torch.bool).expand(B, K, K).clone()
            for b, f in enumerate(fed):
                k = len(f)
                if k:
                    new_ids[b, :k] = torch.tensor([tok for tok, _ in f])
                    new_pos[b, :k] = lens[b] + t  # the set's shared position
                    new_real[b, :k] = True
                    if seqs[b]["mode"] == "visible":
                        block[b, :k, :k] = True
            old = real[:, None, :].expand(B, K, S) & new_real[:, :, None]
            vis = torch.cat([old, block], dim=2)
            mask = torch.zeros(B, 1, K, S + K).masked_fill_(~vis[:, None], NEG_INF)
            out = model(input_ids=new_ids, position_ids=new_pos, attention_mask=mask,
                        past_key_values=cache, use_cache=True, output_attentions=True)
            captured += sum(a.numel() * a.element_size() for a in out.attentions)
            real = torch.cat([real, new_real], dim=1)
            for b, f in enumerate(fed):
                if f and active[b]:
                    q[b] = mixture(out.logits[b, : len(f)], [p for _, p in f])
    return trees, captured


def hf_replay_batch(model, layouts: list[dict]) -> int:
    """One pass over several laid-out trees, right-padded, each with its 4-D mask."""
    import torch

    B = len(layouts)
    N = max(int(lay["token_ids"].numel()) for lay in layouts)
    ids = torch.zeros(B, N, dtype=torch.long)
    pos = torch.zeros(B, N, dtype=torch.float32)
    vis = torch.eye(N, dtype=torch.bool).expand(B, N, N).clone()  # padding sees itself
    for b, lay in enumerate(layouts):
        n = int(lay["token_ids"].numel())
        ids[b, :n] = lay["token_ids"]
        pos[b, :n] = lay["positions"].float()
        vis[b, :n, :n] = lay["visibility"]
    mask = torch.zeros(B, 1, N, N).masked_fill_(~vis[:, None], NEG_INF)
    with torch.inference_mode():
        out = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False,
                    output_attentions=True, logits_to_keep=1)
    return sum(a.numel() * a.element_size() for a in out.attentions)


def phase_hf(spec: dict) -> dict:
    import harness_hf

    from attnvar import _core

    given = json.loads(Path(spec["attnvar_result"]).read_text())
    hf_dir = harness_hf.ensure_cache(given["path"], given["sha256"], spec["hf_cache"])
    model = harness_hf.load_cached(hf_dir)
    conds = conditions(given["prompts"])
    eos = given["eos_ids"]
    B = spec["batch"]
    trees, captured = [], 0
    t0 = time.perf_counter()
    for begin in range(0, len(conds), B):
        batch_trees, nbytes = hf_generate_batch(model, conds[begin:begin + B], eos)
        trees += batch_trees
        captured += nbytes
    gen_s = time.perf_counter() - t0
    # The serial layouts of HF's own trees, from attnvar's encoder (outside the timing).
    layouts = []
    for c, tree in zip(conds, trees, strict=True):
        lay = _core.encode(_core.Tree.build(list(c["ids"]), tree, eos), "serial")
        layouts.append({"token_ids": lay.token_ids.clone(), "positions": lay.positions.clone(),
                        "visibility": lay.visibility.clone()})
    t0 = time.perf_counter()
    for begin in range(0, len(layouts), B):
        captured += hf_replay_batch(model, layouts[begin:begin + B])
    rep_s = time.perf_counter() - t0
    return {"generate_s": gen_s, "replay_s": rep_s, "trees": trees,
            "captured_bytes": captured, "rss": peak_rss_mb()}


WORKERS = {"study": phase_study, "attnvar": phase_attnvar, "hf": phase_hf}


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    pin_threads_env(spec["threads"], spec["wait_policy"], env_spincount())
    settings = pin_threads_torch(spec["threads"])
    result = WORKERS[spec["phase"]](spec)
    result["threads"] = settings
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


# ---- driver ----------------------------------------------------------------------------------
def run_phase(phase: str, base: dict, work: Path) -> dict:
    spec = {**base, "phase": phase, "out": str(work / f"{phase}.json")}
    path = work / f"{phase}.spec.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    print(f"== phase {phase} ({time.strftime('%H:%M:%S')}, {uptime_line()})", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", str(path)], env=env, check=True)
    result = json.loads(Path(spec["out"]).read_text())
    result["process_s"] = time.perf_counter() - t0
    return result


def report(args, R: dict) -> None:
    print(f"\n# study-core: {args.prompts} core prompts × {len(THRESHOLDS)} θ × "
          f"{len(MODES)} modes, {STEPS} steps, batch {args.batch}, {args.threads} threads")
    print(f"CPU: {cpu_model()} ({cpu_count()} available); {uptime_line()}")
    any_threads = next((r["threads"] for r in R.values()), None)
    if any_threads:
        print(f"threads: {any_threads}")
    if "study" in R:
        s = R["study"]
        per_run = s["bytes_runs"] / max(s["runs"], 1)
        print(f"\n## study end to end{' (--tables-only)' if args.tables_only else ''}")
        print("| wall | runs | runs on disk | per run | whole study directory | "
              "largest process peak RSS |")
        print("|---|---|---|---|---|---|")
        print(f"| {s['wall_s']:.0f} s ({s['wall_s'] / 60:.1f} min) | {s['runs']} | "
              f"{fmt_bytes(s['bytes_runs'])} | {fmt_bytes(per_run)} | "
              f"{fmt_bytes(s['bytes_study'])} | {s['rss']['largest_mb']:.0f} MB |")
    if "attnvar" in R or "hf" in R:
        print("\n## generations + serial replays, capture of scores and α (all layers, heads)")
        print("| | generate | replay (serial) | both | generations/s | α captured | peak RSS |")
        print("|---|---|---|---|---|---|---|")
        n = len(R.get("attnvar", R.get("hf"))["trees"])
        for name in ("attnvar", "hf"):
            if name in R:
                r = R[name]
                both = r["generate_s"] + r["replay_s"]
                print(f"| {name} | {r['generate_s']:.1f} s | {r['replay_s']:.1f} s | "
                      f"{both:.1f} s | {n / r['generate_s']:.2f} | "
                      f"{fmt_bytes(r['captured_bytes'])} | {r['rss']['self_mb']:.0f} MB |")
        if "attnvar" in R and "hf" in R:
            a, h = R["attnvar"], R["hf"]
            ratio = lambda key: h[key] / a[key]  # noqa: E731
            both = (h["generate_s"] + h["replay_s"]) / (a["generate_s"] + a["replay_s"])
            print(f"| **attnvar ÷ HF speed** | **{ratio('generate_s'):.2f}×** | "
                  f"**{ratio('replay_s'):.2f}×** | **{both:.2f}×** | | | |")
            same = sum(x == y for x, y in zip(a["trees"], h["trees"], strict=True))
            rest = "" if same == n else "; the others part after a near-tie"
            print(f"\ntrees identical in both: {same} of {n} ({100 * same / max(n, 1):.1f} %"
                  f"{rest})")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=132, help="core prompts (default all 132)")
    ap.add_argument("--batch", type=int, default=8,
                    help="sequences per pass for both (default 8, the study's batch)")
    ap.add_argument("--threads", type=int, default=2, help="threads per process (default 2)")
    ap.add_argument("--workers", type=int, default=cpu_count(),
                    help="the study's worker processes (default: the cores, as the main job)")
    ap.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    ap.add_argument("--tables-only", action="store_true",
                    help="the study keeps only tables and trees (no raw capture)")
    ap.add_argument("--wait-policy", default="passive", choices=("passive", "active"))
    ap.add_argument("--hf-cache", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "attnvar-bench"),
        help="where the HF f32 weights from the GGUF are kept between runs")
    ap.add_argument("--json", default=None, help="also write every figure to this file")
    args = ap.parse_args()
    if "hf" in args.phases and "attnvar" not in args.phases:
        ap.error("the hf phase takes its prompts' ids from the attnvar phase")
    work = Path(tempfile.mkdtemp(prefix="avbench-study-core-"))
    base = {"prompts": args.prompts, "batch": args.batch, "threads": args.threads,
            "workers": args.workers, "tables_only": args.tables_only,
            "wait_policy": args.wait_policy, "hf_cache": args.hf_cache, "work": str(work),
            "attnvar_result": str(work / "attnvar.json")}
    R = {}
    try:
        for phase in ("attnvar", "hf", "study"):  # hf reads the attnvar phase's prompt ids
            if phase in args.phases:
                R[phase] = run_phase(phase, base, work)
        report(args, R)
        if args.json:
            Path(args.json).write_text(json.dumps(R, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
