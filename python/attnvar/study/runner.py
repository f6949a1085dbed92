"""Executing a Study: cells in order (or in worker processes, or on a Ray cluster: see
:mod:`.ray_executor`), each run written atomically under a content-addressed id, then
tidy tables built from what is on disk."""

from __future__ import annotations

import copy
import functools
import importlib
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from ..engine import KeyBias, MaskLeak, load_model, load_run
from ..engine.capture import DEFAULT_MEMORY_BUDGET
from ..engine.interventions import from_spec
from ..engine.model import max_set_width
from ..util.atomic import remove_stale, write_atomic
from ..util.lock import directory_lock
from ..util.markdown import markdown_table
from ..util.progress import progress_bar
from ..util.threads import (
    check_not_bootstrapping,
    limit_worker_threads,
    start_context,
    worker_threads,
)
from . import preregistration
from .store import (
    GENERATED_KINDS,
    RUNS,
    STUDY_FILE,
    SUMMARY_FILE,
    TABLES,
    Cell,
    iter_completed,
    replay_key,
)

if TYPE_CHECKING:
    from .grid import Study

_worker_model = None


def _load(model_path, device: str = "cpu", weights: str = "quantized"):
    return load_model(model_path, device=device, weights=weights)


def _init_worker(model_path, device: str, threads: int, weights: str = "quantized") -> None:
    global _worker_model
    limit_worker_threads(threads)
    _worker_model = _load(model_path, device, weights)


def _cell_options(cell: Cell, prompt) -> dict:
    return {
        "prompt_id": cell.prompt_id, "category": prompt.category, "structure": prompt.structure,
        "pair": prompt.pair,
        **({"intervention_condition": cell.intervention_label}
           if cell.interventions is not None else {}),
    }


