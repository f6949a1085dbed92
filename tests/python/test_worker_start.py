"""Worker processes start safely whatever the parent did before (util.threads).

torch's OpenMP runtime does not survive a fork: a child forked from a process that has
used it hangs in its first parallel region of more than one thread. So workers that run
torch on several threads (a study's generation workers, the analysis pool, the positive
control) start from a forkserver, and forked pools (the report's analyses) keep torch on
one thread. The end-to-end test runs in a subprocess with a time limit: a hang fails it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from attnvar.util import threads

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch

    import attnvar
    from attnvar.analysis import CellAnalysis, analyze_study
    from attnvar.report import write_report
    from attnvar.study import Study


    def main():
        model_path, out = sys.argv[1], Path(sys.argv[2])
        torch.set_num_threads(4)  # 2 per worker: more than one, the case that used to hang
        # The parent uses torch's OpenMP pool before any worker starts.
        attnvar.load_model(model_path).generate("Hello", threshold=0.1, max_steps=2)
        study = Study(prompts=["The cat sat on the", "Once upon a time"], thresholds=[0.1],
                      modes=["isolated"], replays=["serial", "top_only"], max_steps=4,
                      model_path=model_path, batch=1)
        study.run(out, workers=2, progress=False, after_cells=CellAnalysis())
        tables = analyze_study(out, workers=2, progress=False)
        assert len(tables["positive_control"]) > 0
        write_report(out, workers=2)
        print("finished", len(tables["metrics"]))


    GUARD
""")


def _run(tmp_path, bundled_path, guarded: bool) -> subprocess.CompletedProcess:
    script = tmp_path / "study_script.py"
    guard = 'if __name__ == "__main__":\n    main()' if guarded else "main()"
    script.write_text(SCRIPT.replace("GUARD", guard))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, str(script), str(bundled_path),
                           str(tmp_path / "results")], capture_output=True, text=True,
                          timeout=420, env=env)


def test_start_context_forks_only_one_thread_workers():
    if not threads.can_fork():
        pytest.skip("this platform does not fork")
    assert threads.start_context(1).get_start_method() == "fork"
    assert threads.start_context(2).get_start_method() in ("forkserver", "spawn")


def test_study_analysis_and_report_with_threaded_workers_finish(tmp_path, bundled_path):
    try:
        done = _run(tmp_path, bundled_path, guarded=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the study hung (a worker forked with several OpenMP threads?): "
                    f"{(e.stderr or b'')[-2000:]!r}")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "finished" in done.stdout
    assert (tmp_path / "results" / "report" / "report.md").exists()


def test_unguarded_script_gets_a_clear_error(tmp_path, bundled_path):
    done = _run(tmp_path, bundled_path, guarded=False)
    assert done.returncode != 0
    assert "if __name__ == \"__main__\":" in done.stderr
    assert "run_study was called while a worker process was importing" in done.stderr
