"""GGUF weights kept quantized (load_model(weights="quantized"), the default) beside the
same file decoded to float32 at load, and llama.cpp on the same file when `llama_cpp` is
importable (llama-cpp-python; it builds from source, ~15 min on 2 cores: `pip install
llama-cpp-python`; never in CI). One fresh process per implementation and round, rounds
alternating, the same thread count everywhere (printed).

Per implementation: load time; resident memory after loading and after 20 decode steps;
decode steps/s at contexts 128 and 512; one parallel step of k = 1 and 4 members (attnvar);
a 30-step parallel generation with full capture (attnvar). With --random-1b, also a random
Llama-architecture GGUF of about 1B parameters in Q4_K (Q6_K for the output head and
ffn_down, as Q4_K_M files mix them), written here as random valid blocks, never
committed: its load RSS and decode steps/s.

    PYTHONPATH=build/dev/pkg python bench/quantized_weights.py --rounds 3 [--random-1b]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness_util import clock, median, pin_threads_env, pin_threads_torch

HERE = Path(__file__).resolve().parent
IMPLS = ("attnvar_quantized", "attnvar_float32", "llamacpp")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return -1.0


# ---- worker -------------------------------------------------------------------------------
def measure_decode(decode, spec: dict, out: dict) -> None:
    """Warm-up, the RSS after 20 steps, then decode steps/s per context (median of repeats);
    ``decode(ctx, steps)`` returns seconds per step."""
    decode(16, 4)
    decode(16, 20)
    out["rss_after_20_steps_MB"] = rss_mb()
    for ctx in spec["contexts"]:
        out[f"decode_{ctx}_steps_s"] = 1.0 / median([decode(ctx, spec["steps"])
                                                     for _ in range(spec["repeats"])])


def attnvar_worker(spec: dict) -> dict:
    import torch

    import attnvar
    from attnvar import _core

    t0 = clock()
    model = attnvar.load_model(spec["path"], weights=spec["impl"].split("_")[1])
    out = {"load_s": clock() - t0, "rss_after_load_MB": rss_mb(),
           "weight_MB": model.core.weight_bytes / 1e6}
    core = model.core
    vocab = core.vocab_size
    ids = torch.randint(3, vocab, (600,), generator=torch.Generator().manual_seed(0))

    def decode(ctx: int, steps: int) -> float:
        cache = core.new_cache(initial_capacity=ctx + steps + 1)
        core.forward(cache, ids[:ctx], torch.arange(float(ctx)), _core.causal_visibility(ctx, 0),
                     last_logits_only=True)
        t = clock()
        for s in range(steps):
            core.forward(cache, ids[ctx + s:ctx + s + 1], torch.tensor([float(ctx + s)]),
                         _core.causal_visibility(1, ctx + s), last_logits_only=True)
        return (clock() - t) / steps

    measure_decode(decode, spec, out)
    if spec.get("parallel", True):
        ctx = 128
        cache = core.new_cache(initial_capacity=ctx + 8)
        core.forward(cache, ids[:ctx], torch.arange(float(ctx)), _core.causal_visibility(ctx, 0),
                     last_logits_only=True)
        for k in (1, 4):
            vis = _core.set_visibility(k, ctx, "isolated")
            times = []
            for _ in range(5 * spec["repeats"]):
                t = clock()
                core.forward(cache, ids[ctx:ctx + k], torch.full((k,), float(ctx)), vis)
                times.append(clock() - t)
                cache.truncate(ctx)
            out[f"step_k{k}_ms"] = 1000 * median(times)
        prompt = "The capital of France is"
        model.generate(prompt, max_steps=5, threshold=0.1, capture=attnvar.Capture(scores=True))
        times = []
        for _ in range(spec["repeats"]):
            t = clock()
            model.generate(prompt, max_steps=30, threshold=0.1,
                           capture=attnvar.Capture(scores=True))
            times.append(clock() - t)
        out["generation_30_capture_s"] = median(times)
    return out


def llamacpp_worker(spec: dict) -> dict:
    import llama_cpp

    t0 = clock()
    llm = llama_cpp.Llama(model_path=spec["path"], n_ctx=1024, n_threads=spec["threads"],
                          n_threads_batch=spec["threads"], verbose=False, logits_all=False)
    out = {"load_s": clock() - t0, "rss_after_load_MB": rss_mb(),
           "version": llama_cpp.__version__}
    vocab = llm.n_vocab()
    import random

    rng = random.Random(0)
    ids = [rng.randrange(3, vocab) for _ in range(600)]

    def decode(ctx: int, steps: int) -> float:
        llm.reset()
        llm.eval(ids[:ctx])
        t = clock()
        for s in range(steps):
            llm.eval([ids[ctx + s]])
        return (clock() - t) / steps

    measure_decode(decode, spec, out)
    return out


def worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    pin_threads_env(spec["threads"])
    if spec["impl"].startswith("attnvar"):
        pin_threads_torch(spec["threads"])
        result = attnvar_worker(spec)
    else:
        result = llamacpp_worker(spec)
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


# ---- the random ~1B GGUF ------------------------------------------------------------------
def write_random_1b(path: Path) -> None:
    """A Llama-architecture GGUF of ~0.85B parameters: random Q4_K blocks (Q6_K for the
    output head and ffn_down) with finite f16 scales, f32 norms, a minimal tokenizer."""
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    hidden, layers, heads, kv, inter, vocab = 2048, 16, 32, 8, 5632, 32000
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_context_length(2048)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["t", "o", "to", *[f"tok{i}" for i in range(3, vocab)]])
    w.add_token_merges(["t o"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def blocks(rows: int, cols: int, qtype) -> np.ndarray:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
        offsets = (208,) if qtype == Q.Q6_K else (0, 2)
        for off in offsets:
            s = rng.uniform(-1e-3, 1e-3, size=(rows, cols // block)).astype(np.float16)
            raw[:, :, off:off + 2] = s.view(np.uint8).reshape(rows, cols // block, 2)
        return raw.reshape(rows, -1)

    def add(name: str, rows: int, cols: int, qtype=Q.Q4_K) -> None:
        w.add_tensor(name, blocks(rows, cols, qtype), raw_dtype=qtype)

    add("token_embd.weight", vocab, hidden)
    add("output.weight", vocab, hidden, Q.Q6_K)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    hd = hidden // heads
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(hidden, np.float32))
        add(p + "attn_q.weight", heads * hd, hidden)
        add(p + "attn_k.weight", kv * hd, hidden)
        add(p + "attn_v.weight", kv * hd, hidden, Q.Q6_K)
        add(p + "attn_output.weight", hidden, heads * hd)
        add(p + "ffn_gate.weight", inter, hidden)
        add(p + "ffn_up.weight", inter, hidden)
        add(p + "ffn_down.weight", hidden, inter, Q.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- driver -------------------------------------------------------------------------------
def run_round(impl: str, path: str, args, extra: dict, tmp: Path) -> dict | None:
    spec = {"impl": impl, "path": path, "threads": args.threads, "contexts": args.contexts,
            "steps": args.steps, "repeats": args.repeats, "out": str(tmp / "out.json"), **extra}
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ)  # the worker runs in bench/: PYTHONPATH made absolute
    env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve())
                                        for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)
    done = subprocess.run([sys.executable, __file__, "--worker", str(tmp / "spec.json")],
                          cwd=HERE, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"{impl}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads((tmp / "out.json").read_text())


def summarise(results: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for impl, rounds in results.items():
        if rounds:
            out[impl] = {k: median([r[k] for r in rounds]) for k in rounds[0]
                         if isinstance(rounds[0][k], (int, float))}
    return out


def report(title: str, summary: dict[str, dict]) -> None:
    keys = sorted({k for s in summary.values() for k in s})
    impls = list(summary)
    print(f"\n### {title}\n")
    print("| metric | " + " | ".join(impls) + " | quantized / float32 | quantized / llama.cpp |")
    print("|---|" + "---|" * (len(impls) + 2))
    for k in keys:
        vals = [summary[i].get(k) for i in impls]
        q, f, ll = (summary.get(i, {}).get(k) for i in IMPLS)
        cells = ["" if v is None else f"{v:.4g}" for v in vals]
        ratio_f = f"{q / f:.2f}" if q and f else ""
        ratio_l = f"{q / ll:.2f}" if q and ll else ""
        print(f"| {k} | " + " | ".join(cells) + f" | {ratio_f} | {ratio_l} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help="GGUF file (default: the bundled model)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--random-1b", action="store_true",
                    help="also the random ~1B-parameter Q4_K/Q6_K GGUF")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    import attnvar

    pin_threads_env(args.threads)
    settings = pin_threads_torch(args.threads)
    print(f"threads: {json.dumps(settings)}")
    path = args.model or str(attnvar.default_model_path())
    impls = [i for i in IMPLS if i != "llamacpp" or importlib.util.find_spec("llama_cpp")]
    if "llamacpp" not in impls:
        print("llama_cpp is not importable: the llama.cpp column is skipped "
              "(pip install llama-cpp-python; see the docstring)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results: dict[str, list[dict]] = {i: [] for i in impls}
        for r in range(args.rounds):
            for impl in (impls if r % 2 == 0 else impls[::-1]):
                got = run_round(impl, path, args, {}, tmp)
                if got:
                    results[impl].append(got)
        report(f"{Path(path).name}, {args.threads} threads, {args.rounds} rounds",
               summarise(results))
        if args.random_1b:
            big = tmp / "random-1b.gguf"
            t = clock()
            write_random_1b(big)
            print(f"\nwrote {big.stat().st_size / 1e6:.0f} MB random GGUF in {clock() - t:.0f} s")
            results = {i: [] for i in impls if i != "attnvar_float32"}
            for impl in results:
                got = run_round(impl, str(big), args, {"parallel": False}, tmp)
                if got:
                    results[impl].append(got)
            report(f"random ~0.85B Llama, Q4_K/Q6_K, {args.threads} threads, 1 round",
                   summarise(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
