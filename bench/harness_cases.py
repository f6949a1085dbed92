"""The benchmark cases, each run in a fresh worker process for one implementation
("attnvar" or "hf"), so peak resident memory is the case's own. A worker loads its model,
warms up, resets the peak-RSS counter, runs the case and returns a JSON-able dict.

Every case gives both implementations identical inputs (token ids prepared by the parent
with attnvar's tokenizer, saved in inputs.pt) at the same thread count.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from harness_util import PeakMemory, clock, dir_bytes, median, pin_threads_env, pin_threads_torch

CAPTURE_ALL = "alpha+scores"  # attnvar Capture(scores=True): probabilities and scores


# ---- models -----------------------------------------------------------------------------
def load_impl(impl: str, inputs: dict):
    if impl == "attnvar":
        import attnvar

        return attnvar.load_model(inputs["model_path"])
    import harness_hf

    return harness_hf.load_cached(inputs["hf_dir"])


# ---- prefill ----------------------------------------------------------------------------
def case_prefill(impl, model, inputs, p):
    import torch

    ids_all = inputs["random_ids"]
    res = {}
    if impl == "attnvar":
        from attnvar import _core

        core = model.core

        def once(T):
            ids = ids_all[:T]
            t0 = clock()
            core.forward(core.new_cache(initial_capacity=T), ids, torch.arange(float(T)),
                         _core.causal_visibility(T, 0), last_logits_only=True)
            return clock() - t0
    else:
        from transformers import DynamicCache

        def once(T):
            ids = ids_all[:T][None]
            with torch.inference_mode():
                t0 = clock()
                model(input_ids=ids, position_ids=torch.arange(T)[None],
                      past_key_values=DynamicCache(config=model.config), use_cache=True,
                      logits_to_keep=1)
                return clock() - t0

    once(32)  # warm-up
    with PeakMemory() as mem:
        for T in p["lengths"]:
            once(T)
            times = [once(T) for _ in range(p["repeats"])]
            res[f"prefill_{T}_s"] = median(times)
            res[f"prefill_{T}_tok_s"] = T / median(times)
    return res, mem.result


# ---- decode ------------------------------------------------------------------------------
def _attnvar_decode(model, ids_all, ctx, steps):
    import torch

    from attnvar import _core

    core = model.core
    cache = core.new_cache(initial_capacity=ctx + steps)
    core.forward(cache, ids_all[:ctx], torch.arange(float(ctx)), _core.causal_visibility(ctx, 0),
                 last_logits_only=True)
    t0 = clock()
    for t in range(ctx, ctx + steps):
        core.forward(cache, ids_all[t:t + 1], torch.tensor([float(t)]),
                     _core.causal_visibility(1, t))
    return clock() - t0


def _hf_decode(model, ids_all, ctx, steps):
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids_all[None, :ctx], position_ids=torch.arange(ctx)[None],
              past_key_values=cache, use_cache=True, logits_to_keep=1)
        t0 = clock()
        for t in range(ctx, ctx + steps):
            model(input_ids=ids_all[None, t:t + 1], position_ids=torch.tensor([[t]]),
                  past_key_values=cache, use_cache=True)
        return clock() - t0


def case_decode(impl, model, inputs, p):
    ids_all = inputs["random_ids"]
    fn = _attnvar_decode if impl == "attnvar" else _hf_decode
    fn(model, ids_all, 16, 4)  # warm-up
    res = {}
    with PeakMemory() as mem:
        for ctx in p["contexts"]:
            times = [fn(model, ids_all, ctx, p["steps"]) for _ in range(p["repeats"])]
            res[f"decode_{ctx}_steps_s"] = p["steps"] / median(times)
    if impl == "hf" and p.get("hf_sdpa", True):
        # For reference only: HF's fused attention (no capture possible with it).
        model.set_attn_implementation("sdpa")
        fn(model, ids_all, 16, 4)
        for ctx in p["contexts"]:
            times = [fn(model, ids_all, ctx, p["steps"]) for _ in range(p["repeats"])]
            res[f"decode_{ctx}_steps_s_sdpa"] = p["steps"] / median(times)
        model.set_attn_implementation("eager")
    return res, mem.result


# ---- one parallel step with k members -------------------------------------------------
def case_parallel(impl, model, inputs, p):
    import torch

    ids_all, ctx, ks = inputs["random_ids"], p["context"], p["ks"]
    member_ids = ids_all[ctx:ctx + max(ks)]
    if impl == "attnvar":
        from attnvar import _core

        core = model.core
        cache = core.new_cache(initial_capacity=ctx + max(ks) + 1)
        core.forward(cache, ids_all[:ctx], torch.arange(float(ctx)),
                     _core.causal_visibility(ctx, 0), last_logits_only=True)
        vis = {k: _core.set_visibility(k, ctx, "isolated") for k in ks}

        def once(k, capture):
            t0 = clock()
            core.forward(cache, member_ids[:k], torch.full((k,), float(ctx)), vis[k],
                         capture=capture, scores=capture)
            dt = clock() - t0
            cache.truncate(ctx)
            return dt
    else:
        import harness_hf
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=ids_all[None, :ctx], position_ids=torch.arange(ctx)[None],
                  past_key_values=cache, use_cache=True, logits_to_keep=1)
        saved = [(layer.keys, layer.values) for layer in cache.layers]
        masks = {k: harness_hf.set_mask(k, ctx, "isolated") for k in ks}
        assert all(masks[k].shape == (1, 1, k, ctx + k) for k in ks)

        def once(k, capture):
            with torch.inference_mode():
                t0 = clock()
                model(input_ids=member_ids[None, :k], position_ids=torch.full((1, k), ctx),
                      attention_mask=masks[k], past_key_values=cache, use_cache=True,
                      output_attentions=capture)
                dt = clock() - t0
            for layer, (kk, vv) in zip(cache.layers, saved, strict=True):
                layer.keys, layer.values = kk, vv
            return dt

    for k in ks:  # warm-up
        once(k, False), once(k, True)
    samples = {(k, c): [] for k in ks for c in (False, True)}
    with PeakMemory() as mem:
        for _ in range(p["repeats"]):  # interleaved, so load drifts hit every k alike
            for k in ks:
                for c in (False, True):
                    samples[(k, c)].append(once(k, c))
    res = {}
    for (k, c), xs in samples.items():
        res[f"step_k{k}{'_capture' if c else ''}_ms"] = 1000 * median(xs)
    return res, mem.result


# ---- 30-step parallel generation --------------------------------------------------------
def case_generation(impl, model, inputs, p):
    prompt, theta, steps, eos = p["prompt"], p["threshold"], p["steps"], inputs["eos_ids"]
    res = {}
    tmp = Path(tempfile.mkdtemp(prefix="avbench-gen-"))
    try:
        if impl == "attnvar":
            import attnvar

            variants = {"capture": attnvar.Capture(scores=True), "alpha": attnvar.Capture(),
                        "nocapture": None}

            def once(name):
                t0 = clock()
                run = model.generate(prompt, threshold=theta, max_steps=steps,
                                     capture=variants[name])
                return clock() - t0, run

            def tree_of(run):
                return [[m.token_id for m in s.members] for s in run.tree.steps]
        else:
            import harness_hf

            variants = {"capture": True, "nocapture": False}

            def once(name):
                t0 = clock()
                run = harness_hf.generate(model, prompt, theta, steps, eos, variants[name])
                return clock() - t0, run

            def tree_of(run):
                return run["tree"]

        once("nocapture")  # warm-up
        samples = {name: [] for name in variants}
        with PeakMemory() as mem:
            for _ in range(p["repeats"]):
                for name in variants:
                    dt, run = once(name)
                    samples[name].append(dt)
                    if name == "capture":
                        res["tree"] = tree_of(run)
                    del run
        for name, xs in samples.items():
            res[f"gen_{name}_s"] = median(xs)
        # bytes of capture written by one run (saved once, outside the timing)
        _, run = once("capture")
        if impl == "attnvar":
            run.save(tmp / "capture")
            res["slots"] = run.num_slots
            res["passes"] = len(run.passes)
            _, run_a = once("alpha")
            run_a.save(tmp / "alpha")
            res["bytes_alpha"] = dir_bytes(tmp / "alpha")
        else:
            harness_hf.save_generation(run, tmp / "capture", prompt)
            res["slots"] = run["slots"]
            res["passes"] = len(run["passes"])
        res["bytes_capture"] = dir_bytes(tmp / "capture")
        res["steps_done"] = len(res["tree"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res, mem.result


# ---- replay of a 60-slot tree under 5 encodings ------------------------------------------
def case_replay(impl, model, inputs, p):
    r_in = inputs["replay"]
    encodings = p["encodings"]
    res = {}
    tmp = Path(tempfile.mkdtemp(prefix="avbench-replay-"))
    try:
        if impl == "attnvar":
            import attnvar

            tree = model.tree(r_in["prompt"], r_in["steps"])
            cap = attnvar.Capture(scores=True)

            def once(save=False):
                t0 = clock()
                runs = [model.replay(tree, enc, capture=cap) for enc in encodings]
                dt = clock() - t0
                if save:
                    for enc, run in zip(encodings, runs, strict=True):
                        run.save(tmp / enc)
                    res["slots"] = [run.num_slots for run in runs]
                return dt
        else:
            import harness_hf

            lay = r_in["layouts"]
            P = len(r_in["prompt"])

            def once(save=False):
                t0 = clock()
                runs = [harness_hf.replay(model, lay[enc]["token_ids"], lay[enc]["positions"],
                                          lay[enc]["visibility"], lay[enc]["step_begin"], P)
                        for enc in encodings]
                dt = clock() - t0
                if save:
                    from safetensors.torch import save_file

                    for enc, run in zip(encodings, runs, strict=True):
                        (tmp / enc).mkdir()
                        save_file({f"pass00000.layer{i:03d}.attention": a[0].contiguous()
                                   for i, a in enumerate(run["attentions"])},
                                  str(tmp / enc / "capture.safetensors"))
                    res["slots"] = [int(lay[enc]["token_ids"].numel()) for enc in encodings]
                return dt

        once()  # warm-up
        with PeakMemory() as mem:
            times = [once() for _ in range(p["repeats"])]
        res["replay_s"] = median(times)
        once(save=True)
        res["bytes_capture"] = dir_bytes(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res, mem.result


# ---- a 20-prompt study --------------------------------------------------------------------
def case_study(impl, model, inputs, p):
    prompts = inputs["study_prompts"][: p["prompts"]]
    res = {}
    tmp = Path(tempfile.mkdtemp(prefix="avbench-study-"))
    try:
        if impl == "attnvar":
            from attnvar.prompts import Prompt
            from attnvar.study import Study

            records = [Prompt(id=q["id"], text=q["text"], category=q["category"],
                              structure=q["structure"], pair=q["pair"]) for q in prompts]
            study = Study(prompts=records, thresholds=(p["threshold"],), max_steps=p["steps"])
            with PeakMemory() as mem:
                t0 = clock()
                study.run(tmp / "study", progress=False)
                res["study_s"] = clock() - t0
            trees = {}
            for run_json in (tmp / "study" / "runs").glob("*/run.json"):
                meta = json.loads(run_json.read_text())
                trees[meta["options"]["prompt_id"]] = [
                    [m["token_id"] for m in s["members"]] for s in meta["tree"]["steps"]]
            res["trees"] = trees
            res["bytes_written"] = dir_bytes(tmp / "study")
            res["bytes_capture"] = dir_bytes(tmp / "study" / "runs")  # every run directory
        else:
            import harness_hf

            trees = {}
            with PeakMemory() as mem:
                t0 = clock()
                for q in prompts:
                    run = harness_hf.generate(model, q["ids"], p["threshold"], p["steps"],
                                              inputs["eos_ids"], True)
                    harness_hf.save_generation(run, tmp / "study" / q["id"], q["ids"])
                    trees[q["id"]] = run["tree"]
                    del run
                res["study_s"] = clock() - t0
            res["trees"] = trees
            res["bytes_written"] = dir_bytes(tmp / "study")
            res["bytes_capture"] = res["bytes_written"]
        res["total_steps"] = sum(len(t) for t in res["trees"].values())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res, mem.result


# ---- streaming read bandwidth -------------------------------------------------------------
def case_bandwidth(impl, model, inputs, p):
    """Streaming read bandwidth over a >= 1 GiB f32 array, several read kernels (torch sum,
    matrix-vector products in both orientations, as decode's weight reads are; amax; numpy
    sum on one thread; attnvar's own one-row projection, which streams eight weight rows at
    once and outran every torch kernel here), best of `repeats` each. The roofline uses the
    highest, so a kernel added here can only make it stricter."""
    import torch

    from attnvar import _core

    n = int(p["bytes"]) // 4
    cols = 1024
    kernels = {}
    with PeakMemory() as mem:
        x = torch.empty(n, dtype=torch.float32)
        x.fill_(1.0)
        A = x.view(n // cols, cols)
        v, u = torch.ones(cols), torch.ones(n // cols)
        a = x.numpy()
        v_row = v.view(1, cols)
        for name, fn in (("torch.sum", lambda: x.sum()),
                         ("torch.mv (A @ v)", lambda: torch.mv(A, v)),
                         ("u @ A", lambda: torch.matmul(u, A)), ("torch.amax", lambda: x.amax()),
                         ("numpy sum (1 thread)", lambda: a.sum()),
                         ("attnvar project (1 row)", lambda: _core.project(v_row, A))):
            fn()
            ts = []
            for _ in range(p["repeats"]):
                t0 = clock()
                fn()
                ts.append(clock() - t0)
            kernels[name] = {"best_GBs": n * 4 / min(ts) / 1e9,
                             "median_GBs": n * 4 / median(ts) / 1e9}
    best = max(kernels, key=lambda k: kernels[k]["best_GBs"])
    return {
        "array_bytes": n * 4, "kernels": kernels, "best_kernel": best,
        "bandwidth_GBs": kernels[best]["best_GBs"], "torch_threads": torch.get_num_threads(),
    }, mem.result


CASES = {
    "prefill": case_prefill, "decode": case_decode, "parallel": case_parallel,
    "generation": case_generation, "replay": case_replay, "study": case_study,
    "bandwidth": case_bandwidth,
}


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    pin_threads_env(spec["threads"])
    import torch

    threads = pin_threads_torch(spec["threads"])
    inputs = torch.load(spec["inputs"], weights_only=False)
    case, impl = spec["case"], spec["impl"]
    t0 = clock()
    model = None
    if case not in ("bandwidth",) and not (case == "study" and impl == "attnvar"):
        model = load_impl(impl, inputs)  # a Study loads its own model, inside its run
    load_s = clock() - t0
    metrics, memory = CASES[case](impl, model, inputs, spec["params"])
    out = {"case": case, "impl": impl, "metrics": metrics, "memory": memory,
           "threads": threads, "load_s": load_s}
    Path(spec["out"]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
