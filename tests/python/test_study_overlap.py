"""The per-cell analysis as a study's ``after_cells`` hook (analysis.CellAnalysis).

- analysing each group of cells in the process that generated it, while the study goes
  on, gives every analysis table exactly as analysing after the study does (one worker
  or two);
- ``keep_capture=False`` removes the raw captures of analysed cells: same tables, a
  fraction of the bytes, runs that still load (tree, slots, summary) and say why their
  capture is gone, and an analysis of another version refuses to discard tables that
  nothing could recompute.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

import attnvar as av
from attnvar.analysis import CellAnalysis, analyze_study, per_cell
from attnvar.study import Study

PROMPTS = ["The cat sat on the", "Once upon a time", "The capital of France is"]


def _study(bundled_path) -> Study:
    return Study(prompts=PROMPTS, thresholds=[0.1], modes=["isolated", "visible"],
                 replays=["serial", "top_only"], max_steps=6, model_path=str(bundled_path),
                 batch=2)


def _bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _same_tables(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)


@pytest.fixture(scope="module", autouse=True)
def one_thread_everywhere():
    """Every generation on one thread, in this process and in the workers (which get
    this process's threads ÷ workers), so that both studies make the same runs and the
    comparison is of the analysis alone (the last bits of a generation's probabilities
    can depend on the thread count: docs/benchmarks.md)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def after(bundled_path, tmp_path_factory):
    """The study analysed after it ran (the reference)."""
    out = tmp_path_factory.mktemp("after")
    _study(bundled_path).run(out, progress=False)
    return out, analyze_study(out, progress=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_cells_analysed_during_the_study_give_the_same_tables(bundled_path, tmp_path, after,
                                                              workers):
    _, reference = after
    _study(bundled_path).run(tmp_path, workers=workers, progress=False,
                             after_cells=CellAnalysis())
    # Every cell was analysed by the study itself: its tables are on disk already.
    runs = pd.read_parquet(tmp_path / "tables" / "runs.parquet")
    cells = list(runs.loc[runs["kind"] == "generate", "run_id"])
    assert len(cells) == 6
    assert all((tmp_path / "analysis" / f"{c}.degeneracy.parquet").exists() for c in cells)
    _same_tables(analyze_study(tmp_path, progress=False), reference)


def test_tables_only_removes_captures_and_keeps_every_table(bundled_path, tmp_path, after,
                                                            monkeypatch):
    ref_dir, reference = after
    _study(bundled_path).run(tmp_path, workers=2, progress=False,
                             after_cells=CellAnalysis(keep_capture=False))
    _same_tables(analyze_study(tmp_path, progress=False), reference)
    kept, full = _bytes(tmp_path / "runs"), _bytes(ref_dir / "runs")
    print(f"runs on disk: {kept} bytes without captures, {full} with")
    assert kept < 0.2 * full
    for run_dir in (tmp_path / "runs").iterdir():
        assert not (run_dir / "capture").exists(), run_dir.name
        run = av.load_run(run_dir)
        twin = av.load_run(ref_dir / "runs" / run_dir.name)
        assert run.text == twin.text and run.summary()["steps"] == twin.summary()["steps"]
        with pytest.raises(ValueError, match="capture was removed.*keep_capture=False"):
            run.scores  # noqa: B018
    # Another analysis version cannot recompute these tables: it refuses, and keeps them.
    before = sorted(p.name for p in (tmp_path / "analysis").iterdir())
    monkeypatch.setattr(per_cell, "ANALYSIS_VERSION", per_cell.ANALYSIS_VERSION + 1)
    with pytest.raises(ValueError, match="kept no captures"):
        analyze_study(tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "analysis").iterdir()) == before
