"""Analysing a study's runs: every metric, profile and degeneracy flag, per cell, on disk.

For each generated run (a cell) and its replays, :func:`analyze_cell` computes

- ``metrics``: :func:`attnvar.metrics.analyze` (M0, M1 plain and distance-matched, M1m,
  M1p, M2; M3 when value norms were captured; M4 against the ``top_only`` replay when
  the study has one) of the generated run and of every replay that keeps all members, with sinks
  fixed on the cell's ``top_only`` replay when the study has one (else the first slot),
  with and without the sink exclusion; per-head rows are kept for M1 and M2, prompt rows
  (layer = head = −1) for all;
- ``terms``: M2 with every coefficient (H3), prompt rows, generated run;
- ``steps``: the per-query-step contrast (H1);
- ``truncated``: the contrast of the queries of steps < T (the max_steps dose–response);
- ``classes``: the contrast within token classes (H3);
- ``distance``: query-demeaned scores by logical distance;
- ``placebo``: the primary metric on the cell's ``top_only`` replay under random labels
  (:class:`PlaceboPlan`: as many random steps as the generated run has parallel steps,
  1,000 seeded draws), for the report's placebo control;
- ``degeneracy``: metrics, flags and the preregistered exclusion decision (generated run);

each run analysed in one pass (:class:`attnvar.metrics.single_pass.RunPass`: pairs
counted and scores gathered once, both sink rules as masks of them, the fits sharing
their head groups and per-step sums), which gives the numbers of the metric and profile
functions named above; the profiles (steps, truncated, classes) in both M1 variants
(``variant``: distance-matched, which the hypotheses read when the primary metric is M1
distance-matched, and plain), each for the generated run and its replays, written
atomically to ``analysis/<cell>.<table>.parquet``. A killed analysis resumes where it
stopped; tables in ``tables/`` are the concatenation. Every number of the hypothesis
report comes from these tables (no second computation path).
"""

from __future__ import annotations

import io
import json
import shutil
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .._core import MissingError
from ..engine import load_run
from ..engine.run_store import remove_capture
from ..study import degeneracy, preregistration
from ..study.degeneracy import ExclusionRule
from ..study.store import (
    GENERATED_KINDS,
    RUNS,
    STUDY_FILE,
    TABLES,
    iter_completed,
    replay_key,
)
from ..util.atomic import remove_stale, write_atomic
from ..util.lock import directory_lock
from ..util.progress import progress_bar
from ..util.threads import (
    check_not_bootstrapping,
    limit_worker_threads,
    one_thread,
    start_context,
    worker_threads,
)
from .controls import POSITIVE_TABLE, positive_control
from .metrics import Sinks, as_view, count_pairs, find_sinks
from .metrics.placebo import placebo_contrasts
from .metrics.single_pass import RunPass, metrics_frame

ANALYSIS = "analysis"
# Keys the cached per-cell tables (analysis/VERSION): bump it when a table's numbers or
# columns change. Rounding is not a change: the single pass (metrics/single_pass.py,
# issue 21) kept 5, its tables equal those of the functions called one by one to 1e-12.
ANALYSIS_VERSION = 5
TABLE_NAMES = ("metrics", "terms", "steps", "truncated", "classes", "distance", "placebo",
               "degeneracy")
PLACEBO_DRAWS = 1000


def placebo_plan(prereg) -> PlaceboPlan:
    """The placebo of a study's plan: its primary metric's M1 variant (distance-matched
    unless the plan's metric is M1 plain) and sink rule."""
    variant = "plain" if (prereg.metric, prereg.variant) == ("M1", "plain") \
        else "distance_matched"
    return PlaceboPlan(variant=variant, sinks_excluded=prereg.sinks_excluded)
