"""H1–H4 as one family, and every hypothesis function in report order."""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from ...util.threads import can_fork, limit_forked_threads, worker_threads
from .. import stats
from .checks import dataset, degeneracy, heads, predictability, prototype, robustness
from .context import h4_context
from .controls import controls
from .primary import primary
from .results import HypothesisTables, StudyResults, reading_tables
from .semantics import h3_semantics
from .structure import h2_structure
from .temporal import h1_temporal

HYPOTHESES = ("H1", "H2", "H3", "H4")


def family(results: dict, res: StudyResults) -> pd.DataFrame:
    """The H1–H4 tests (one per hypothesis and mode) with the plan's family-wise
    correction (Holm by default). ``results`` maps names to objects with a ``tests``
    frame (:class:`HypothesisTables`, or the report's findings)."""
    rows = [r.tests for k, r in results.items() if k in HYPOTHESES and len(r.tests)]
    if not rows:
        return pd.DataFrame(columns=["hypothesis", "mode", "test", "p", "p_adj", "reject"])
    table = pd.concat(rows, ignore_index=True)
    c = stats.correct(table["p"], res.plan["hypotheses_correction"], res.alpha)
    table["p_adj"], table["reject"] = c["p_adj"].to_numpy(), c["reject"].to_numpy()
    return table


NOT_COMPUTED = "not_computed"
# What a study too small or too odd for one analysis raises there (numpy, scipy,
# statsmodels and pandas all signal "not enough data" with these).
DATA_ERRORS = (ValueError, ZeroDivisionError, np.linalg.LinAlgError, KeyError, IndexError)


def not_computed(name: str, error: BaseException) -> HypothesisTables:
    """The stand-in for an analysis the study's data do not allow; ``facts`` says why."""
    return HypothesisTables(name, facts={NOT_COMPUTED: f"{type(error).__name__}: {error}"})


def _safely(name: str, fn, res: StudyResults, **kwargs) -> HypothesisTables:
    try:
        return fn(res, **kwargs)
    except DATA_ERRORS as e:
        return not_computed(name, e)


Step = tuple[str, Callable[..., HypothesisTables], dict]


def compute_all(res: StudyResults, predict: bool = True, n_permutations: int = 200,
                workers: int = 1) -> dict[str, HypothesisTables]:
    """Every table of the report, in report order, plus ``family`` (table ``family``:
    the corrected H1–H4 tests). ``n_permutations`` goes to the predictability model's
    permutation p values. An analysis the data do not allow (a tiny study) comes back
    empty with ``facts["not_computed"]`` saying why, so the report can say so.

    ``workers`` > 1: the analyses run side by side in that many processes
    (:func:`_in_processes`); each draws from its own seeds, so the tables are those of
    one process, to the bit."""
    steps = _steps(predict, n_permutations)
    if workers > 1:
        out = _in_processes(res, steps, workers)
    else:
        with reading_tables():
            out = {name: _safely(name, fn, res, **kw) for name, fn, kw in steps}
    fam = family(out, res)
    out["family"] = HypothesisTables("family", {"family": fam}, fam)
    return out


def _steps(predict: bool, n_permutations: int) -> list[Step]:
    """(name, function, keyword arguments) of every analysis, in report order."""
    steps = [("dataset", dataset, {}), ("controls", controls, {}), ("primary", primary, {}),
             ("H1", h1_temporal, {}),
             ("H2", h2_structure, {}), ("H3", h3_semantics, {}), ("H4", h4_context, {})]
    if predict:
        steps.append(("predictability", predictability, {"n_permutations": n_permutations}))
    steps += [("robustness", robustness, {}), ("prototype", prototype, {}),
              ("heads", heads, {}), ("degeneracy", degeneracy, {})]
    return steps


# What each analysis costs, relatively: seconds in one process on the core study (132
# prompts, on a shared machine), the others under one. A pool is handed the analyses
# longest first, so the two long ones start at once and the short ones fill the gaps:
# two workers finish within a second or two of each other.
COST = {"predictability": 60, "robustness": 37, "heads": 16, "H1": 11, "H4": 6.3,
        "H3": 6.2, "H2": 2.8, "primary": 2.1}

_worker: tuple[StudyResults, list[Step]] | None = None  # a pool worker's (_start_worker)


def _start_worker(res: StudyResults, steps: list[Step], threads: int) -> None:
    global _worker
    _worker = res, steps
    limit_forked_threads(threads)
    # What the worker inherited stays for its life: out of the collector's sight, a full
    # collection (statsmodels' Holm correction runs one per call) scans only the
    # worker's own objects, and inherited pages are not written to by the collector.
    gc.freeze()


def _run_step(index: int) -> HypothesisTables:
    res, steps = _worker
    name, fn, kw = steps[index]
    with reading_tables():
        return _safely(name, fn, res, **kw)


def _in_processes(res: StudyResults, steps: list[Step], workers: int
                  ) -> dict[str, HypothesisTables]:
    """Every step's tables, computed by a pool of ``workers`` processes, in report order.

    Forked workers inherit ``res`` (the study's tables, hundreds of MB) and the steps
    instead of receiving them pickled; a task is a step's index, and comes back as its
    tables. The analyses share no state: each seeds its own generators (stats, the
    predictability folds and permutations) and only reads ``res``, so each returns what
    it returns in one process. Each worker gets an equal share of the BLAS threads, as
    the study's own workers do, and one torch thread (more would hang a forked child:
    util.threads)."""
    context = multiprocessing.get_context("fork" if can_fork() else None)
    order = sorted(range(len(steps)), key=lambda i: -COST.get(steps[i][0], 0.0))
    workers = min(workers, len(steps))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(res, steps, worker_threads(workers))) as pool:
        try:
            done = {i: pool.submit(_run_step, i) for i in order}
            return {steps[i][0]: done[i].result() for i in range(len(steps))}
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


__all__ = ["DATA_ERRORS", "HYPOTHESES", "NOT_COMPUTED", "compute_all", "family", "not_computed"]
