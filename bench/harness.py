"""attnvar beside HF transformers, and beside this machine's memory-bandwidth limit (issue 11).

One run, one machine, one model (the bundled SmolLM2-135M-Instruct Q4_1 GGUF dequantized to
f32), one thread count, identical inputs. Every case runs in a fresh worker process per
implementation, so its peak resident memory is its own. Prints a Markdown report and
writes it to bench/results/.

    PYTHONPATH=build/dev/pkg python bench/harness.py [--quick] [--threads 2]
        [--cases prefill decode parallel generation replay study] [--out bench/results/x.md]

See docs/benchmarks.md for what each case measures and how the baseline is built.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness_util import (  # noqa: E402
    DEFAULT_SPINCOUNT,
    cpu_count,
    cpu_model,
    fmt_bytes,
    load_average,
    mem_total_gb,
    pin_threads_env,
    pin_threads_torch,
    repo_root,
    uptime_line,
)

ALL_CASES = ("prefill", "decode", "parallel", "generation", "replay", "study")
ENCODINGS = ("shared_isolated", "shared_visible", "shared_causal", "serial", "fractional")

FULL = {
    "prefill": {"lengths": [128, 512], "repeats": 3},
    "decode": {"contexts": [128, 512], "steps": 24, "repeats": 3},
    "parallel": {"context": 128, "ks": [1, 2, 4, 8], "repeats": 8},
    "generation": {"steps": 30, "threshold": 0.1, "repeats": 3},
    "replay": {"encodings": list(ENCODINGS), "repeats": 3},
    "study": {"prompts": 20, "steps": 30, "threshold": 0.1},
    "bandwidth": {"bytes": 1 << 30, "repeats": 5},
}
QUICK = {
    "prefill": {"lengths": [128], "repeats": 1},
    "decode": {"contexts": [128], "steps": 6, "repeats": 1},
    "parallel": {"context": 128, "ks": [1, 4], "repeats": 2},
    "generation": {"steps": 6, "threshold": 0.1, "repeats": 1},
    "replay": {"encodings": list(ENCODINGS), "repeats": 1},
    "study": {"prompts": 2, "steps": 5, "threshold": 0.1},
    "bandwidth": {"bytes": 1 << 30, "repeats": 2},
}
GEN_PROMPT_INDEX = 1      # core suite: "Nobody in the village knew where the stranger ..."
REPLAY_SLOTS, REPLAY_PROMPT = 60, 24
REPLAY_WIDTHS = [1, 2, 1, 3, 1, 1, 2, 4]  # cycled until the tree has REPLAY_SLOTS slots
REPLAY_TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a "
    "tin of oil and a cloth for the great brass lamp. Ships far out on the grey water "
    "depended on its beam, and he had not missed a single night in forty years of service, "
    "not even during the winter storm that tore the roof from the boathouse below."
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- inputs ------------------------------------------------------------------------------
def replay_tree_ids(tokenizer_ids: list[int], eos: set[int]) -> tuple[list[int], list[list[int]]]:
    """A hand-built tree of REPLAY_SLOTS slots: a REPLAY_PROMPT-token prompt, then sets whose
    rank-0 member continues the text and whose other members are later tokens of it."""
    ids = [i for i in tokenizer_ids if i not in eos]
    prompt, rest = ids[:REPLAY_PROMPT], ids[REPLAY_PROMPT:]
    need = REPLAY_SLOTS - REPLAY_PROMPT
    steps, t = [], 0
    while need > 0:
        w = min(REPLAY_WIDTHS[t % len(REPLAY_WIDTHS)], need)
        members = [rest[t]]
        j = t + 5
        while len(members) < w:
            c = rest[j % len(rest)]
            if c not in members:
                members.append(c)
            j += 4
        steps.append(members)
        need -= w
        t += 1
    return prompt, steps


def prepare(args, params, tmp: Path) -> dict:
    import harness_hf
    import torch

    import attnvar
    from attnvar import _core

    t0 = time.perf_counter()
    model_path = attnvar.default_model_path()
    av = attnvar.load_model(model_path)
    log(f"[prep] attnvar model loaded in {time.perf_counter() - t0:.1f} s: {av!r}")
    eos = list(av.eos_ids)
    gen = torch.Generator().manual_seed(0)
    random_ids = torch.randint(32, av.core.vocab_size, (1100,), generator=gen)
    suite = attnvar.prompts.suite("core")
    gen_prompt = av.encode(suite[GEN_PROMPT_INDEX].text)
    study_prompts = [
        {"id": p.id, "text": p.text, "category": p.category, "structure": p.structure,
         "pair": p.pair, "ids": av.encode(p.text)}
        for p in suite[: params["study"]["prompts"]]
    ]
    r_prompt, r_steps = replay_tree_ids(av.encode(REPLAY_TEXT), set(eos))
    tree = av.tree(r_prompt, r_steps)
    layouts = {}
    for enc in ENCODINGS:
        lay = _core.encode(tree, enc)
        layouts[enc] = {"token_ids": lay.token_ids.clone(), "positions": lay.positions.clone(),
                        "visibility": lay.visibility.clone(),
                        "step_begin": list(lay.step_begin)}
    assert all(layouts[e]["token_ids"].numel() == REPLAY_SLOTS for e in ENCODINGS)

    hf_dir = harness_hf.ensure_cache(model_path, av.identity["sha256"], args.hf_cache)
    hf = harness_hf.load_cached(hf_dir)
    wbytes = harness_hf.weight_bytes(hf)
    parity = parity_check(av, hf, random_ids)
    inputs = {
        "model_path": str(model_path), "hf_dir": str(hf_dir), "eos_ids": eos,
        "random_ids": random_ids, "gen_prompt": gen_prompt, "study_prompts": study_prompts,
        "replay": {"prompt": r_prompt, "steps": r_steps, "layouts": layouts},
    }
    torch.save(inputs, tmp / "inputs.pt")
    info = {
        "model": f"{model_path.name} (sha256 {av.identity['sha256'][:16]}…), "
                 f"{av.identity.get('quantization')} dequantized to f32",
        "weight_bytes": wbytes, "parity": parity, "gen_prompt": suite[GEN_PROMPT_INDEX].text,
        "gen_prompt_tokens": len(gen_prompt), "replay_prompt_tokens": len(r_prompt),
        "replay_widths": [len(s) for s in r_steps], "hf_dir": str(hf_dir),
        "study_prompt_ids": [p["id"] for p in study_prompts],
    }
    del av, hf
    return info


def parity_check(av, hf, random_ids) -> dict:
    """On one parallel step (128-token context, k = 4 isolated members at position 128),
    HF given the 4-D mask (1, 1, k, S_prev + k) must give attnvar's logits within 1e-3."""
    import harness_hf
    import torch
    from transformers import DynamicCache

    from attnvar import _core

    ctx, k = 128, 4
    ids = random_ids[: ctx + k]
    cache = av.core.new_cache()
    av.core.forward(cache, ids[:ctx], torch.arange(float(ctx)), _core.causal_visibility(ctx, 0))
    ours = av.core.forward(cache, ids[ctx:], torch.full((k,), float(ctx)),
                           _core.set_visibility(k, ctx, "isolated"), capture=True)
    mask = harness_hf.set_mask(k, ctx, "isolated")
    with torch.inference_mode():
        hc = DynamicCache(config=hf.config)
        hf(input_ids=ids[None, :ctx], position_ids=torch.arange(ctx)[None], past_key_values=hc,
           use_cache=True)
        out = hf(input_ids=ids[None, ctx:], position_ids=torch.full((1, k), ctx),
                 attention_mask=mask, past_key_values=hc, use_cache=True, output_attentions=True)
    d_logits = (ours["logits"].double() - out.logits[0].double()).abs().max().item()
    d_attn = max((a.double() - b[0].double()).abs().max().item()
                 for a, b in zip(ours["attention"], out.attentions, strict=True))
    res = {"mask_shape": list(mask.shape), "max_abs_logit_diff": d_logits,
           "max_abs_attention_diff": d_attn, "ok": d_logits < 1e-3}
    print(f"[parity] parallel step k={k} at position {ctx} after a {ctx}-token context; HF 4-D "
          f"mask {tuple(mask.shape)}: max |logit diff| = {d_logits:.2e}, max |attention diff| = "
          f"{d_attn:.2e} -> {'OK (< 1e-3)' if res['ok'] else 'MISMATCH'}", flush=True)
    if not res["ok"]:
        raise SystemExit("parity check failed: HF and attnvar do not do the same work")
    return res