HEAD_LEVEL_METRICS = ("M1", "M2")


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def analyze_cell(generated, replays: dict, rule, prompt_id: str,
                 cell_id: str, placebo: PlaceboPlan | None = None) -> dict[str, pd.DataFrame]:
    """All tables of one cell. ``replays`` maps encoding → Run; ``rule`` is the study's
    ExclusionRule; ``placebo`` how to draw the placebo (default :class:`PlaceboPlan`).

    Each run is analysed in one pass (:class:`attnvar.metrics.single_pass.RunPass`): its
    pairs counted and its scores gathered once, both sink rules as masks of them, the
    within-query fits sharing their head groups; the numbers are those of the public
    metric and profile functions called one by one."""
    placebo = placebo or PlaceboPlan()
    out: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLE_NAMES}
    # A pair counts only when its query's step is later than its key's: runs of fewer
    # than two steps (EOS at once) have none, and no metric is defined for them.
    analysable = len(generated.tree.steps) >= 2
    top = as_view(replays["top_only"]) if analysable and "top_only" in replays else None
    sinks = find_sinks(top) if top is not None else None
    runs = [("generated", generated)] + [(e, r) for e, r in sorted(replays.items())
                                         if e != "top_only"]
    generated_view = None
    for source, run in (runs if analysable else []):
        view = as_view(run)
        if source == "generated":
            generated_view = view
        tag = dict(cell_id=cell_id, source=source)
        one = RunPass(view, sinks)
        frame_of = dict(prompt=prompt_id, kind=view.kind, encoding=view.encoding, lead=tag)
        out["metrics"].append(metrics_frame(one.metric_parts(top), keep=_head_level,
                                            **frame_of))
        out["steps"].append(one.steps_frame(lead=tag))
        out["truncated"].append(one.truncated_frame(lead=tag))
        out["classes"].append(one.classes_frame(lead=tag))
        out["distance"].append(one.distance_frame(lead=tag))
        if source == "generated":
            out["terms"].append(metrics_frame([(one.terms_blocks(), True)],
                                              keep=_prompt_level, **frame_of))
    if top is not None:
        out["placebo"].append(placebo_table(generated_view or generated, top, placebo,
                                            cell_id, sinks))
    flags = degeneracy.flags(generated, rule.thresholds())
    out["degeneracy"].append(pd.DataFrame([{
        "cell_id": cell_id, "analysable": analysable, **degeneracy.metrics(generated),
        **{f"flag_{k}": v for k, v in flags.items()}, "excluded": rule.excludes(flags)}]))
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in out.items()}


def _head_level(cols: dict) -> np.ndarray:
    """The rows a cell keeps of a run's metrics: prompt rows of every metric, per-head
    rows of M1 and M2."""
    return (cols["layer"] < 0) | np.isin(cols["metric"], HEAD_LEVEL_METRICS)


def _prompt_level(cols: dict) -> np.ndarray:
    return cols["layer"] < 0


@dataclass(frozen=True)
class PlaceboPlan:
    """How each cell's placebo is drawn: ``draws`` labellings of its ``top_only`` replay,
    each marking as many random steps parallel as the generated run has parallel steps,
    scored with M1 ``variant`` (sinks excluded or not), seeded by ``seed`` and the cell."""

    draws: int = PLACEBO_DRAWS
    variant: str = "distance_matched"
    sinks_excluded: bool = True
    seed: int = 0


def placebo_table(generated, top, plan: PlaceboPlan, cell_id: str,
                  sinks: Sinks | None = None) -> pd.DataFrame:
    """One row per placebo draw of a cell: draw, n_labelled, estimate (log scale).
    ``sinks``: those of ``top`` when already found."""
    gen = as_view(generated)
    n_labelled = len(np.unique(gen.step[gen.is_parallel & (gen.step >= 0)]))
    pairs = count_pairs(top, sinks=sinks if sinks is not None else find_sinks(top),
                        exclude_sinks=plan.sinks_excluded)
    rng = np.random.default_rng([plan.seed, zlib.crc32(cell_id.encode())])
    est = (placebo_contrasts(pairs, n_labelled, plan.draws, rng, plan.variant)
           if n_labelled else np.full(plan.draws, np.nan))
    return pd.DataFrame({"cell_id": cell_id, "variant": plan.variant,
                         "draw": np.arange(plan.draws), "n_labelled": n_labelled,
                         "estimate": est})


