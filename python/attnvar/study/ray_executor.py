"""The Ray executor of a study (``Study.run(executor="ray")``, ``attnvar study --executor
ray``): the study's cells run on Ray actors, on a cluster or on a Ray instance of this
machine, and come back as finished run directories that this process (the driver) writes
into the results directory, atomically, under the same keys as a local study's.

Imported on first use only (``runner._ray_executor``): Ray is an optional dependency
(``pip install 'attnvar[ray]'``), and the local executor never loads it.

How it works (docs/ray.md has the user's side):

- **Workers** are actors of :class:`CellWorker`, ``workers`` of them, each holding
  ``threads`` CPUs (``num_cpus``), or one GPU (``num_gpus=1``) when the study's device
  is CUDA. Each loads the model once, from ``study.model_path`` (``None``: the bundled
  model), so the model must be readable at that path on every node: a shared file
  system, or the same file copied to the same place. The model is not shipped through
  the object store: a worker that loads it from its own disk costs no transfer per
  worker, and the SHA-256 every worker reports is checked against the driver's, so a
  node with another file at that path is refused instead of giving other cell keys.
- **Cells** go to the actors in groups of ``study.batch`` (as in a local study: a group's
  generations run together), one group per actor at a time, the next group to whichever
  actor is free. An actor runs its group into a scratch directory of its own node and
  returns every run directory it made as bytes (file names and contents); nothing is
  written to the results directory by any process but the driver, which holds the
  directory's lock throughout. A cell whose generation the driver already has (a study
  killed between a generation and its replays) travels to the actor with it, so it is
  not generated again.
- **Writing**: each returned run is built in a staging directory beside its final name
  and renamed into place (util.atomic), the generation before its replays, and never
  over a run that is already there; a kill leaves staging directories, which the next
  run removes. ``after_cells`` (the per-cell analysis) runs here, on each group as it is
  written.
- **Faults**: an actor whose process dies is restarted by Ray (up to
  :data:`ACTOR_RESTARTS` times, loading the model again); the group it held goes back to
  the queue and is taken by the next free actor. Nothing of that group was written, so
  nothing is partial or duplicated. A group that fails :data:`MAX_ATTEMPTS` times stops
  the study with the error. A killed driver leaves complete runs and staging directories;
  rerun, and the study goes on from what is complete.
- **The local instance** (no ``address``): started here with ``ray.init(address="local")``
  and stopped at the end. Its processes are recorded in ``<results>/.attnvar-ray.json``
  while it runs; Ray's own reaper stops most of them when the driver is killed, and the
  next study on that directory stops any that are left (matched by process id and start
  time, so a reused id is never hit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path

import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from ..util.atomic import new_staging_dir, publish_dir, write_atomic
from ..util.proc import stat_fields
from ..util.threads import limit_worker_threads, worker_threads
from .runner import _groups, _load, run_cells
from .store import RUNS, Cell, replay_key

# The local Ray instance's processes, while a study runs on it (see the module's doc).
STATE_FILE = ".attnvar-ray.json"
# How often Ray restarts a worker whose process died, and how often a group of cells is
# tried before the study stops with its error.
ACTOR_RESTARTS = 2
MAX_ATTEMPTS = 3
# Groups of cells an actor holds at once: the one it runs and the next.
IN_HAND = 2
# How often an actor that is being restarted is asked whether it is back.
PROBE_SECONDS = 0.25
# Scratch directories of workers, in the node's temporary directory; the name carries
# the worker's process id, so a new worker removes those of dead ones.
SCRATCH_PREFIX = "attnvar-ray-"

# Figures of the latest run_on_ray in this process, for bench/ray_study.py: seconds to
# connect and to have every worker ready, and one record per group of cells.
LAST_RUN: dict = {}

# A run directory as data: (relative path, file bytes or None for a directory), sorted.
Packed = list[tuple[str, "bytes | None"]]


def check_options(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads must be an integer ≥ 1, got {threads!r}")


# ---- run directories as bytes ----------------------------------------------------------------


def pack_run(path: Path) -> Packed:
    """Every file and directory under ``path``, relative to it."""
    out: Packed = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        out.append((rel, None) if p.is_dir() else (rel, p.read_bytes()))
    return out


def unpack_run(entries: Packed, target: Path) -> None:
    """Write ``entries`` under directory ``target`` (created), as they were."""
    target.mkdir(parents=True)
    for rel, data in entries:
        path = target / rel
        if data is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())


def publish_run(entries: Packed, target: Path) -> None:
    """Write a packed run to ``target`` atomically: built in a staging sibling (its name
    starts with ".", so nothing reads it as a run), then renamed into place."""
    staging = new_staging_dir(target)
    try:
        shutil.rmtree(staging)
        unpack_run(entries, staging)
        publish_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def cell_run_ids(cell: Cell, model_sha: str, replays) -> list[str]:
    """A cell's generation, then its replays: the order they are written in."""
    key = cell.key(model_sha)
    return [key, *(replay_key(key, e) for e in replays)]