# ---- workers -----------------------------------------------------------------------------
def run_worker(case: str, impl: str, params: dict, args, tmp: Path, info: dict) -> dict:
    spec = {"case": case, "impl": impl, "threads": args.threads, "params": params,
            "inputs": str(tmp / "inputs.pt"), "out": str(tmp / f"{case}-{impl}.json")}
    spec_path = tmp / f"{case}-{impl}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["TQDM_DISABLE"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / "harness_cases.py"), str(spec_path)],
                          env=env, capture_output=True, text=True, timeout=args.case_timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        log(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"worker {case}/{impl} failed (exit {proc.returncode})")
    out = json.loads(Path(spec["out"]).read_text())
    out["wall_s"] = wall
    log(f"[case] {case:<10} {impl:<7} {wall:6.1f} s  peak RSS {out['memory']['peak_mb']:.0f} MB")
    return out


def merge_bandwidth(start: dict, end: dict) -> dict:
    """The two bandwidth probes (before the first case, after the last) as one: each kernel
    keeps its best, the roofline the highest of all, and both probes' figures are kept."""
    a, b = start["metrics"], end["metrics"]
    kernels = {k: {"best_GBs": max(v["best_GBs"], b["kernels"][k]["best_GBs"]),
                   "median_GBs": max(v["median_GBs"], b["kernels"][k]["median_GBs"])}
               for k, v in a["kernels"].items()}
    best = max(kernels, key=lambda k: kernels[k]["best_GBs"])
    merged = dict(start)
    merged["metrics"] = {**a, "kernels": kernels, "best_kernel": best,
                         "bandwidth_GBs": kernels[best]["best_GBs"],
                         "probes_GBs": [a["bandwidth_GBs"], b["bandwidth_GBs"]]}
    merged["wall_s"] = start.get("wall_s", 0) + end.get("wall_s", 0)
    return merged