def _cell_paths(adir: Path, cell_id: str) -> dict[str, Path]:
    return {name: adir / f"{cell_id}.{name}.parquet" for name in TABLE_NAMES}


def _done(adir: Path, cell_id: str) -> bool:
    return all(p.exists() for p in _cell_paths(adir, cell_id).values())


def _analyze_one(results: str, cell_id: str, encodings: list[str], prompt_id: str | None,
                 rule_fields: dict, placebo: PlaceboPlan) -> str:
    """Analyse one cell and write its tables; ``prompt_id`` None: the one its generated
    run records."""
    runs_dir = Path(results) / RUNS
    generated = load_run(runs_dir / cell_id)
    if prompt_id is None:
        prompt_id = generated.options.get("prompt_id", cell_id)
    replays = {e: load_run(runs_dir / replay_key(cell_id, e)) for e in encodings}
    tables = analyze_cell(generated, replays, ExclusionRule(**rule_fields), prompt_id, cell_id,
                          placebo)
    adir = Path(results) / ANALYSIS
    # The degeneracy file is written last: a cell is complete when every table exists.
    for name in TABLE_NAMES:
        write_atomic(_cell_paths(adir, cell_id)[name], _parquet_bytes(tables[name]))
    return cell_id


CAPTURE_REMOVED = "CAPTURE_REMOVED"  # in analysis/: some runs' captures were removed


def prepare_analysis(results: Path) -> Path:
    """The study's ``analysis/`` directory, made ready for this analysis version: tables
    of another version are removed (they are recomputed) — unless captures were removed
    after analysis (``keep_capture=False``), when nothing could recompute them and this
    raises instead."""
    adir = results / ANALYSIS
    version_file = adir / "VERSION"
    if adir.exists() and (not version_file.exists()
                          or version_file.read_text().strip() != str(ANALYSIS_VERSION)):
        if (adir / CAPTURE_REMOVED).exists():
            found = version_file.read_text().strip() if version_file.exists() else "unknown"
            raise ValueError(
                f"{adir}: tables of analysis version {found}, and this attnvar's is "
                f"{ANALYSIS_VERSION}; the study kept no captures (keep_capture=False), so "
                "they cannot be recomputed: read them with the attnvar that wrote them, or "
                "rerun the study into a new directory")
        shutil.rmtree(adir)  # written by another analysis version: recompute
    adir.mkdir(exist_ok=True)
    write_atomic(version_file, str(ANALYSIS_VERSION))
    remove_stale(adir)
    return adir


@dataclass(frozen=True)
class CellAnalysis:
    """The per-cell analysis as a study's ``after_cells`` hook (``Study.run``): each group
    of cells is analysed by the process that generated it, as soon as it is on disk, so
    the analysis overlaps the generations instead of following them. With
    ``keep_capture=False`` the raw captures of every analysed cell (its generation and
    replays) are then removed: the study keeps its trees and tables — a fraction of the
    bytes — and its peak disk use is the captures of the groups in flight.

    The positive control replays its sample itself, so it needs no stored capture;
    :func:`analyze_study` then finds every cell done and only gathers the tables."""

    keep_capture: bool = True

    def prepare(self, results: Path) -> None:
        _check_one_condition(Path(results))  # before any run, not after the first group
        prepare_analysis(Path(results))

    def __call__(self, results: Path, cell_ids: list[str]) -> None:
        analyze_cells(results, cell_ids, keep_capture=self.keep_capture)


