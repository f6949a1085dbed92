"""The study runner and the CLI: resumable, atomic, content-addressed; clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import attnvar as av
from attnvar.study import Study

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["The cat sat on the", "The capital of France is", "I went to the",
           "Once upon a time"]
TIMING_COLUMNS = ["seconds"]


def small_study(bundled_path, prompts=PROMPTS[:2], **kw):
    opts = dict(thresholds=[0.1], modes=["isolated"], replays=["serial"], max_steps=4,
                model_path=str(bundled_path))
    opts.update(kw)
    return Study(prompts=prompts, **opts)


def stable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=TIMING_COLUMNS).reset_index(drop=True)


def run_json_times(results: Path) -> dict[str, float]:
    """Completed runs: run.json in a run directory (staging directories start with '.')."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (results / "runs").glob("*/run.json")
            if not p.parent.name.startswith(".")}


def test_study_writes_runs_tables_and_summary_and_resumes_without_redoing(bundled_path, tmp_path):
    study = small_study(bundled_path)
    table = study.run(tmp_path, progress=False)
    assert len(table) == 4  # 2 generations + 2 serial replays
    assert set(table["kind"]) == {"generate", "replay"}
    assert (tmp_path / "tables" / "runs.parquet").exists()
    assert "attnvar study summary" in (tmp_path / "summary.md").read_text()
    before = run_json_times(tmp_path)
    again = study.run(tmp_path, progress=False)
    assert run_json_times(tmp_path) == before  # nothing recomputed
    pd.testing.assert_frame_equal(stable(again), stable(table))
    replay = table[table["kind"] == "replay"].iloc[0]
    assert replay["parent_id"] in set(table["run_id"]) and replay["encoding"] == "serial"


def test_sigkill_mid_study_then_rerun_loses_and_duplicates_nothing(bundled_path, tmp_path):
    interrupted, clean = tmp_path / "interrupted", tmp_path / "clean"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_study import small_study, PROMPTS\n"
        f"small_study({str(bundled_path)!r}, prompts=PROMPTS, max_steps=8)"
        f".run({str(interrupted)!r}, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline and len(run_json_times(interrupted)) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = run_json_times(interrupted)
    assert 2 <= len(done_before) < 8, "kill landed outside the study"
    study = small_study(bundled_path, prompts=PROMPTS, max_steps=8)
    resumed = study.run(interrupted, progress=False)
    after = run_json_times(interrupted)
    assert {k: after[k] for k in done_before} == done_before  # completed runs not redone
    assert len(after) == 8 and len(resumed) == 8
    assert not [p for p in (interrupted / "runs").iterdir() if p.name.startswith(".")]
    reference = study.run(clean, progress=False)
    pd.testing.assert_frame_equal(stable(resumed), stable(reference))
    for run_id in after:  # every run on disk loads completely
        av.load_run(interrupted / "runs" / run_id)


def test_worker_processes_give_the_same_tables(bundled_path, tmp_path):
    study = small_study(bundled_path, prompts=PROMPTS[:3])
    one = study.run(tmp_path / "one", progress=False)
    two = study.run(tmp_path / "two", workers=2, progress=False)
    pd.testing.assert_frame_equal(stable(one), stable(two))