# ---- report ------------------------------------------------------------------------------
def fmt(x, nd=1):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def build_report(args, params, info, R, header) -> tuple[str, dict]:
    lines = list(header)
    rows = []  # case, unit, attnvar, hf, speed-up (attnvar ÷ HF as a speed-up), notes
    verdicts = []
    bw = R.get(("bandwidth", "-"), {}).get("metrics", {})
    roof = bw["bandwidth_GBs"] * 1e9 / info["weight_bytes"] if bw else None

    def m(case, impl):
        return R.get((case, impl), {}).get("metrics", {})

    if "prefill" in args.cases:
        a, h = m("prefill", "attnvar"), m("prefill", "hf")
        for T in params["prefill"]["lengths"]:
            x, y = a.get(f"prefill_{T}_tok_s"), h.get(f"prefill_{T}_tok_s")
            rows.append((f"prefill T={T}", "tokens/s", x, y, ratio(x, y), ""))
    if "decode" in args.cases:
        a, h = m("decode", "attnvar"), m("decode", "hf")
        for ctx in params["decode"]["contexts"]:
            x, y = a.get(f"decode_{ctx}_steps_s"), h.get(f"decode_{ctx}_steps_s")
            sd = h.get(f"decode_{ctx}_steps_s_sdpa")
            note = ""
            if roof:
                note = (f"roofline {roof:.1f} steps/s: attnvar {100 * x / roof:.0f} %, "
                        f"HF {100 * y / roof:.0f} %")
            if sd:
                note += f"; HF sdpa (no capture possible) {sd:.1f} steps/s"
            rows.append((f"decode k=1, context {ctx}", "steps/s", x, y, ratio(x, y), note))
            verdicts.append((f"decode without capture ≥ 1.5× HF (context {ctx})",
                             f"{ratio(x, y):.2f}×", ratio(x, y) >= 1.5))
            if roof:
                verdicts.append((f"decode ≥ 40 % of roofline (context {ctx}; aim 60 %)",
                                 f"{100 * x / roof:.0f} %", x / roof >= 0.40))
    if "parallel" in args.cases:
        a, h = m("parallel", "attnvar"), m("parallel", "hf")
        ctx = params["parallel"]["context"]
        for cap in ("", "_capture"):
            base_a, base_h = a.get(f"step_k1{cap}_ms"), h.get(f"step_k1{cap}_ms")
            for k in params["parallel"]["ks"]:
                x, y = a.get(f"step_k{k}{cap}_ms"), h.get(f"step_k{k}{cap}_ms")
                note = (f"× k=1: attnvar {ratio(x, base_a):.2f}, HF {ratio(y, base_h):.2f}"
                        if k != 1 else "")
                label = (f"parallel step k={k}, context {ctx}"
                         + (", capture α+scores (HF α)" if cap else ", no capture"))
                rows.append((label, "ms/pass", x, y, ratio(y, x), note))
            r4 = ratio(a.get(f"step_k4{cap}_ms"), base_a)
            if cap == "":
                verdicts.append(("k = 4 step ≤ 1.3× k = 1 (no capture)", f"{r4:.2f}×", r4 <= 1.3))
            else:
                verdicts.append(("k = 4 step ≤ 1.3× k = 1 (with capture; reported, not a target)",
                                 f"{r4:.2f}×", r4 <= 1.3))
    if "generation" in args.cases:
        a, h = m("generation", "attnvar"), m("generation", "hf")
        g = params["generation"]
        steps_a = a.get("steps_done")
        same = a.get("tree") == h.get("tree") if a and h else None
        note = (f"{steps_a} steps, {a.get('slots')} slots; trees identical: "
                f"{'yes' if same else 'NO'}")
        x, y = a.get("gen_capture_s"), h.get("gen_capture_s")
        rows.append((f"generation {g['steps']} steps θ={g['threshold']}, capture α+scores "
                     "(HF α only)", "s/run", x, y, ratio(y, x), note))
        xa = a.get("gen_alpha_s")
        rows.append(("generation, capture α only (both)", "s/run", xa, y, ratio(y, xa), ""))
        x0, y0 = a.get("gen_nocapture_s"), h.get("gen_nocapture_s")
        rows.append(("generation, no capture", "s/run", x0, y0, ratio(y0, x0), ""))
        ov_a, ov_h = ratio(x, x0), ratio(y, y0)
        rows.append(("capture overhead (generation with ÷ without)", "ratio", ov_a, ov_h, None,
                     f"attnvar α-only: {ratio(xa, x0):.2f}" if xa else ""))
        verdicts.append(("generation with full capture ≥ 3× HF", f"{ratio(y, x):.2f}×",
                         ratio(y, x) >= 3))
        verdicts.append(("capture overhead ≤ 15 % (α+scores)", f"{100 * (ov_a - 1):+.0f} %",
                         ov_a <= 1.15))
        verdicts.append(("capture overhead ≤ 15 % (α only; reported)",
                         f"{100 * (ratio(xa, x0) - 1):+.0f} %", ratio(xa, x0) <= 1.15))
    if "replay" in args.cases:
        a, h = m("replay", "attnvar"), m("replay", "hf")
        x, y = a.get("replay_s"), h.get("replay_s")
        rows.append((f"replay {REPLAY_SLOTS}-slot tree × {len(params['replay']['encodings'])} "
                     "encodings, capture α+scores (HF α)", "s (all 5)", x, y, ratio(y, x),
                     f"slots per run {a.get('slots')}"))
    if "study" in args.cases:
        a, h = m("study", "attnvar"), m("study", "hf")
        s = params["study"]
        same = sum(1 for pid, t in a.get("trees", {}).items() if h.get("trees", {}).get(pid) == t)
        x, y = a.get("study_s"), h.get("study_s")
        rows.append((f"study {s['prompts']} prompts × ≤{s['steps']} steps, capture, saved",
                     "s", x, y, ratio(y, x),
                     f"{a.get('total_steps')} steps in all; identical trees {same}/{s['prompts']}; "
                     "attnvar time includes its model load and tables"))

    lines += ["", "## Figures (median of repeats; speed-up = attnvar ÷ HF in throughput)", "",
              "| case | unit | attnvar | HF eager | speed-up | notes |",
              "|---|---|---|---|---|---|"]
    for case, unit, x, y, r, note in rows:
        rr = "—" if r is None else f"{r:.2f}×"
        lines.append(f"| {case} | {unit} | {fmt(x, 3 if unit == 'ratio' else 1)} | "
                     f"{fmt(y, 3 if unit == 'ratio' else 1)} | {rr} | {note} |")

    if bw:
        kern = "; ".join(f"{k} {v['best_GBs']:.1f}" for k, v in bw["kernels"].items())
        lines += ["", "## Roofline", "",
                  f"- streaming read bandwidth: **{bw['bandwidth_GBs']:.1f} GB/s** (best of "
                  f"{params['bandwidth']['repeats']} over a "
                  f"{bw['array_bytes'] / 2**30:.0f} GiB f32 "
                  f"array, {bw['torch_threads']} threads, highest of the read kernels, GB/s: "
                  f"{kern})"
                  + (f"; probed before the first case and after the last: "
                     f"{bw['probes_GBs'][0]:.1f} and {bw['probes_GBs'][1]:.1f} GB/s, each "
                     "kernel's best of both kept" if "probes_GBs" in bw else ""),
                  f"- resident f32 weights read per decode step: {info['weight_bytes']:,} bytes "
                  f"({info['weight_bytes'] / 1e6:.1f} MB; every weight once, the tied embedding "
                  "counted once as lm_head)",
                  f"- roofline: {roof:.1f} decode steps/s"]
        if "decode" in args.cases:
            a, h = m("decode", "attnvar"), m("decode", "hf")
            for ctx in params["decode"]["contexts"]:
                x, y = a.get(f"decode_{ctx}_steps_s"), h.get(f"decode_{ctx}_steps_s")
                lines.append(f"- context {ctx}: attnvar {x:.1f} steps/s = "
                             f"**{100 * x / roof:.0f} %** "
                             f"of roofline; HF {y:.1f} steps/s = {100 * y / roof:.0f} %")

    lines += ["", "## Memory and capture bytes (one worker process per case and implementation)",
              "", "| case | attnvar peak RSS | HF peak RSS | attnvar RSS at start "
              "| HF RSS at start "
              "| run files written: attnvar | HF |", "|---|---|---|---|---|---|---|"]
    for case in [c for c in ALL_CASES if c in args.cases]:
        a, h = R.get((case, "attnvar"), {}), R.get((case, "hf"), {})
        am, hm = a.get("memory", {}), h.get("memory", {})
        ab = a.get("metrics", {}).get("bytes_capture")
        hb = h.get("metrics", {}).get("bytes_capture")
        extra = ""
        if case == "generation" and a.get("metrics", {}).get("bytes_alpha"):
            extra = f" (α only: {fmt_bytes(a['metrics']['bytes_alpha'])})"
        per = {"generation": "one run", "replay": "5 runs", "study": "all runs"}.get(case, "")
        lines.append(
            f"| {case} | {am.get('peak_mb', 0):.0f} MB | {hm.get('peak_mb', 0):.0f} MB | "
            f"{am.get('before_mb', 0):.0f} MB | {hm.get('before_mb', 0):.0f} MB | "
            f"{fmt_bytes(ab) + extra + (' / ' + per if per else '') if ab else '—'} | "
            f"{fmt_bytes(hb) if hb else '—'} |")
    lines += ["", "Peak RSS is VmHWM reset after the model is loaded (`/proc/self/clear_refs`), "
              "so it is the case's own peak with the resident weights included; the study's "
              "attnvar figure includes the model load its `Study.run` does. Bytes written: the "
              "saved run directories (`run.save`: capture tensors, next-step distributions of "
              "replays, visibility, run.json; the study: every run directory). HF keeps only α "
              "(transformers has no pre-softmax score output) and the tree, attnvar α and "
              "scores, so attnvar writes about twice the capture bytes for the same runs."]

    lines += ["", "## Targets (issue 11)", "", "| target | measured | verdict |", "|---|---|---|"]
    for name, val, ok in verdicts:
        lines.append(f"| {name} | {val} | {'met' if ok else '**not met**'} |")
    return "\n".join(lines) + "\n", {"rows": rows, "verdicts": verdicts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller cases (≲ 3 min)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every worker (default 2)")
    ap.add_argument("--cases", nargs="+", default=list(ALL_CASES), choices=ALL_CASES)
    ap.add_argument("--out", default=None, help="Markdown report path (default "
                    "bench/results/harness-<date>[-quick].md)")
    ap.add_argument("--hf-cache", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "attnvar-bench"),
        help="where the HF f32 weights from the GGUF are kept between runs")
    ap.add_argument("--case-timeout", type=int, default=900, help="seconds per worker")
    ap.add_argument("--omp-wait-policy", default="passive",
                    choices=("passive", "active", "unset"),
                    help="OMP_WAIT_POLICY for every process (default passive: on a machine "
                    "shared with other processes, spinning OpenMP workers steal the core from "
                    "the thread doing the work; see docs/benchmarks.md); unset = the "
                    "environment's value")
    ap.add_argument("--gomp-spincount", default=str(DEFAULT_SPINCOUNT),
                    help="GOMP_SPINCOUNT for every process (default 1000, about 10 µs: an "
                    "idle worker spins that long before it sleeps, so the back-to-back "
                    "parallel regions of a pass do not each pay a futex wake-up; passive "
                    "alone is 0, libgomp's default 300000; see docs/benchmarks.md); unset = "
                    "the environment's value")
    ap.add_argument("--no-roofline", action="store_true", help="skip the bandwidth measurement")
    args = ap.parse_args()

    if args.gomp_spincount != "unset" and not args.gomp_spincount.isdigit():
        ap.error(f"--gomp-spincount: expected a non-negative integer or 'unset', "
                 f"got {args.gomp_spincount!r}")
    pin_threads_env(args.threads, None if args.omp_wait_policy == "unset" else args.omp_wait_policy,
                    None if args.gomp_spincount == "unset" else int(args.gomp_spincount))
    import torch
    import transformers

    import attnvar

    threads = pin_threads_torch(args.threads)
    params = QUICK if args.quick else FULL
    started = dt.datetime.now().astimezone()
    load_before, uptime_before = load_average(), uptime_line()
    log(f"[harness] {'quick' if args.quick else 'full'} run, threads {args.threads}; "
        f"{uptime_before}")
    t_all = time.perf_counter()
    R = {}
    with tempfile.TemporaryDirectory(prefix="avbench-") as tmpdir:
        tmp = Path(tmpdir)
        info = prepare(args, params, tmp)
        if not args.no_roofline:
            R[("bandwidth", "-")] = run_worker("bandwidth", "-", params["bandwidth"], args, tmp,
                                               info)
        for case in [c for c in ALL_CASES if c in args.cases]:
            p = dict(params[case])
            if case == "generation":
                p["prompt"] = torch.load(tmp / "inputs.pt", weights_only=False)["gen_prompt"]
            for impl in ("attnvar", "hf"):
                R[(case, impl)] = run_worker(case, impl, p, args, tmp, info)
        if not args.no_roofline:  # memory bandwidth on a shared VM moves minute to minute
            R[("bandwidth", "end")] = run_worker("bandwidth", "end", params["bandwidth"], args,
                                                 tmp, info)
            R[("bandwidth", "-")] = merge_bandwidth(R[("bandwidth", "-")],
                                                    R.pop(("bandwidth", "end")))
    elapsed = time.perf_counter() - t_all
    load_after = load_average()

    worker_threads = next((r["threads"] for r in R.values() if "threads" in r), threads)
    cmd = (f"PYTHONPATH={os.environ.get('PYTHONPATH', '')} python bench/harness.py "
           + " ".join(sys.argv[1:]))
    try:
        head = subprocess.run(["git", "-C", str(repo_root()), "log", "-1", "--format=%h %cI"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = "?"
    core_so = next(Path(attnvar._core.__file__).parent.glob("_core*.so"), None)
    built = (dt.datetime.fromtimestamp(core_so.stat().st_mtime).astimezone()
             .strftime("%Y-%m-%d %H:%M %Z") if core_so else "?")
    header = [
        f"# attnvar vs HF transformers — {'quick smoke run' if args.quick else 'full run'}",
        "",
        f"- date: {started:%Y-%m-%d %H:%M %Z}; harness wall time {elapsed / 60:.1f} min",
        f"- command: `{cmd.strip()}`",
        f"- machine: {cpu_model()}, {cpu_count()} CPUs visible, {mem_total_gb():.0f} GiB RAM",
        f"- load average (1/5/15 min) before: {load_before[0]:.2f} / {load_before[1]:.2f} / "
        f"{load_before[2]:.2f}; after: {load_after[0]:.2f} / {load_after[1]:.2f} / "
        f"{load_after[2]:.2f}"
        + ("  — **the machine was shared with other processes** (load above the "
           f"{args.threads} threads used), so figures are noisy"
           if max(load_before[0], load_after[0], load_after[1]) > args.threads * 0.75 + 0.25
           else ""),
        f"- threads: torch.get_num_threads() = {worker_threads['torch_num_threads']} in every "
        f"worker, interop {worker_threads['torch_interop_threads']}, OMP_NUM_THREADS="
        f"{worker_threads['OMP_NUM_THREADS']}, "
        f"MKL_NUM_THREADS={worker_threads['MKL_NUM_THREADS']}, OMP_WAIT_POLICY="
        f"{worker_threads.get('OMP_WAIT_POLICY') or '(unset: libgomp default, spins)'}, "
        f"GOMP_SPINCOUNT={worker_threads.get('GOMP_SPINCOUNT') or '(unset: the policy default)'}",
        f"- versions: attnvar {attnvar.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Python {sys.version.split()[0]}; repo HEAD {head}; "
        f"attnvar from {Path(attnvar._core.__file__).parent} (_core built {built})",
        f"- model: {info['model']}; HF loads the same GGUF through transformers "
        "(`gguf_file=`, cached as f32 safetensors), eager attention, DynamicCache",
        f"- parity: one parallel step (k = 4 isolated at position 128 after 128 tokens), HF "
        f"4-D mask {tuple(info['parity']['mask_shape'])}: max |logit diff| "
        f"{info['parity']['max_abs_logit_diff']:.1e}, max |attention diff| "
        f"{info['parity']['max_abs_attention_diff']:.1e} (tolerance 1e-3)",
        f"- inputs: seeded random ids for prefill/decode/parallel; generation prompt "
        f"\"{info['gen_prompt']}\" ({info['gen_prompt_tokens']} tokens); replay tree: "
        f"{info['replay_prompt_tokens']}-token prompt + sets of widths {info['replay_widths']}; "
        f"study: first {len(info['study_prompt_ids'])} prompts of the core suite",
    ]
    text, summary = build_report(args, params, info, R, header)
    raw = {f"{c}/{i}": v for (c, i), v in R.items()}
    for v in raw.values():  # trees are long; keep their sizes only
        mm = v.get("metrics", {})
        if "trees" in mm:
            mm["trees"] = {k: len(t) for k, t in mm["trees"].items()}
        if "tree" in mm:
            mm["tree"] = [len(s) for s in mm["tree"]]
    text += ("\n<details><summary>raw figures (JSON)</summary>\n\n```json\n"
             + json.dumps({"params": params, "info": info, "results": raw}, indent=1, default=str)
             + "\n```\n</details>\n")
    print(text)
    out = Path(args.out) if args.out else (
        repo_root() / "bench" / "results"
        / f"harness-{started:%Y%m%d-%H%M}{'-quick' if args.quick else ''}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(f"[harness] wrote {out} ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
