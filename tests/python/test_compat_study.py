"""Compat studies: Study(preset="tempo-2025") runs every cell with the compat preset and
its options, through the same runner, analysis and report as a mechanism study."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

import attnvar
import attnvar.metrics as am
from attnvar import prompts
from attnvar.analysis import analyze_study, load_tables
from attnvar.study import Study
from attnvar.study.store import Cell

PROMPTS = prompts.suite("tempo13")[:3]


def compat_study(bundled_path, **kw):
    opts = dict(prompts=PROMPTS, thresholds=[0.15], modes=["isolated", "visible"],
                max_steps=6, model_path=str(bundled_path), preset="tempo-2025")
    opts.update(kw)
    return Study(**opts)


@pytest.fixture(scope="module")
def results(bundled_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("compat")
    compat_study(bundled_path, eos_ids=[2]).run(out, progress=False)
    analyze_study(out, progress=False)
    return out


def test_every_cell_runs_the_preset_with_its_options(results):
    runs = load_tables(results)["runs"]
    assert len(runs) == 6 and set(runs["kind"]) == {"tempo-2025"}
    for row in runs.itertuples():
        run = attnvar.load_run(results / "runs" / row.run_id)
        assert run.options["emulate_isolation_bug"] == (row.mode == "isolated")
        assert run.options["eos_ids"] == [2] and run.options["preset"] == "tempo-2025"
        assert run.options["prompt_id"] == row.prompt_id


def test_the_analysis_reads_compat_cells_and_m0_is_the_runs_own(results):
    tables = load_tables(results)
    m = tables["metrics"]
    legacy = m[(m.metric == "M0") & (m.variant == "legacy") & (m.layer < 0)]
    assert len(legacy) == 6 and set(legacy["source"]) == {"generated"}
    for row in legacy.itertuples():
        run = attnvar.load_run(results / "runs" / row.cell_id)
        direct = am.legacy_reduction(run)
        want = direct[(direct.layer < 0)]["estimate"].iloc[0]
        assert row.estimate == pytest.approx(want, abs=1e-9, nan_ok=True)
    assert len(tables["degeneracy"]) == 6


def test_a_compat_study_writes_its_report(results):
    path = attnvar.report.write_report(results, n_permutations=19)
    text = path.with_suffix(".md").read_text()
    assert "observational" in text  # no replays: the contrast is within the generated run


@pytest.mark.parametrize("kw, match", [
    (dict(modes=["causal"]), "no compat form"),
    (dict(replays=["serial"]), "replays"),
    (dict(policies=["top"]), "policy"),
    (dict(sample=True), "greedy"),
    (dict(eos_ids="2"), "eos_ids"),
    (dict(preset="tempo-2024"), "preset"),
])
def test_a_compat_study_refuses_what_the_preset_cannot_do(bundled_path, kw, match):
    with pytest.raises(ValueError, match=match):
        compat_study(bundled_path, **kw)


@pytest.mark.parametrize("kw", [dict(add_bos=False), dict(eos_ids=[2]),
                                dict(emulate_mask_leak=True)])
def test_compat_options_need_the_preset(kw):
    with pytest.raises(ValueError, match="only with preset"):
        Study(prompts=["a b c"], **kw)


def test_mechanism_cell_keys_are_what_they_were():
    """Fields added for compat cells (and the intervention condition) stay out of the key
    while unset: every earlier results directory still resumes."""
    cell = Study(prompts=["a b c"]).cells()[0]
    old = {k: v for k, v in asdict(cell).items()
           if k not in ("preset", "add_bos", "eos_ids", "leak_after", "interventions")}
    payload = json.dumps({"model": "m", **old}, sort_keys=True)
    assert cell.key("m") == hashlib.sha256(payload.encode()).hexdigest()[:16]
    assert cell.key("m") == "87b30db97630553c"  # as computed by the code before both
    compat = Cell(**{**asdict(cell), "preset": "tempo-2025"})
    assert compat.key("m") != cell.key("m")


def test_a_study_file_carries_the_compat_options(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text('suite = "tempo13"\npreset = "tempo-2025"\nmodes = ["isolated"]\n'
                    "add_bos = false\neos_ids = [2, 7]\nmax_steps = 4\n")
    study = Study.from_file(path)
    assert study.preset == "tempo-2025" and study.add_bos is False
    assert study.eos_ids == (2, 7)
    cells = study.cells()
    assert len(cells) == 13 and all(c.preset == "tempo-2025" and c.eos_ids == (2, 7)
                                    for c in cells)
    assert study.describe()["preset"] == "tempo-2025"
    assert "preset" not in Study(prompts=["a b"]).describe()


def test_the_cli_runs_a_compat_study(bundled_path, tmp_path):
    from attnvar.cli import main

    out = tmp_path / "r"
    assert main(["study", "--suite", "tempo13", "--max-prompts", "2", "--max-steps", "3",
                 "--thresholds", "0.15", "--modes", "isolated", "--preset", "tempo-2025",
                 "--bos", "on", "--model", str(bundled_path), "--out", str(out),
                 "--no-report", "--no-progress"]) == 0
    runs = pd.read_parquet(out / "tables" / "runs.parquet")
    assert set(runs["kind"]) == {"tempo-2025"} and len(runs) == 2
    assert main(["study", "--suite", "tempo13", "--bos", "off", "--model", str(bundled_path),
                 "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert np.isfinite(runs["steps"]).all()


# ---- the stale-mask leak, one ordered chain per condition ---------------------------------

@pytest.fixture(scope="module")
def leak_results(bundled_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("leak")
    compat_study(bundled_path, emulate_mask_leak=True).run(out, workers=2, progress=False)
    return out


def _chain(results, mode):
    runs = pd.read_parquet(results / "tables" / "runs.parquet")
    order = {p.id: i for i, p in enumerate(PROMPTS)}
    rows = runs[runs["mode"] == mode].sort_values("prompt_id", key=lambda s: s.map(order))
    return [attnvar.load_run(results / "runs" / r) for r in rows["run_id"]]


def test_each_condition_is_one_ordered_chain(bundled_path, leak_results, results, capfd):
    study = compat_study(bundled_path, emulate_mask_leak=True)
    iso = [c for c in study.cells() if c.mode == "isolated"]
    assert [c.leak_after for c in iso] == [(), (PROMPTS[0].id,), (PROMPTS[0].id, PROMPTS[1].id)]
    # Isolated runs leave a mask each; a visible chain has none to see.
    assert [r.options["mask_leak"] for r in _chain(leak_results, "isolated")] == [0, 1, 2]
    assert [r.options["mask_leak"] for r in _chain(leak_results, "visible")] == [0, 0, 0]
    # The first prompt of a chain is the clean run; the leak reaches the later ones.
    clean_iso = _chain(results, "isolated")
    leaked_iso = _chain(leak_results, "isolated")
    assert torch_equal(leaked_iso[0].visibility, clean_iso[0].visibility)
    assert not torch_equal(leaked_iso[1].visibility, clean_iso[1].visibility)
    for clean, leaked in zip(_chain(results, "visible"), _chain(leak_results, "visible"),
                             strict=True):
        assert torch_equal(clean.visibility, leaked.visibility)


def test_a_leaking_study_says_it_runs_in_one_process(bundled_path, tmp_path, capfd):
    study = compat_study(bundled_path, prompts=PROMPTS[:1], modes=["isolated"],
                         emulate_mask_leak=True, max_steps=2)
    study.run(tmp_path / "one", workers=2, progress=False)
    assert "one process (workers = 1)" in capfd.readouterr().err


def test_a_resumed_chain_rebuilds_the_leak_from_the_saved_runs(bundled_path, leak_results,
                                                               tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(leak_results, copy)
    before = _chain(copy, "isolated")
    victim = copy / "runs" / before[2].options["run_id"]
    shutil.rmtree(victim)
    compat_study(bundled_path, emulate_mask_leak=True).run(copy, progress=False)
    again = _chain(copy, "isolated")[2]
    assert again.options["mask_leak"] == 2
    assert torch_equal(again.visibility, before[2].visibility)
    assert [[m.token_id for m in s.members] for s in again.tree.steps] == \
        [[m.token_id for m in s.members] for s in before[2].tree.steps]


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