# ---- the workers -----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_scratch(root: Path) -> None:
    """Scratch directories of workers on this node whose process is gone (killed)."""
    for d in root.glob(f"{SCRATCH_PREFIX}*"):
        try:
            pid = int(d.name[len(SCRATCH_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)


class CellWorker:
    """One Ray actor: loads the model once, then runs groups of cells into a scratch
    directory and returns their run directories as bytes (:func:`pack_run`)."""

    def __init__(self, model_path, device: str, threads: int,
                 weights: str = "quantized") -> None:
        self.error = None
        self.node = {"ip": ray.util.get_node_ip_address(),
                     "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
        root = Path(tempfile.gettempdir())
        _remove_dead_scratch(root)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-",
                                             dir=root))
        limit_worker_threads(threads)
        try:
            self.model = _load(model_path, device, weights)
            self.sha = self.model.identity["sha256"]
        except Exception as e:  # reported by ready(), in one line, by the driver
            self.error = f"{type(e).__name__}: {e}"
            self.sha = None

    def ready(self) -> dict:
        return {**self.node, "sha256": self.sha, "error": self.error}

    def run(self, study, cells: list[Cell], prompts: dict, given: dict[str, Packed]) -> dict:
        if self.error is not None:  # a restarted worker that could not load the model
            raise ValueError(f"the Ray worker on {self.node['ip']} could not load the model: "
                             f"{self.error}")
        started_at, t0 = time.time(), time.perf_counter()
        work = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            runs_dir = work / RUNS
            runs_dir.mkdir()
            for rid, entries in given.items():
                unpack_run(entries, runs_dir / rid)
            steps = run_cells(self.model, study, cells, prompts, runs_dir)
            t1 = time.perf_counter()
            runs = [(rid, pack_run(runs_dir / rid)) for cell in cells
                    for rid in cell_run_ids(cell, self.sha, study.replays)
                    if rid not in given and (runs_dir / rid / "run.json").exists()]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        t2 = time.perf_counter()
        return {"runs": runs, "steps": steps, "node": self.node, "seconds": t1 - t0,
                "pack_seconds": t2 - t1, "started_at": started_at, "finished_at": time.time(),
                "bytes": sum(len(d) for _, e in runs for _, d in e if d is not None)}

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


RemoteCellWorker = ray.remote(CellWorker)


# ---- the local Ray instance ------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """The running process's start time in clock ticks since boot (field 22 of
    /proc/PID/stat); None when it is gone or a zombie."""
    fields = stat_fields(pid)
    return None if fields is None or fields[0] in "ZX" else int(fields[19])


def _ray_descendants(pid: int) -> list[list[int]]:
    """[pid, start time] of every Ray process descended from ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        start = _start_time(p)
        if b"ray" in cmd and start is not None:
            out.append([p, start])
    return sorted(out)


def stop_orphans(results: Path) -> int:
    """Stop what is left of a local Ray instance that a killed study on ``results``
    started (recorded in :data:`STATE_FILE`); returns how many processes were stopped."""
    state = results / STATE_FILE
    if not state.exists():
        return 0
    try:
        processes = json.loads(state.read_text()).get("processes", [])
    except (OSError, ValueError):
        processes = []
    stopped = 0
    for pid, start in processes:
        if pid != os.getpid() and _start_time(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                stopped += 1
    if stopped:
        print(f"attnvar study: stopped {stopped} processes of the local Ray instance that a "
              "killed study left running", file=sys.stderr)
    state.unlink(missing_ok=True)
    return stopped


@contextlib.contextmanager
def ray_connection(address: str | None, results: Path, num_cpus: int) -> Iterator[None]:
    """Connected to Ray for the block: to the cluster at ``address``; to this process's
    connection if it already has one (left open); else to a local instance started here
    and stopped after (its processes recorded in ``results`` while it runs)."""
    if ray.is_initialized():
        yield
        return
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False)
    if address is not None:
        ray.init(address=address, **quiet)
        try:
            yield
        finally:
            ray.shutdown()
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a library does not phone home
    # Ray starts its workers at niceness 15; here they are the study's processes, which
    # the local executor runs at the user's niceness, and on a shared machine 15 would
    # give them whatever CPU is left.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             _system_config={"worker_niceness": 0}, **quiet)
    try:
        write_atomic(results / STATE_FILE, json.dumps(
            {"driver": os.getpid(), "processes": _ray_descendants(os.getpid())}))
        yield
    finally:
        ray.shutdown()
        (results / STATE_FILE).unlink(missing_ok=True)