def analyze_cells(results: str | Path, cell_ids: list[str], keep_capture: bool = True) -> None:
    """Analyse the given generated runs of the study in ``results`` (skipping cells
    already done), in this process, then, unless ``keep_capture``, remove the captures
    of every done cell among them. For a study's own processes (its lock is held): call
    :func:`analyze_study` otherwise."""
    results = Path(results)
    _check_one_condition(results)
    encodings = list(read_study(results).get("replays", []))
    rule_fields, placebo = _plan_inputs(results)
    adir = results / ANALYSIS
    runs_dir = results / RUNS
    with one_thread():
        for cell_id in cell_ids:
            if not (runs_dir / cell_id / "run.json").exists():
                continue
            if not _done(adir, cell_id):
                _analyze_one(str(results), cell_id, encodings, None, rule_fields, placebo)
            if not keep_capture:
                _remove_captures(results, cell_id, encodings)


def _check_one_condition(results: Path) -> None:
    """The analysis pools a study's cells: a grid with several intervention conditions
    would mix them, so it is refused (analyse one condition per study directory)."""
    conditions = read_study(results).get("interventions") or []
    if len(conditions) > 1:
        raise ValueError(
            f"{results}: the study has {len(conditions)} intervention conditions; the "
            "hypothesis analysis would pool them. Run each condition as a study of its own "
            "(Study(..., interventions=[condition])) into its own directory and analyse "
            "that; runs.parquet's interventions column tells this grid's runs apart")


def _plan_inputs(results: Path) -> tuple[dict, PlaceboPlan]:
    """What every cell's analysis takes from the study's preregistered plan: the
    exclusion rule's fields (picklable, for worker processes) and the placebo."""
    prereg = preregistration.Preregistration.from_dict(preregistration.load(results)["plan"])
    rule = prereg.exclusion_rule()
    return {"always": rule.always, "any_k_of": rule.any_k_of, "k": rule.k}, placebo_plan(prereg)


def _remove_captures(results: Path, cell_id: str, encodings) -> None:
    marker = results / ANALYSIS / CAPTURE_REMOVED
    if not marker.exists():
        write_atomic(marker, "")
    why = ("the study kept its analysis tables only (keep_capture=False); regenerate the "
           "run to read its capture")
    for rid in [cell_id, *(replay_key(cell_id, e) for e in encodings)]:
        d = results / RUNS / rid
        if (d / "run.json").exists() and (d / "capture").exists():
            remove_capture(d, why)


def analyze_study(results: str | Path, workers: int = 1, progress: bool = True,
                  on_cell: Callable[[str], None] | None = None) -> dict[str, pd.DataFrame]:
    """Analyse every generated run of the study in ``results`` (resumable), then write
    ``tables/<name>.parquet`` for each table and return them.

    The exclusion rule and the sink source come from the study's preregistration and
    replays. Cells analysed by an earlier call (same analysis version) are not redone.
    Holds the directory's lock (util.lock) while it writes.
    """
    check_not_bootstrapping("analyze_study")
    results = Path(results)
    runs_path = results / TABLES / "runs.parquet"
    if not runs_path.exists():
        raise MissingError(f"{runs_path}: no runs table; run the study first")
    with directory_lock(results, "an analysis"):
        return _analyze_study(results, workers, progress, on_cell)


