"""Micro-benchmarks behind docs/benchmarks.md "Where the time goes": the model's linear
layers with M = 1, 2, 4, 8 rows (a parallel set of k members is M = k), in two
orientations, and one small GEMM under the OpenMP wait policy of the environment.

    OMP_WAIT_POLICY=PASSIVE python bench/microbench_linear.py [--threads 2]
    python bench/microbench_linear.py --threads 2        # libgomp's default (spinning)
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    g = torch.Generator().manual_seed(0)
    # SmolLM2-135M: per layer q, k, v, o, gate, up, down; then the tied lm_head.
    shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576),
              (576, 1536)]
    layers = [[torch.randn(o, i, generator=g) for o, i in shapes] for _ in range(30)]
    lm_head = torch.randn(49152, 576, generator=g)
    weights = [w for layer in layers for w in layer] + [lm_head]
    total = sum(w.numel() * 4 for w in weights)

    def stack(m: int, orientation: str) -> tuple[float, float]:
        xs = {i: torch.randn(m, i) for i in (576, 1536)}

        def once():
            for w in weights:
                x = xs[w.shape[1]]
                if orientation == "linear":
                    torch.nn.functional.linear(x, w)
                else:
                    torch.matmul(w, x.t()).t()

        once()
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            once()
            ts.append(time.perf_counter() - t0)
        ts.sort()
        return 1000 * ts[0], 1000 * ts[3]

    with torch.inference_mode():
        print(f"\n211 linears of the model's shapes ({total / 1e6:.0f} MB of f32 weights), "
              "min / median ms:")
        for m in (1, 2, 4, 8):
            a, b = stack(m, "linear"), stack(m, "w_xt")
            print(f"  M={m}: F.linear(X, W) {a[0]:6.1f} / {a[1]:6.1f}   (W @ X^T)^T {b[0]:6.1f} / "
                  f"{b[1]:6.1f}   ({total / a[0] / 1e6:.1f} GB/s with F.linear)")
        w = torch.randn(1536, 576, generator=g)
        print("\none linear, W 1536x576 (cache-resident), median of 40 calls:")
        for m in (1, 2, 4):
            x = torch.randn(m, 576)
            for _ in range(5):
                torch.nn.functional.linear(x, w)
            ts = []
            for _ in range(40):
                t0 = time.perf_counter()
                torch.nn.functional.linear(x, w)
                ts.append(time.perf_counter() - t0)
            ts.sort()
            print(f"  M={m}: {1000 * ts[20]:.3f} ms (min {1000 * ts[0]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