# Generations run this many at a time per thread of a worker (Model.generate_many, and
# Model.tempo2025_many for a compat study without the mask leak) unless Study.batch says
# otherwise: each step reads the weights once for all of them, and every run is bit for bit
# its solo run, so the batch changes the speed and never a result. Measured on the bundled
# model (bench/batched_generation.py, study-shaped requests): one thread, 8 and 16
# sequences equally fast (2.8× solo); two threads, 16 faster than 8.
GENERATION_BATCH = 8


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def batch_size(study: Study, model, threads: int, workers: int = 1) -> int:
    """``study.batch``, or when it is None the batch of a worker with ``threads`` threads:
    :data:`GENERATION_BATCH` sequences per thread, fewer when the captures and KV caches
    the batch holds at once could pass the memory it may use — the capture's
    ``memory_budget``, and no more than half this machine's memory shared by ``workers``.
    A run's share is bounded by its most slots (longest prompt + max_steps × the widest
    set θ and max_width allow), as ``generate_many`` bounds it."""
    if study.batch is not None:
        return study.batch
    by_threads = GENERATION_BATCH * max(1, int(threads))
    prompt = max(len(model.encode(p.text)) for p in study.prompts) + 1  # + a BOS
    if study.preset is not None:  # the compat preset feeds one slot per step
        slots = prompt + 1 + study.max_steps
    else:
        slots = prompt + study.max_steps * max(
            max_set_width(t, study.max_width, study.sample) for t in study.thresholds)
    dims = model.dims
    # The KV cache holds keys and values in the model's dtype (f32 on the CPU by default).
    kv = (2 * model.num_layers * dims["kv_heads"] * dims["head_dim"] * model.dtype.itemsize
          * slots)
    capture = 0 if study.capture is None else study.capture.estimate_bytes(
        model.num_layers, model.num_heads, slots, dims)
    budget = DEFAULT_MEMORY_BUDGET if study.capture is None else study.capture.memory_budget
    machine = physical_memory()
    if machine is not None:
        budget = min(budget, machine // (2 * max(1, workers)))
    return max(1, min(by_threads, budget // max(1, capture + kv)))


def _interventions(cell: Cell, replay: bool) -> list:
    """The cell's interventions as objects: all of them for a replay; the hook edits only
    for its generation (key biases act on the replays' existing key slots)."""
    if cell.interventions is None:
        return []
    ivs = [from_spec(d, f"cell {cell.prompt_id} interventions[{i}]")
           for i, d in enumerate(json.loads(cell.interventions))]
    return ivs if replay else [iv for iv in ivs if not isinstance(iv, KeyBias)]


def _generate_request(cell: Cell) -> dict:
    return dict(prompt=cell.prompt_text, threshold=cell.threshold, max_steps=cell.max_steps,
                mode=cell.mode, policy=cell.policy, max_width=cell.max_width,
                sample=cell.sample, seed=cell.seed, min_new_steps=cell.min_new_steps or 0)


def _tempo_request(cell: Cell) -> dict:
    return dict(prompt=cell.prompt_text, threshold=cell.threshold, max_steps=cell.max_steps,
                emulate_isolation_bug=cell.emulate_isolation_bug, add_bos=cell.add_bos,
                eos_ids=None if cell.eos_ids is None else list(cell.eos_ids))


def _generate(model, study: Study, cell: Cell, mask_leak=None):
    if cell.preset is not None:
        request = _tempo_request(cell)
        return model.tempo2025(request.pop("prompt"), capture=study.capture,
                               mask_leak=mask_leak, **request)
    request = _generate_request(cell)
    return model.generate(request.pop("prompt"), capture=study.capture,
                          interventions=_interventions(cell, replay=False), **request)


def _generate_together(model, study: Study, group: list[Cell]) -> list:
    """The generations of cells of one condition, run together (bit for bit their solo
    runs)."""
    if group[0].preset is not None:
        return model.tempo2025_many([_tempo_request(c) for c in group],
                                    capture=study.capture, max_batch=study.batch)
    return model.generate_many([_generate_request(c) for c in group],
                               capture=study.capture, max_batch=study.batch,
                               interventions=_interventions(group[0], replay=False))


def run_cells(model, study: Study, cells: list[Cell], prompts: dict, runs_dir: Path) -> int:
    """:func:`run_cell` for several cells, their missing generations run together by
    ``Model.generate_many`` (``Model.tempo2025_many`` for the compat preset) and then
    their missing replays together by ``Model.replay_many``; returns steps generated. A
    leaking compat study's cells are not batched: each run there depends on the runs
    before it (:func:`_run_leak_chains` runs them in order). Each run is bit for bit the
    one its cell would give alone."""
    sha = model.identity["sha256"]
    batchable = [c for c in cells if not (c.preset is not None and study.emulate_mask_leak)
                 and not (runs_dir / c.key(sha) / "run.json").exists()]
    generated = {}
    # One batch per condition (a batch shares its preset and its interventions).
    for condition in dict.fromkeys((c.preset, c.interventions) for c in batchable):
        group = [c for c in batchable if (c.preset, c.interventions) == condition]
        if len(group) > 1:
            runs = _generate_together(model, study, group)
            generated.update({c.key(sha): r for c, r in zip(group, runs, strict=True)})
    steps, done = 0, []
    for c in cells:
        n, tree = _run_generation(model, study, c, prompts[c.prompt_id], runs_dir,
                                  generated=generated.get(c.key(sha)))
        steps += n
        done.append((c, prompts[c.prompt_id], tree))
    _run_replays(model, study, done, runs_dir)
    return steps


def run_cell(model, study: Study, cell: Cell, prompt, runs_dir: Path, mask_leak=None,
             generated=None) -> int:
    """Generate (unless done, or given as ``generated``) and replay (each missing
    encoding); returns steps generated.

    ``mask_leak``: for a leaking compat study, the chain's :class:`attnvar.engine.MaskLeak`;
    a cell already on disk is recorded into it, so a resumed chain goes on as it was."""
    steps, tree = _run_generation(model, study, cell, prompt, runs_dir, mask_leak, generated)
    _run_replays(model, study, [(cell, prompt, tree)], runs_dir)
    return steps


def _run_generation(model, study: Study, cell: Cell, prompt, runs_dir: Path, mask_leak=None,
                    generated=None) -> tuple[int, object]:
    """A cell's generation saved unless on disk (``generated``: already run); returns the
    steps generated and the run's tree when it is in memory (None: read it from disk if a
    replay needs it)."""
    key = cell.key(model.identity["sha256"])
    gen_dir = runs_dir / key
    if (gen_dir / "run.json").exists():
        if mask_leak is not None:
            mask_leak.record(load_run(gen_dir))
        return 0, None
    run = generated if generated is not None else _generate(model, study, cell, mask_leak)
    run.options.update(_cell_options(cell, prompt), run_id=key, parent=None)
    run.save(gen_dir)
    return len(run.tree.steps), run.tree


def _run_replays(model, study: Study, cells: list[tuple[Cell, object, object]],
                 runs_dir: Path) -> None:
    """The missing replays of ``cells`` ((cell, prompt, tree or None) each), run together
    (``Model.replay_many``, up to the study's batch per pass) and saved. Captures only: the
    analysis never reads a replay's next-step distributions, which would be most of its
    bytes on disk (steps × vocabulary f32)."""
    sha = model.identity["sha256"]
    todo = []  # (cell, prompt, generation key, encoding)
    trees = {}
    for cell, prompt, tree in cells:
        key = cell.key(sha)
        for enc in study.replays:
            if not (runs_dir / replay_key(key, enc) / "run.json").exists():
                todo.append((cell, prompt, key, enc))
                if key not in trees:
                    trees[key] = tree if tree is not None else load_run(runs_dir / key).tree
    if not todo:
        return
    runs = model.replay_many(
        [dict(tree=trees[key], encoding=enc, interventions=_interventions(cell, replay=True))
         for cell, _, key, enc in todo],
        capture=study.capture, logits=False, max_batch=study.batch or GENERATION_BATCH)
    for (cell, prompt, key, enc), rep in zip(todo, runs, strict=True):
        rid = replay_key(key, enc)
        rep.options.update(_cell_options(cell, prompt), run_id=rid, parent=key,
                           threshold=cell.threshold, mode=cell.mode, policy=cell.policy,
                           seed=cell.seed)
        rep.save(runs_dir / rid)


def _run_group(model, study: Study, cells: list[Cell], prompts: dict, runs_dir: Path,
               after_cells) -> int:
    """:func:`run_cells`, then ``after_cells`` (if any) on the group's generated runs."""
    steps = run_cells(model, study, cells, prompts, runs_dir)
    if after_cells is not None:
        sha = model.identity["sha256"]
        after_cells(runs_dir.parent, [c.key(sha) for c in cells])
    return steps


def _worker_cells(study: Study, cells: list[Cell], prompts: dict, runs_dir: str,
                  after_cells) -> int:
    return _run_group(_worker_model, study, cells, prompts, Path(runs_dir), after_cells)


def _run_leak_chains(model, study: Study, cells: list[Cell], prompts: dict, runs_dir: Path,
                     bar) -> int:
    """A leaking compat study: per condition, every prompt in order, in this process, one
    MaskLeak carried along the chain (cells already on disk are read back into it)."""
    chains: dict[tuple, list[Cell]] = {}
    for cell in cells:
        chains.setdefault(cell.condition(), []).append(cell)
    steps = 0
    for chain in chains.values():
        leak = MaskLeak()
        for cell in chain:
            was_done = (runs_dir / cell.key(model.identity["sha256"]) / "run.json").exists()
            steps += run_cell(model, study, cell, prompts[cell.prompt_id], runs_dir,
                              mask_leak=leak)
            if bar is not None and not was_done:
                bar.update(1)
                bar.set_postfix(steps=steps)
    return steps


def _groups(cells: list[Cell], size: int) -> list[list[Cell]]:
    return [cells[i:i + size] for i in range(0, len(cells), size)]


EXECUTORS = ("local", "ray")


class RayUnavailableError(ImportError, ValueError):
    """The Ray executor was asked for, but Ray is not installed (``pip install
    'attnvar[ray]'``). A ValueError too, so that the command line reports it in one
    line like any other mistake in what it was asked to do."""


def _ray_executor():
    """:mod:`.ray_executor`, imported on first use: it imports Ray at its top, and the
    local executor must work (and start fast) without Ray installed."""
    try:
        return importlib.import_module(f"{__package__}.ray_executor")
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != "ray":
            raise
        raise RayUnavailableError("the Ray executor needs Ray, which is not installed: "
                                  "pip install 'attnvar[ray]'") from None


def run_study(study: Study, results: Path, workers: int = 1, progress: bool = True,
              after_cells=None, executor: str = "local", address: str | None = None,
              threads: int | None = None):
    """Run the study into ``results``, holding the directory's lock (util.lock): a second
    study or analysis on the same directory is refused while this one writes.

    ``after_cells``: called as ``after_cells(results, cell_ids)`` by whichever process
    ran a group of cells, right after it (the per-cell analysis, which can then remove
    the captures it read); its ``prepare(results)``, if it has one, runs first, once, in
    this process. It must be picklable when ``workers`` > 1.

    ``executor``: "local" (this process, or ``workers`` processes of this machine) or
    "ray" (``workers`` Ray actors, :mod:`.ray_executor`): on the cluster at ``address``,
    or on a Ray instance of this machine that attnvar starts and stops when it is None.
    ``threads``: each Ray actor's CPU threads (Ray executor only; default in
    :func:`.ray_executor.run_on_ray`). With Ray, ``after_cells`` runs in this process,
    on each group as it arrives. The runs, keys and tables are the same either way.
    Workers of more than one thread each start from a clean process (util.threads), which
    imports the calling script: a script must run its study under
    ``if __name__ == "__main__":``."""
    check_not_bootstrapping("run_study")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers!r}")
    if executor not in EXECUTORS:
        raise ValueError(f"executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    ray_executor = None
    if executor == "ray":
        ray_executor = _ray_executor()  # before anything is written: Ray missing is one line
        ray_executor.check_options(threads)
    elif address is not None or threads is not None:
        raise ValueError("address and threads are options of the Ray executor "
                         "(executor='ray')")
    remote = None if ray_executor is None else functools.partial(
        ray_executor.run_on_ray, workers=workers, address=address, threads=threads)
    if remote is None:
        threads = worker_threads(workers) if workers > 1 else torch.get_num_threads()
    with directory_lock(results, "another study"):
        return _run_study(study, results, workers, progress, after_cells, remote, threads or 1)


def _run_study(study: Study, results: Path, workers: int, progress: bool, after_cells,
               remote=None, threads: int = 1):
    """The study under its lock. ``remote``: None (the local executor), or the remote
    executor's ``run(study, todo, prompts, results, model_sha, bar, after_cells)``,
    which returns the steps generated. ``threads``: each worker's (batch_size)."""
    results.mkdir(parents=True, exist_ok=True)
    runs_dir = results / RUNS
    runs_dir.mkdir(exist_ok=True)
    # Staging directories of runs a killed study never finished: never read as complete
    # (their names start with "."), removed before the study goes on.
    remove_stale(runs_dir)
    # The plan first: it must predate every run (the report checks), and a results
    # directory keeps the plan it was started with.
    preregistration.write(results, study.preregistration, study.describe())
    write_atomic(results / STUDY_FILE, json.dumps(study.describe_with_plan(), indent=1).encode())
    if after_cells is not None and hasattr(after_cells, "prepare"):
        after_cells.prepare(results)
    model = _load(study.model_path, study.device, study.weights)
    sha = model.identity["sha256"]
    if study.batch is None:  # every worker gets the batch its threads and memory allow
        study = copy.copy(study)
        study.batch = batch_size(study, model, threads, workers)
    prompts = {p.id: p for p in study.prompts}
    cells = study.cells()

    def done(cell: Cell) -> bool:
        key = cell.key(sha)
        return (runs_dir / key / "run.json").exists() and all(
            (runs_dir / replay_key(key, e) / "run.json").exists() for e in study.replays)

    todo = [c for c in cells if not done(c)]
    bar = progress_bar(len(cells), progress, "attnvar study")
    if bar is not None:
        bar.update(len(cells) - len(todo))
    steps = 0
    if study.emulate_mask_leak:
        if workers > 1 or remote is not None:
            print("attnvar study: emulate_mask_leak runs each condition's prompts in order in "
                  "one process (workers = 1" + (", here, not on Ray)" if remote else ")"),
                  file=sys.stderr)
        steps = _run_leak_chains(model, study, cells, prompts, runs_dir, bar)
        if after_cells is not None:
            after_cells(results, [c.key(sha) for c in cells])
    elif remote is not None:
        steps = remote(study, todo, prompts, results, sha, bar, after_cells)
    elif workers == 1 or len(todo) <= study.batch:
        for group in _groups(todo, study.batch):
            steps += _run_group(model, study, group, prompts, runs_dir, after_cells)
            if bar is not None:
                bar.update(len(group))
                bar.set_postfix(steps=steps)
    else:
        per_worker = worker_threads(workers)
        with ProcessPoolExecutor(workers, mp_context=start_context(per_worker),
                                 initializer=_init_worker,
                                 initargs=(study.model_path, study.device, per_worker,
                                           study.weights)) as pool:
            futures = {pool.submit(_worker_cells, study, group, prompts, str(runs_dir),
                                   after_cells):
                       len(group) for group in _groups(todo, study.batch)}
            for f in as_completed(futures):
                steps += f.result()
                if bar is not None:
                    bar.update(futures[f])
                    bar.set_postfix(steps=steps)
    if bar is not None:
        bar.close()
    return write_tables(study, results, sha)


def runs_table(study: Study, results: Path, model_sha: str):
    """One row per run of this study (generations and replays), from run.json files."""
    runs_dir = results / RUNS
    wanted = {}
    for cell in study.cells():
        key = cell.key(model_sha)
        wanted[key] = (cell, None)
        for e in study.replays:
            wanted[replay_key(key, e)] = (cell, key)
    rows = []
    for path in iter_completed(runs_dir):
        if path.name not in wanted:
            continue
        cell, parent = wanted[path.name]
        meta = json.loads((path / "run.json").read_text())
        rows.append({
            "run_id": path.name, "parent_id": parent, "kind": meta["kind"],
            "encoding": meta["encoding"], "prompt_id": cell.prompt_id,
            "category": meta["options"].get("category"),
            "structure": meta["options"].get("structure"), "pair": meta["options"].get("pair"),
            "threshold": cell.threshold, "mode": cell.mode, "policy": cell.policy,
            "seed": cell.seed,
            **({"interventions": cell.intervention_label} if study.interventions else {}),
            **meta["summary"], "bracketed": meta.get("bracketed", ""),
        })
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values(["prompt_id", "threshold", "mode", "policy", "seed", "kind",
                                   "encoding"]).reset_index(drop=True)
    return frame


def summary_table(runs):
    """Mean per-run figures by condition (generation runs)."""
    gen = runs[runs["kind"].isin(GENERATED_KINDS)]
    if gen.empty:
        return gen
    return (gen.groupby(["mode", "threshold", "policy"])
            .agg(runs=("run_id", "count"), steps=("steps", "mean"),
                 parallel_steps=("parallel_steps", "mean"), mean_width=("mean_width", "mean"),
                 max_width=("max_width", "max"), mean_entropy=("mean_entropy", "mean"),
                 eos_stops=("stop_reason", lambda s: int((s == "eos").sum())))
            .reset_index())


def write_tables(study: Study, results: Path, model_sha: str):
    runs = runs_table(study, results, model_sha)
    tables = results / TABLES
    tables.mkdir(exist_ok=True)
    buf = io.BytesIO()
    runs.to_parquet(buf, index=False)
    write_atomic(tables / "runs.parquet", buf.getvalue())
    summary = summary_table(runs)
    generations = int(runs["kind"].isin(GENERATED_KINDS).sum()) if len(runs) else 0
    text = ("# attnvar study summary\n\n"
            f"{len(runs)} runs ({generations} generations) in `{results}`.\n\n"
            + markdown_table(summary) + "\n")
    write_atomic(results / SUMMARY_FILE, text)
    return runs


def format_summary(results: Path) -> str:
    return (results / SUMMARY_FILE).read_text()


__all__ = ["EXECUTORS", "RayUnavailableError", "format_summary", "run_study", "runs_table",
           "write_tables"]