def test_study_from_toml_and_bad_definitions(bundled_path, tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text(
        f'prompts = ["The cat sat on the"]\nthresholds = [0.2]\nmodes = ["visible"]\n'
        f'max_steps = 3\nmodel_path = "{bundled_path}"\n[capture]\nscores = true\n'
    )
    study = Study.from_file(cfg)
    assert study.modes == ["visible"] and study.capture.scores
    table = study.run(tmp_path / "r", progress=False)
    assert list(table["mode"]) == ["visible"]
    with pytest.raises(ValueError, match="thresholds"):
        Study(prompts=["x"], thresholds=[1.5])
    with pytest.raises(ValueError, match="modes"):
        Study(prompts=["x"], modes=["open"])
    with pytest.raises(ValueError, match="replays"):
        Study(prompts=["x"], replays=["sideways"])
    cfg.write_text("prompts = [\"x\"]\nbogus = 1\n")
    with pytest.raises(ValueError, match="bogus"):
        Study.from_file(cfg)
    with pytest.raises(FileNotFoundError):
        Study.from_file(tmp_path / "none.toml")


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "attnvar", *args], capture_output=True,
                          text=True, env=env or os.environ.copy(), timeout=600)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["generate", "Hi", "--threshold", "1.5"], "threshold"),
        (["generate", "Hi", "--mode", "open"], "mode"),
        (["generate", "Hi", "--max-steps", "-2"], "max_steps"),
        (["generate", "Hi", "--model", "/nonexistent/model.gguf"], "/nonexistent/model.gguf"),
        (["generate", ""], "tokenizes to nothing"),
        (["study", "--modes", "open"], "modes"),
        (["replay", "/nonexistent/run", "--encoding", "serial"], "/nonexistent/run"),
    ],
)
def test_cli_errors_are_one_line_and_exit_non_zero(args, needle):
    proc = cli(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("attnvar: error:") and needle in lines[0]


def test_cli_generate_prints_bracketed_text_and_help_works():
    proc = cli("generate", "The cat sat on the", "--max-steps", "6", "--threshold", "0.1")
    assert proc.returncode == 0 and proc.stdout.startswith("The cat sat on the")
    for sub in ("generate", "replay", "study", "hypotheses", "inspect"):
        assert cli(sub, "--help").returncode == 0


def test_readme_main_job_command_with_a_tiny_grid(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "main.sh"), "--out", str(out), "--max-prompts", "2",
         "--max-steps", "3", "--no-progress"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "attnvar study summary" in proc.stdout
    table = pd.read_parquet(out / "tables" / "runs.parquet")
    # 2 prompts × θ (0.1, 0.2) × (isolated, visible) generations, each replayed as serial
    # and top_only.
    assert len(table) == 24 and (out / "summary.md").exists()
    # ... then the analysis and the report (too few prompts for tests: it says so).
    assert (out / "preregistration.json").exists() and (out / "tables" / "metrics.parquet").exists()
    assert (out / "report" / "report.html").stat().st_size > 0
    assert "Primary effect" in proc.stdout and "report:" in proc.stdout
    assert cli("inspect", str(out / "runs" / table["run_id"].iloc[0])).returncode == 0


def test_cli_study_keeps_the_files_device_unless_device_is_given(bundled_path, tmp_path, capsys):
    from attnvar.cli import main

    cfg = tmp_path / "study.toml"
    cfg.write_text(f'prompts = ["The cat sat on the"]\nmax_steps = 2\ndevice = "tpu"\n'
                   f'model_path = "{bundled_path}"\n')
    assert Study.from_file(cfg).device == "tpu"
    # The file's device reaches the model load, which names it.
    assert main(["study", "--config", str(cfg), "--out", str(tmp_path / "a"), "--no-report",
                 "--no-progress"]) == 2
    assert "'tpu'" in capsys.readouterr().err
    # --device overrides it.
    assert main(["study", "--config", str(cfg), "--out", str(tmp_path / "b"), "--no-report",
                 "--no-progress", "--device", "cpu"]) == 0
    assert (tmp_path / "b" / "tables" / "runs.parquet").exists()


# ---- interventions as a grid axis -------------------------------------------------------------


def test_interventions_axis_runs_each_condition_under_its_own_keys(bundled_path, tmp_path):
    ablate = av.ZeroAblate("blocks.20.attn.hook_z", heads=[0, 1, 2])
    steer = {"kind": "steer", "hook": "blocks.10.hook_resid_pre", "vector": [0.5] * 576,
             "scale": 2.0}
    bias = {"kind": "key_bias", "layer_begin": 0, "layer_end": 4, "key_slots": [1],
            "delta": -1.0}
    study = small_study(bundled_path, prompts=PROMPTS[:1],
                        interventions=[[], [ablate], [steer, bias]])
    plain = small_study(bundled_path, prompts=PROMPTS[:1])
    # The [] condition is the study without interventions: same cell keys, same study.json.
    sha = "0" * 64
    assert study.cells()[0].key(sha) == plain.cells()[0].key(sha)
    assert len({c.key(sha) for c in study.cells()}) == 3
    assert "interventions" not in plain.describe()
    assert study.describe()["interventions"][1] == [
        {"kind": "zero_ablate", "hook": "blocks.20.attn.hook_z", "heads": [0, 1, 2],
         "slots": None}]
    table = study.run(tmp_path, progress=False)
    assert len(table) == 6 and table["interventions"].nunique() == 3
    assert (table["interventions"] == "none").sum() == 2
    runs = {r.run_id: av.load_run(tmp_path / "runs" / r.run_id) for r in table.itertuples()}
    by_label = {}
    for r in table.itertuples():
        by_label.setdefault(r.interventions, {})[r.kind] = runs[r.run_id]
    assert "interventions" not in by_label["none"]["generate"].options
    kinds = {label: [d.get("kind", "key_bias") for d in
                     runs_["replay"].options.get("interventions", [])]
             for label, runs_ in by_label.items()}
    assert sorted(kinds.values()) == [[], ["steer", "key_bias"], ["zero_ablate"]]
    # Generations get the hook edits only; the key bias acts in the replays.
    gen_kinds = sorted([d["kind"] for d in runs_["generate"].options.get("interventions", [])]
                       for runs_ in by_label.values())
    assert gen_kinds == [[], ["steer"], ["zero_ablate"]]
    # The plain condition's run is the one a study without the axis makes.
    alone = plain.run(tmp_path / "plain", progress=False)
    assert (alone[alone["kind"] == "generate"]["bracketed"].iloc[0]
            == table[(table["kind"] == "generate") & (table["interventions"] == "none")]
            ["bracketed"].iloc[0])
    from attnvar.analysis import analyze_study

    with pytest.raises(ValueError, match="3 intervention conditions"):
        analyze_study(tmp_path, progress=False)


def test_interventions_axis_is_validated(bundled_path, tmp_path):
    source = av.Run  # any object that is not an intervention
    for axis, match in [
        ("zero", "must be a list of conditions"),
        ([{"kind": "zero_ablate", "hook": "blocks.0.hook_resid_pre"}], "must be a list of "
                                                                      "interventions"),
        ([[{"kind": "scale", "hook": "x"}]], r"interventions\[0\]\[0\]\.kind"),
        ([[{"kind": "zero_ablate", "hook": "blocks.0.hook_resid_pre", "head": 1}]],
         "unknown keys"),
        ([[{"kind": "zero_ablate"}]], "hook"),
        ([[av.Patch("blocks.0.hook_resid_pre", torch_zeros())]], "can be written as data"),
        ([[], []], "appears twice"),
        ([[source]], "can be written as data"),
    ]:
        with pytest.raises(ValueError, match=match):
            small_study(bundled_path, interventions=axis)
    with pytest.raises(ValueError, match="compat preset"):
        Study(prompts=PROMPTS[:1], preset="tempo-2025",
              interventions=[[av.ZeroAblate("blocks.0.hook_resid_pre")]])
    toml = tmp_path / "s.toml"
    toml.write_text(f'prompts = ["The cat sat on the"]\nmax_steps = 2\n'
                    f'model_path = "{bundled_path}"\n'
                    'interventions = [[], [{kind = "zero_ablate", '
                    'hook = "blocks.3.attn.hook_z", heads = [1]}]]\n')
    s = Study.from_file(toml)
    assert len(s.cells()) == 2 and s.interventions[1][0]["heads"] == [1]


def torch_zeros():
    import torch

    return torch.zeros(3, 576)