def _analyze_study(results: Path, workers: int, progress: bool,
                   on_cell: Callable[[str], None] | None) -> dict[str, pd.DataFrame]:
    _check_one_condition(results)
    runs = pd.read_parquet(results / TABLES / "runs.parquet")
    rule_fields, placebo = _plan_inputs(results)
    adir = prepare_analysis(results)
    gen = runs[runs["kind"].isin(GENERATED_KINDS)]
    replays = runs[runs["kind"] == "replay"]
    completed = {p.name for p in iter_completed(results / RUNS)}
    jobs = []
    for row in gen.itertuples(index=False):
        encs = sorted(replays.loc[replays["parent_id"] == row.run_id, "encoding"])
        if row.run_id in completed and not _done(adir, row.run_id):
            jobs.append((str(results), row.run_id, encs, row.prompt_id, rule_fields, placebo))
    bar = progress_bar(len(jobs), progress and bool(jobs), "attnvar analysis")

    def finished(cell_id: str) -> None:
        if bar is not None:
            bar.update(1)
        if on_cell is not None:
            on_cell(cell_id)

    if workers <= 1 or len(jobs) <= 1:
        with one_thread():
            for job in jobs:
                finished(_analyze_one(*job))
    else:
        threads = worker_threads(workers)
        with ProcessPoolExecutor(workers, mp_context=start_context(threads),
                                 initializer=limit_worker_threads, initargs=(threads,)) as pool:
            for f in as_completed([pool.submit(_analyze_one, *job) for job in jobs]):
                finished(f.result())
    if bar is not None:
        bar.close()
    cell_ids = list(gen["run_id"])
    model_path = read_study(results).get("model_path")
    if _positive_path(results).exists():  # computed before: read, no model to load
        tables = write_analysis_tables(results, cell_ids)
        tables[POSITIVE_TABLE] = _positive_control(results, tables["degeneracy"], placebo,
                                                   model_path)
        return tables
    # The positive control loads a model and replays runs with a full capture: in a worker
    # process, while this one gathers the tables, it costs no memory on top of the tables
    # (and its time overlaps theirs). It needs only the small degeneracy table, read first.
    deg = _concat_parquet(_table_paths(results, cell_ids)["degeneracy"])
    threads = torch.get_num_threads()
    with ProcessPoolExecutor(1, mp_context=start_context(threads),
                             initializer=limit_worker_threads, initargs=(threads,)) as pool:
        control = pool.submit(_positive_control, results, deg, placebo, model_path)
        tables = write_analysis_tables(results, cell_ids)
        tables[POSITIVE_TABLE] = control.result()
    return tables


def _positive_path(results: Path) -> Path:
    return results / ANALYSIS / f"{POSITIVE_TABLE}.parquet"


def _positive_control(results: Path, deg: pd.DataFrame, placebo: PlaceboPlan,
                      model_path: str | None) -> pd.DataFrame:
    """The positive control (controls.py), computed once per analysis version and kept in
    ``analysis/`` like the cells' tables, then copied to ``tables/``."""
    done = _positive_path(results)
    if done.exists():
        frame = pd.read_parquet(done)
    else:
        kept = set(deg.loc[~deg["excluded"].astype(bool), "cell_id"]) if len(deg) else set()
        frame = positive_control(results, kept, model_path, variant=placebo.variant,
                                 sinks_excluded=placebo.sinks_excluded)
        write_atomic(done, _parquet_bytes(frame))
    write_atomic(results / TABLES / f"{POSITIVE_TABLE}.parquet", _parquet_bytes(frame))
    return frame


# Threads reading the per-cell files: pyarrow decodes them without holding the GIL, so a
# few threads overlap the file reads with each other and with the conversion.
GATHER_THREADS = 4


def write_analysis_tables(results: Path, cell_ids: list[str]) -> dict[str, pd.DataFrame]:
    """Concatenate the per-cell files of ``cell_ids`` into ``tables/<name>.parquet``.

    Each table is exactly ``pd.concat`` of the cells' frames as ``pd.read_parquet``
    reads them, empty ones left out (:func:`_concat_parquet`); the files are read as
    Arrow tables by :data:`GATHER_THREADS` threads and converted to pandas once per
    table rather than once per file."""
    paths = _table_paths(results, cell_ids)
    out = {}
    with ThreadPoolExecutor(GATHER_THREADS) as pool, ThreadPoolExecutor(1) as writer:
        # Every read is queued at once, and a second thread writes the tables: the next
        # tables are read while this one is converted and the last one is written.
        read = {name: pool.map(_read_arrow, paths[name]) for name in TABLE_NAMES}
        written = []
        for name in TABLE_NAMES:
            out[name] = frame = _concat_parquet(paths[name], list(read[name]))
            written.append(writer.submit(_write_table, results / TABLES / f"{name}.parquet",
                                         frame))
        for w in written:
            w.result()
    return out


