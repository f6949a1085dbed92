"""The report phase's shortcuts give the slow path's results exactly: the per-cell tables
gathered as Arrow equal ``pd.read_parquet`` + ``pd.concat`` of the same files, and the
hypothesis tables, figures and report computed by two processes equal those of one."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnvar.analysis import TABLE_NAMES, per_cell
from attnvar.analysis import hypotheses as compute
from attnvar.analysis.hypotheses import suite
from attnvar.analysis.hypotheses.results import prompt_rows, reading_tables
from attnvar.report import document, plots

PERMUTATIONS = 19


# ---- gathering the per-cell tables ----------------------------------------------------------
def _cell(cell: str, n: int, **columns) -> pd.DataFrame:
    """A per-cell frame: cell_id, then ``columns`` (defaults: a string, an int, a float
    and a bool column), ``n`` rows."""
    base = {"term": [f"t{i}" for i in range(n)], "layer": list(range(n)),
            "estimate": [0.5 * i - 1 for i in range(n)], "kept": [i % 2 == 0 for i in range(n)]}
    base.update(columns)
    return pd.DataFrame({"cell_id": [cell] * n, **base})


# Per-cell frames in cell order, chosen so that pooling them as Arrow tables of one
# schema would change the result: all-null columns (Arrow type null), an int column with
# a null (read back as float), a bool column with a null (read back as object), empty
# frames with and without columns, a missing file, and the same schema on both sides of
# a different one (row order must follow the cells).
CELLS = {
    "c0": _cell("c0", 3),
    "c1": _cell("c1", 2),
    "c2": _cell("c2", 2, term=[None, None], layer=[None, None]),  # all null: type null
    "c3": pd.DataFrame(),  # no rows, no columns
    "c4": _cell("c4", 0).astype({"term": object}).assign(term=None, layer=None),
    "c5": _cell("c5", 3),
    # written by Arrow, no pandas metadata: int64 and bool columns with a null
    "c6": pa.table({"cell_id": ["c6", "c6"], "term": ["a", "b"],
                    "layer": pa.array([7, None], pa.int64()), "estimate": [1.0, 2.0],
                    "kept": pa.array([True, None], pa.bool_())}),
    "c7": None,  # no file
    "c8": _cell("c8", 1, extra=[2.5]),  # a column the others lack
    "c9": _cell("c9", 2),
}


def _write_cells(results, name: str, cells: dict) -> list[str]:
    (results / per_cell.ANALYSIS).mkdir(parents=True, exist_ok=True)
    (results / "tables").mkdir(exist_ok=True)
    for cell, frame in cells.items():
        path = results / per_cell.ANALYSIS / f"{cell}.{name}.parquet"
        if isinstance(frame, pa.Table):
            pq.write_table(frame, path)
        elif frame is not None:
            frame.to_parquet(path, index=False)
    return list(cells)


def _plain(results, name: str, cells: list[str]) -> pd.DataFrame:
    """The reference: every file read by pandas, empty frames left out, concatenated."""
    paths = [results / per_cell.ANALYSIS / f"{c}.{name}.parquet" for c in cells]
    parts = [pd.read_parquet(p) for p in paths if p.exists()]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert list(got.dtypes) == list(want.dtypes)
    assert type(got.index) is type(want.index) and got.index.equals(want.index)


def test_gathered_tables_are_pandas_reads_concatenated(tmp_path):
    cells = _write_cells(tmp_path, "metrics", CELLS)
    # the same frames under a second name, in another order; "steps" has no files
    _write_cells(tmp_path, "classes", dict(reversed(CELLS.items())))
    got = per_cell.write_analysis_tables(tmp_path, cells)
    assert list(got) == list(TABLE_NAMES)
    want = _plain(tmp_path, "metrics", cells)
    # what makes the case: columns typed by pandas across schemas, not by Arrow
    assert want["term"].dtype == object and want["layer"].dtype == object
    assert want["kept"].dtype == object and len(want) == 15
    for name in TABLE_NAMES:
        ref = _plain(tmp_path, name, cells)
        _assert_same(got[name], ref)
        # the table file: the bytes the concatenated frame always gave
        written = (tmp_path / "tables" / f"{name}.parquet").read_bytes()
        assert written == per_cell._parquet_bytes(ref), name
    assert got["steps"].shape == (0, 0)


def test_one_schema_gathers_in_one_piece_and_keeps_the_cell_order(tmp_path):
    frames = {f"c{i}": _cell(f"c{i}", i % 3 + 1) for i in range(12)}
    frames["c4"] = _cell("c4", 0)  # a cell without rows, same columns
    cells = _write_cells(tmp_path, "steps", frames)
    got = per_cell.write_analysis_tables(tmp_path, cells[::-1])["steps"]
    _assert_same(got, _plain(tmp_path, "steps", cells[::-1]))
    assert list(dict.fromkeys(got["cell_id"])) == [c for c in cells[::-1] if c != "c4"]


# ---- the report computed by several processes ----------------------------------------------
def _same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(
            _same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_compute_all_in_two_processes_equals_one_exactly(small_core_study):
    res = compute.load(small_core_study)
    before = {k: v.copy() for k, v in res.tables.items()}
    one = compute.compute_all(res, n_permutations=PERMUTATIONS)
    two = compute.compute_all(res, n_permutations=PERMUTATIONS, workers=2)
    assert list(two) == list(one)
    computed = [k for k, t in one.items() if suite.NOT_COMPUTED not in t.facts]
    assert {"primary", "H1", "predictability", "robustness", "heads"} <= set(computed)
    assert len(one["predictability"].tables["summary"]) and len(one["heads"].tables["heads"])
    for key, a in one.items():
        b = two[key]
        assert (b.name, b.metric, b.table_metrics) == (a.name, a.metric, a.table_metrics)
        assert list(b.tables) == list(a.tables), key
        for name, table in a.tables.items():
            pd.testing.assert_frame_equal(b.tables[name], table, check_exact=True,
                                          obj=f"{key}.{name}")
        pd.testing.assert_frame_equal(b.tests, a.tests, check_exact=True, obj=f"{key} tests")
        assert _same_value(b.facts, a.facts), key
    for name, table in before.items():  # no analysis changed the study's tables
        pd.testing.assert_frame_equal(res.tables[name], table, check_exact=True)


def test_views_of_the_tables_are_kept_only_while_reading(small_core_study):
    """compute_all keeps the views the analyses derive from the tables (reading_tables):
    the same numbers as views derived afresh, and outside a block a table changed in
    place is seen as it is."""
    res = compute.load(small_core_study)
    fresh = compute.robustness(res).tables["specifications"]
    metrics = res.tables["metrics"]
    with reading_tables():
        kept = compute.robustness(res).tables["specifications"]
        rows = prompt_rows(metrics, "M1", "plain", True)
        assert prompt_rows(metrics, "M1", "plain", True).index.equals(rows.index)
        assert res.cells() is not res.cells()  # a copy each time: callers may change it
    pd.testing.assert_frame_equal(kept, fresh, check_exact=True)
    assert len(rows) and (rows["layer"] < 0).all() and (rows["variant"] == "plain").all()
    assert res.design == "replay"
    metrics["source"] = metrics["source"].replace(res.contrast_encoding, "elsewhere")
    assert res.design == "observational"
    assert not len(prompt_rows(metrics, "M1", "plain", True, source=res.contrast_encoding))


def test_an_analysis_error_in_a_worker_is_raised_here(small_core_study, monkeypatch):
    res = compute.load(small_core_study)

    def broken(res, **kw):
        raise RuntimeError("not a data error")

    monkeypatch.setattr(suite, "heads", broken)
    with pytest.raises(RuntimeError, match="not a data error"):
        compute.compute_all(res, predict=False, workers=2)


def _figures() -> list:
    """A few report figures, drawn afresh (a figure drawn twice may differ from its
    first drawing, so each rendering below gets new ones)."""
    rng = np.random.default_rng(1)
    forest = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(6)],
                           "effect_pct": rng.normal(0, 5, 6)})
    forest = forest.assign(low=forest["effect_pct"] - 3, high=forest["effect_pct"] + 3)
    profile = pd.DataFrame({"query_step": np.tile(np.arange(5), 2),
                            "mode": np.repeat(["isolated", "visible"], 5),
                            "mean_pct": rng.normal(0, 4, 10)})
    profile = profile.assign(low_pct=profile["mean_pct"] - 2, high_pct=profile["mean_pct"] + 2)
    heads = pd.DataFrame({"layer": np.repeat(np.arange(4), 3), "head": np.tile(np.arange(3), 4),
                          "mean_pct": rng.normal(0, 10, 12), "reject": rng.random(12) < 0.3})
    return [plots.forest_plot(forest, "effect_pct", "low", "high", "prompt_id", title="f"),
            plots.profile_plot(profile, "query_step", "mean_pct", "low_pct", "high_pct",
                               group="mode", title="p"),
            plots.head_heatmap(heads, "mean_pct", "reject", title="h")]


def test_figures_rendered_by_two_processes_are_the_same_png_bytes():
    one = [plots.png_bytes(fig, dpi=document.FIGURE_DPI) for fig in _figures()]
    assert len(set(one)) == 3
    assert plots.png_bytes_all(_figures(), document.FIGURE_DPI, workers=2) == one
    assert plots.png_bytes_all(_figures(), document.FIGURE_DPI) == one


def test_the_report_written_by_two_processes_is_the_same_files(small_core_study, tmp_path):
    a = document.write_report(small_core_study, out=tmp_path / "one", predict=False).parent
    b = document.write_report(small_core_study, out=tmp_path / "two", predict=False,
                              workers=2).parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert any(p.suffix == ".png" for p in files) and any(p.suffix == ".csv" for p in files)
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
