"""Small helpers shared by the benchmark harness and its worker processes: thread pinning,
timing, peak resident memory, directory sizes, machine description."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


WAIT_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# libgomp spin before sleeping, ~10 µs: on 2 vCPUs it made the projections 1.35x faster
# than passive's 0 when the machine was quiet and was no slower with both cores busy
# (docs/benchmarks.md, "Threads and the OpenMP wait policy").
DEFAULT_SPINCOUNT = 1000


def env_spincount() -> int | None:
    """DEFAULT_SPINCOUNT unless the environment sets GOMP_SPINCOUNT (then None: keep it)."""
    return None if "GOMP_SPINCOUNT" in os.environ else DEFAULT_SPINCOUNT


def pin_threads_env(threads: int, wait_policy: str | None = None,
                    spincount: int | None = None) -> None:
    """Before torch is imported: every BLAS/OpenMP pool gets `threads`; `wait_policy`
    ("passive"/"active") sets OMP_WAIT_POLICY and `spincount` GOMP_SPINCOUNT (how long an
    idle libgomp worker spins before it sleeps; it overrides the policy's spin count); None
    leaves the environment's value."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    if wait_policy:
        os.environ["OMP_WAIT_POLICY"] = wait_policy.upper()
    if spincount is not None:
        os.environ["GOMP_SPINCOUNT"] = str(spincount)


def pin_threads_torch(threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    return thread_settings()


def thread_settings() -> dict:
    import torch

    try:  # the engine's own loops (projections), not only torch's
        from attnvar import _core

        engine = {f"attnvar_{k}": v for k, v in _core.kernel_info().items()}
    except (ImportError, AttributeError):
        engine = {}
    return {
        **engine,
        "torch_num_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        **{name: os.environ.get(name) for name in (*THREAD_ENV, *WAIT_ENV)},
    }


# ---- memory ---------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to /proc/self/clear_refs), so
    the next reading is the peak of what follows, not of model loading. False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_now() -> dict:
    """Current and peak resident set (MB), and ru_maxrss (whole process life, MB)."""
    return {
        "rss_mb": _status_kb("VmRSS") / 1024,
        "peak_mb": _status_kb("VmHWM") / 1024,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


class PeakMemory:
    """with PeakMemory() as m: ...; m.result -> {'before_mb', 'peak_mb', 'ru_maxrss_mb', 'reset'}"""

    def __enter__(self):
        import gc

        gc.collect()
        self.reset = reset_peak_rss()
        self.before = memory_now()
        return self

    def __exit__(self, *exc):
        after = memory_now()
        self.result = {
            "before_mb": self.before["rss_mb"],
            "peak_mb": after["peak_mb"] if self.reset else after["ru_maxrss_mb"],
            "ru_maxrss_mb": after["ru_maxrss_mb"],
            "peak_reset": self.reset,
        }
        return False


# ---- timing ---------------------------------------------------------------------------
def median(xs) -> float:
    return statistics.median(list(xs))


def clock() -> float:
    return time.perf_counter()


def median_seconds(fn, repeats: int, sync=None) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call; ``sync``
    (e.g. torch.cuda.synchronize) drains a device before and after each timed call."""
    fn()
    samples = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


# ---- models ---------------------------------------------------------------------------
def smollm2_shape_model(layers: int = 30):
    """An HF Llama of SmolLM2-135M's shape (optionally fewer layers), random weights
    (seed 0), eager attention: speed does not depend on the weights' values."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.config._attn_implementation = "eager"
    return model


def attnvar_from_hf(hf, device: str = "cpu"):
    """attnvar's decoder over the same weights as an HF model (copied to the host first)."""
    import json

    from attnvar import _core

    tensors = {k: v.detach().cpu().clone() for k, v in hf.state_dict().items()}
    return _core.Model.from_tensors(json.dumps(hf.config.to_dict()), tensors,
                                    origin="smollm2-shape-random", device=device)


def dir_bytes(path: str | os.PathLike) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


# ---- machine --------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        la = load_average()
        return f"load average: {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def mem_total_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# ---- A/B of two builds ------------------------------------------------------------------
def ab_rounds(script: str, builds: list[str], rounds: int, reps: int, threads: int,
              fmt: str = ".1f") -> dict[str, list[dict]]:
    """Run ``script --worker`` once per build and round, each in a fresh process with that
    build on PYTHONPATH; the order of the builds flips every round so both see the same
    machine load. Each worker prints one JSON object last; returns them per build."""
    import json
    import sys

    print(f"threads {threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}; load before {load_average()}")
    results: dict[str, list[dict]] = {b: [] for b in builds}
    for r in range(rounds):
        for b in builds if r % 2 == 0 else builds[::-1]:
            p = subprocess.run([sys.executable, script, "--worker", "--reps", str(reps),
                                "--threads", str(threads)], env=dict(os.environ, PYTHONPATH=b),
                               capture_output=True, text=True, check=True)
            res = json.loads(p.stdout.strip().splitlines()[-1])
            results[b].append(res)
            print(f"round {r} {b}: " + ", ".join(
                f"{k} {v:{fmt}}" for k, v in res.items() if isinstance(v, (int, float))),
                flush=True)
    print(f"load after {load_average()}")
    return results


def ab_main(description: str, script: str, worker, rounds: int, reps: int,
            min_builds: int = 1, fmt: str = ".1f"):
    """The command line of an A/B script: ``BUILD... [--rounds] [--reps] [--threads]``.
    In a worker process (``--worker``) prints ``worker(reps, threads)`` as JSON and returns
    None; otherwise runs :func:`ab_rounds` and returns ``(builds, results)``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("builds", nargs="*", help="PYTHONPATH of each build (a dev pkg dir)")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    pin_threads_env(args.threads, "passive", env_spincount())
    if args.worker:
        print(json.dumps(worker(args.reps, args.threads)))
        return None
    if len(args.builds) < min_builds:
        ap.error(f"give at least {min_builds} build(s)")
    return args.builds, ab_rounds(script, args.builds, args.rounds, args.reps, args.threads,
                                  fmt)


def print_round_ratios(builds: list[str], results: dict[str, list[dict]], keys) -> None:
    """With two builds: each key's per-round ratio first ÷ second (the second's speed-up)."""
    if len(builds) != 2:
        return
    a, b = builds
    print(f"\nper-round ratio {a} ÷ {b} (speed-up of the second):")
    for k in keys:
        rs = [x[k] / y[k] for x, y in zip(results[a], results[b], strict=True)]
        print(f"  {k}: " + " ".join(f"{r:.2f}" for r in rs))