def _table_paths(results: Path, cell_ids: list[str]) -> dict[str, list[Path]]:
    """Per table name, the per-cell files of ``cell_ids`` that exist, in that order."""
    adir = results / ANALYSIS
    return {name: [p for p in (adir / f"{c}.{name}.parquet" for c in cell_ids) if p.exists()]
            for name in TABLE_NAMES}


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, _parquet_bytes(frame))


def _read_arrow(path: Path) -> pa.Table:
    with pq.ParquetFile(path) as f:
        return f.read(use_pandas_metadata=True, use_threads=False)


def _concat_parquet(paths: list[Path], tables: list[pa.Table] | None = None) -> pd.DataFrame:
    """``pd.concat([pd.read_parquet(p) for p in paths if it has rows], ignore_index=True)``
    (an empty DataFrame when none has), the same frame, built faster: ``tables`` are
    the files' Arrow tables (read here when None), and each run of consecutive files
    with one schema (types and pandas metadata) is concatenated as Arrow and converted
    once. Files of different schemas (a column all null in one cell, typed ``null``)
    stay apart until ``pd.concat``, which types their columns as it always did."""
    if tables is None:
        tables = [_read_arrow(p) for p in paths]
    runs: list[tuple[list[Path], list[pa.Table]]] = []
    for path, table in zip(paths, tables, strict=True):
        if not table.num_rows:
            continue
        if runs and table.schema.equals(runs[-1][1][0].schema, check_metadata=True):
            runs[-1][0].append(path)
            runs[-1][1].append(table)
        else:
            runs.append(([path], [table]))
    checked: list[pa.Schema] = []
    frames = [_run_frame(*run, checked) for run in runs]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _run_frame(paths: list[Path], tables: list[pa.Table], checked: list[pa.Schema]
               ) -> pd.DataFrame:
    """One frame of files with one schema. Their conversion is pyarrow's ``to_pandas``,
    which is what pandas' reader calls, unless a pandas/pyarrow pair maps some type its
    own way (pandas ≥ 3 with pyarrow < 19 maps strings itself): the first file of each
    schema (``checked``: the schemas found to agree), read both ways, tells, and where
    they differ every file is read by pandas."""
    schema = tables[0].schema
    if not any(schema.equals(s, check_metadata=True) for s in checked):
        probe = pd.read_parquet(paths[0])
        first = tables[0].to_pandas()
        if not (probe.equals(first) and probe.dtypes.equals(first.dtypes)
                and probe.attrs == first.attrs):
            return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
        checked.append(schema)
    return pa.concat_tables(tables).to_pandas()


def load_tables(results: str | Path) -> dict[str, pd.DataFrame]:
    """The study's tables (runs and every analysis table) as written by the study and
    :func:`analyze_study`."""
    tdir = Path(results) / TABLES
    names = ("runs", *TABLE_NAMES, POSITIVE_TABLE)
    missing = [n for n in names if not (tdir / f"{n}.parquet").exists()]
    if missing:
        raise MissingError(f"{tdir}: missing {', '.join(m + '.parquet' for m in missing)}; "
                                "run the study and attnvar.analysis.analyze_study first")
    return {n: pd.read_parquet(tdir / f"{n}.parquet") for n in names}


def read_study(results: str | Path) -> dict:
    """The study description (study.json) of a results directory."""
    path = Path(results) / STUDY_FILE
    if not path.exists():
        raise MissingError(f"{path}: not a study results directory")
    return json.loads(path.read_text())


__all__ = ["ANALYSIS_VERSION", "TABLE_NAMES", "CellAnalysis", "analyze_cell", "analyze_cells",
           "analyze_study", "load_tables", "prepare_analysis", "read_study",
           "write_analysis_tables"]
