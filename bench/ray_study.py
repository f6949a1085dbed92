"""A study on the Ray executor beside the local executor, on this machine (docs/ray.md).

Starts a local Ray cluster of two one-CPU nodes the way a user would (``ray start --head``,
then ``ray start --address`` for the second node), and runs the same study three times
into fresh directories: the local executor with 2 worker processes, the Ray executor with
2 actors and with 1 actor (one thread each). The study is the command line's default grid
over the first N prompts of the core suite (θ 0.1 / 0.2, isolated and visible, mixture,
replays serial and top_only, 20 steps, captures kept, no analysis: the part the executor
changes), on the bundled model. Prints wall time and cells per second of each, Ray's
overhead against the local executor, where Ray's time goes (connect, workers ready, per
cell: compute on the actor, packing, scheduling and transfer, writing on the driver), what
shipping the model through the object store would cost, the tables compared, and a
scale-out projection from those figures. Threads pinned and printed.

    PYTHONPATH=build/dev/pkg python bench/ray_study.py [--prompts 64] [--configs local2,ray2,ray1]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnvar.util.proc import session_of  # run with PYTHONPATH=build/dev/pkg


class Cluster:
    """Two one-CPU Ray nodes on this machine, each `ray start` in a session of its own,
    stopped by killing those sessions (never `ray stop`, which stops every Ray here)."""

    def __init__(self, env: dict) -> None:
        self.temp = tempfile.mkdtemp(prefix="avbench", dir="/tmp")
        self.sessions: set[int] = set()
        common = ["--num-cpus=1", "--object-store-memory=500000000", "--disable-usage-stats"]
        out = self._start(["--head", "--port=0", "--include-dashboard=false",
                           f"--temp-dir={self.temp}", *common], env)
        self.address = re.search(r"ray start --address='([^']+)'", out).group(1)
        self._start([f"--address={self.address}", *common], env)

    def _start(self, args: list[str], env: dict) -> str:
        proc = subprocess.Popen(["ray", "start", *args], env=env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.sessions.add(proc.pid)
        out = proc.communicate(timeout=180)[0]
        if proc.returncode != 0:
            raise RuntimeError(out)
        return out

    def stop(self) -> None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and session_of(int(entry.name)) in self.sessions:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.temp, ignore_errors=True)


def model_through_object_store(path: Path, address: str) -> tuple[int, float, float]:
    """(bytes, seconds to put the model file in the object store, seconds for a task on
    the other node to get it): what shipping the model instead of a path would cost."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as OnNode

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        head = ray.get_runtime_context().get_node_id()
        other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)

        @ray.remote(num_cpus=1)
        def size(blob) -> int:
            return len(blob)

        there = size.options(scheduling_strategy=OnNode(other, soft=False))
        ray.get(there.remote(b"x"))  # a worker started there first
        data = path.read_bytes()
        t0 = time.perf_counter()
        ref = ray.put(data)
        t1 = time.perf_counter()
        n = ray.get(there.remote(ref))
        t2 = time.perf_counter()
        ray.get(there.remote(b"x"))  # the task's own cost, taken off the transfer
        t3 = time.perf_counter()
    finally:
        ray.shutdown()
    assert n == len(data)
    return len(data), t1 - t0, max(0.0, (t2 - t1) - (t3 - t2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64,
                    help="the first N prompts of the core suite (default 64; 0: all)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="this machine's threads (default 2)")
    ap.add_argument("--configs", default="local2,ray2,ray1")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Token authentication is not what is measured, and a node joining with `ray start`
    # does not send the token Ray 2.60 asks for once ~/.ray/auth_token exists (docs/ray.md).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import torch

    import attnvar
    from attnvar.study import Study, prompts, ray_executor
    from attnvar.study.runner import GENERATION_BATCH

    torch.set_num_threads(a.threads)
    pkg = Path(os.path.abspath(attnvar.__file__)).parent.parent
    # Workers at the niceness of the local executor's processes (Ray's default is 15:
    # on a shared machine they would get only the CPU others leave).
    env = dict(os.environ, RAY_worker_niceness="0", PYTHONPATH=os.pathsep.join(
        [str(pkg)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    items = prompts.suite("core")
    items = items[: a.prompts] if a.prompts else items
    # A fixed batch, so that both executors form the same groups whatever their threads.
    study = Study(prompts=items, thresholds=[0.1, 0.2], modes=["isolated", "visible"],
                  replays=["serial", "top_only"], max_steps=a.steps, batch=GENERATION_BATCH)
    cells = len(study.cells())
    model_path = Path(attnvar.load_model().identity.get("path") or "")
    print(f"# Ray executor vs local — {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()} "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), ray "
          f"{ray_executor.ray.__version__} (workers at niceness 0), attnvar _core "
          "parallel_for threads "
          f"{attnvar._core.kernel_info().get('parallel_for_threads')}")
    print(f"study: {len(items)} core prompts × θ 0.1/0.2 × isolated/visible, {a.steps} steps, "
          f"replays serial + top_only = {cells} cells ({3 * cells} runs), batch "
          f"{study.batch}, bundled model; load average before "
          f"{os.getloadavg()[0]:.2f}")
    cluster = Cluster(env) if any(c.startswith("ray") for c in a.configs.split(",")) else None
    rows, tables, stats = [], {}, {}
    try:
        for config in a.configs.split(","):
            workers = int(config[-1])
            out = Path(tempfile.mkdtemp(prefix=f"avbench-{config}-"))
            t0 = time.perf_counter()
            if config.startswith("local"):
                table = study.run(out, workers=workers, progress=False)
            else:
                table = study.run(out, workers=workers, progress=False, executor="ray",
                                  address=cluster.address, threads=1)
                stats[config] = dict(ray_executor.LAST_RUN)
            wall = time.perf_counter() - t0
            tables[config] = table.drop(columns=["seconds"]).reset_index(drop=True)
            size = sum(p.stat().st_size for p in (out / "runs").rglob("*") if p.is_file())
            rows.append((config, workers, wall, cells / wall, size))
            shutil.rmtree(out, ignore_errors=True)
            print(f"  {config}: {wall:.1f} s (load average {os.getloadavg()[0]:.2f})",
                  flush=True)
        shipped = (model_through_object_store(model_path, cluster.address)
                   if cluster is not None and model_path.is_file() else None)
    finally:
        if cluster is not None:
            cluster.stop()

    print("\n| executor | workers | wall s | cells/s | runs on disk |")
    print("|---|---|---|---|---|")
    for config, workers, wall, rate, size in rows:
        print(f"| {config[:-1]} | {workers} | {wall:.1f} | {rate:.3f} | {size / 1e6:.0f} MB |")
    walls = {r[0]: r[2] for r in rows}
    if "local2" in walls and "ray2" in walls:
        print(f"\nRay overhead, 2 workers: {100 * (walls['ray2'] / walls['local2'] - 1):+.1f} % "
              f"of the local executor's wall time")
    if "ray1" in walls and "ray2" in walls:
        print(f"2 actors ÷ 1 actor: {walls['ray1'] / walls['ray2']:.2f}× the cells per second")
    first = next(iter(tables.values()))
    same = all(_close(t, first) for t in tables.values())
    print(f"tables equal across executors: {same}")

    for config, st in stats.items():
        groups = st["groups"]
        n = sum(g["cells"] for g in groups)
        compute = sum(g["seconds"] for g in groups)
        pack = sum(g["pack_seconds"] for g in groups)
        # Transfer: from the actor's return to the driver holding the result (the
        # object's transfer and deserialisation, the driver's reaction); one machine, one
        # clock. Idle: an actor's gap between finishing a group and starting its next
        # (the scheduling cost it sees; IN_HAND = 2 keeps the next group queued there).
        transfer = [g["received_at"] - g["finished_at"] for g in groups]
        idle = []
        for pid in {g["pid"] for g in groups}:
            mine = sorted((g for g in groups if g["pid"] == pid), key=lambda g: g["started_at"])
            idle += [b["started_at"] - a["finished_at"]
                     for a, b in zip(mine, mine[1:], strict=False)]
        write = sum(g["write_seconds"] for g in groups)
        mb = sum(g["bytes"] for g in groups) / 1e6
        print(f"\n{config}: connect {st['connect_seconds']:.2f} s, workers ready "
              f"{st['ready_seconds']:.2f} s, cells {st['run_seconds']:.1f} s; per cell: compute "
              f"{compute / n:.3f} s, packing {pack / n * 1e3:.1f} ms, writing on the driver "
              f"{write / n * 1e3:.1f} ms, {mb / n:.2f} MB; per group of {study.batch}: "
              f"transfer to the driver median {statistics.median(transfer) * 1e3:.0f} ms (max "
              f"{max(transfer) * 1e3:.0f}), actor idle between groups median "
              f"{statistics.median(idle) * 1e3 if idle else 0:.1f} ms")
    if shipped:
        nbytes, put, get = shipped
        print(f"\nmodel through the object store instead of a path: {nbytes / 1e6:.0f} MB, put "
              f"{put:.2f} s, fetched by an actor on the other node in {get:.2f} s "
              f"({nbytes / 1e6 / max(get, 1e-9):.0f} MB/s)")
    if "ray2" in stats:
        _projection(stats["ray2"], study.batch)
    return 0 if same else 1


def _close(x, y) -> bool:
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(x, y)
        return True
    except AssertionError:
        return False


def _projection(st: dict, batch: int) -> None:
    """Throughput with N actors from the per-cell figures measured here (a projection)."""
    groups = st["groups"]
    n = sum(g["cells"] for g in groups)
    actor_per_cell = sum(g["seconds"] + g["pack_seconds"] for g in groups) / n
    driver_per_cell = sum(g["write_seconds"] for g in groups) / n
    fixed = st["connect_seconds"] + st["ready_seconds"]
    print("\nProjection (not measured): N actors of one thread each on nodes like this one's "
          "cores, actor time per cell "
          f"{actor_per_cell:.3f} s (compute + packing), driver time per cell "
          f"{driver_per_cell * 1e3:.1f} ms (writing; + ~0.75 s per cell if the per-cell analysis "
          f"runs on the driver), start-up {fixed:.1f} s:")
    print("\n| actors | cells/s (runs only) | cells/s with analysis on the driver | "
          "528-cell core study (runs only) |")
    print("|---|---|---|---|")
    for k in (1, 2, 4, 8, 16, 32, 64):
        rate = min(k / actor_per_cell, 1 / max(driver_per_cell, 1e-9))
        with_analysis = min(k / actor_per_cell, 1 / (driver_per_cell + 0.75))
        print(f"| {k} | {rate:.2f} | {with_analysis:.2f} | {fixed + 528 / rate:.0f} s |")


if __name__ == "__main__":
    sys.exit(main())