# ---- the driver ------------------------------------------------------------------------------


def _actor_options(study, workers: int, threads: int | None, local: bool) -> dict:
    """Each actor's resources: a GPU for a CUDA study, else ``threads`` CPUs (default:
    this machine's threads shared by the workers on a local instance; the cluster's CPUs
    shared by the workers, at most one node's, on a cluster). Refused when the cluster
    cannot place ``workers`` such actors at once."""
    gpu = str(study.device).startswith("cuda")
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive", n.get("alive"))]
    cpus = [int(r.get("CPU", 0)) for r in nodes]
    if threads is None:
        if gpu:
            threads = 1
        elif local:
            threads = worker_threads(workers)
        else:
            threads = max(1, min(sum(cpus) // workers, max(cpus, default=1)))
    fits = sum(min(int(r.get("CPU", 0)) // threads,
                   int(r.get("GPU", 0)) if gpu else workers) for r in nodes)
    if fits < workers:
        need = f"{threads} CPU{'s' if threads > 1 else ''}" + (" and a GPU" if gpu else "")
        raise ValueError(f"the Ray cluster has room for {fits} workers of {need} each, not "
                         f"{workers} (CPUs per node: {cpus}); use fewer workers or threads")
    return {"num_cpus": threads, "num_gpus": 1 if gpu else 0, "threads": threads,
            "device": "cuda" if gpu else study.device}


def _node_label(node: dict) -> str:
    return f"{node['ip']}:{node['node_id'][:6]}"


def run_on_ray(study, todo: list[Cell], prompts: dict, results: Path, model_sha: str, bar,
               after_cells, workers: int = 1, address: str | None = None,
               threads: int | None = None) -> int:
    """Run the cells ``todo`` on ``workers`` Ray actors and write their runs into
    ``results``; returns the steps generated. Called by ``runner.run_study`` with the
    directory's lock held and the study's files written (see the module's doc)."""
    LAST_RUN.clear()
    stop_orphans(results)
    if not todo:
        return 0
    runs_dir = results / RUNS
    t0 = time.perf_counter()
    num_cpus = max(torch.get_num_threads(), workers * (threads or 1))
    with ray_connection(address, results, num_cpus):
        t_connect = time.perf_counter()
        opts = _actor_options(study, workers, threads, local=address is None)
        actors = [RemoteCellWorker.options(num_cpus=opts["num_cpus"], num_gpus=opts["num_gpus"],
                                           max_restarts=ACTOR_RESTARTS, max_task_retries=0)
                  .remote(study.model_path, opts["device"], opts["threads"], study.weights)
                  for _ in range(workers)]
        try:
            try:
                infos = ray.get([a.ready.remote() for a in actors])
            except RayActorError as e:  # the worker could not even be created
                last = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
                raise ValueError("a Ray worker could not start (is this attnvar installed "
                                 f"on every node?): {last}") from None
            for info in infos:
                where = f"the Ray worker on {info['ip']}"
                if info["error"]:
                    raise ValueError(f"{where} could not load the model: {info['error']}")
                if info["sha256"] != model_sha:
                    raise ValueError(f"{where} has another model file at {study.model_path!r} "
                                     f"(SHA-256 {info['sha256'][:12]}…, here "
                                     f"{model_sha[:12]}…): every node must read the same file")
            t_ready = time.perf_counter()
            LAST_RUN.update(connect_seconds=t_connect - t0, ready_seconds=t_ready - t_connect,
                            threads=opts["threads"], groups=[])
            steps = _drive(actors, study, todo, prompts, results, runs_dir, model_sha, bar,
                           after_cells)
            LAST_RUN["run_seconds"] = time.perf_counter() - t_ready
            with contextlib.suppress(RayActorError):
                ray.get([a.close.remote() for a in actors])
        finally:
            for a in actors:
                ray.kill(a)
    return steps


def _drive(actors, study, todo, prompts, results, runs_dir, model_sha, bar,
           after_cells) -> int:
    """Hand the groups of cells to actors with room until every group is written.

    An actor whose process died gets no work until it answers again: Ray restarts it
    (loading the model anew), and until then a call to it fails at once, which would
    spend the group's attempts; so it is probed (``ready``) every
    :data:`PROBE_SECONDS` instead, and given work again once the probe answers. One
    that Ray will not restart any more is dropped; without any, the study stops."""
    study_ref, prompts_ref = ray.put(study), ray.put(prompts)
    queue = deque((i, g) for i, g in enumerate(_groups(todo, study.batch)))
    attempts: Counter = Counter()
    live = list(actors)
    # Each actor holds up to IN_HAND groups (one running, the next waiting in its queue),
    # so it never waits for the driver to write the last one's runs or to analyse them.
    room = [a for _ in range(IN_HAND) for a in actors]
    recovering: dict = {}  # actor -> when to probe it next (None: a probe is out)
    in_flight: dict = {}  # object ref -> (actor, group index or None for a probe, ...)
    per_node: Counter = Counter()
    steps = 0
    while queue or any(entry[1] is not None for entry in in_flight.values()):
        now = time.perf_counter()
        for actor, when in list(recovering.items()):
            if when is not None and when <= now:
                in_flight[actor.ready.remote()] = (actor, None, None, now)
                recovering[actor] = None
        while room and queue:
            actor, (i, group) = room.pop(0), queue.popleft()
            given = {rid: pack_run(runs_dir / rid) for c in group
                     for rid in cell_run_ids(c, model_sha, study.replays)
                     if (runs_dir / rid / "run.json").exists()}
            ref = actor.run.remote(study_ref, group, prompts_ref, given)
            in_flight[ref] = (actor, i, group, time.perf_counter())
        waits = [w - now for w in recovering.values() if w is not None]
        timeout = max(0.0, min(waits)) if waits else None
        if not in_flight:
            time.sleep(timeout or PROBE_SECONDS)
            continue
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=timeout)
        if not ready:
            continue
        actor, i, group, sent = in_flight.pop(ready[0])
        if i is None:  # a probe of a recovering actor
            try:
                info = ray.get(ready[0])
            except ActorUnavailableError:  # still restarting
                recovering[actor] = time.perf_counter() + PROBE_SECONDS
                continue
            except RayActorError as e:  # dead for good
                del recovering[actor]
                live.remove(actor)
                if not live:
                    raise RuntimeError("attnvar study: every Ray worker died; last error: "
                                       f"{_first_line(e)}") from None
                continue
            if info["error"]:
                raise ValueError(f"the Ray worker on {info['ip']} could not load the model "
                                 f"after a restart: {info['error']}")
            del recovering[actor]
            room.extend([actor] * IN_HAND)
            continue
        try:
            out = ray.get(ready[0])
        except RayActorError as e:
            queue.appendleft((i, group))
            if actor in live and actor not in recovering:
                recovering[actor] = time.perf_counter()
                room = [a for a in room if a is not actor]
            # (No group is sent to an actor known to be restarting, so these cells were
            # in its hands when it died: an attempt, whichever error Ray reports.)
            attempts[i] += 1
            if attempts[i] >= MAX_ATTEMPTS:
                raise RuntimeError(f"attnvar study: a group of {len(group)} cells failed "
                                   f"{attempts[i]} times on Ray workers; last error: "
                                   f"{_first_line(e)}") from None
            print(f"attnvar study: a Ray worker died with {len(group)} cells in hand; they go "
                  f"back in the queue (attempt {attempts[i] + 1} of {MAX_ATTEMPTS})",
                  file=sys.stderr)
            continue
        except RayTaskError as e:
            # The cells' own error (a bad option, a model that refuses a prompt): as it
            # would be raised by a local study, without the remote traceback around it.
            if isinstance(e.cause, (ValueError, FileNotFoundError)):
                raise e.cause from None
            raise
        room.append(actor)
        received = time.perf_counter()
        for rid, entries in out["runs"]:
            if not (runs_dir / rid / "run.json").exists():
                publish_run(entries, runs_dir / rid)
        written = time.perf_counter()
        if after_cells is not None:
            after_cells(results, [c.key(model_sha) for c in group])
        steps += out["steps"]
        per_node[_node_label(out["node"])] += len(group)
        LAST_RUN["groups"].append({
            "node": _node_label(out["node"]), "cells": len(group), "steps": out["steps"],
            "seconds": out["seconds"], "pack_seconds": out["pack_seconds"],
            "bytes": out["bytes"], "round_trip_seconds": received - sent,
            "write_seconds": written - received, "pid": out["node"]["pid"],
            # wall clocks (time.time) of the actor's node and of this process
            "started_at": out["started_at"], "finished_at": out["finished_at"],
            "received_at": time.time() - (time.perf_counter() - received)})
        if bar is not None:
            bar.update(len(group))
            bar.set_postfix({"steps": steps, **dict(sorted(per_node.items()))})
    return steps


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), repr(e))


__all__ = ["ACTOR_RESTARTS", "LAST_RUN", "MAX_ATTEMPTS", "STATE_FILE", "CellWorker",
           "cell_run_ids", "pack_run", "publish_run", "ray_connection", "run_on_ray",
           "stop_orphans", "unpack_run"]
