"""The Ray executor (docs/ray.md) on a real Ray cluster of this machine, started here the
way a user starts one (``ray start --head``, then ``ray start --address`` for a second
node): the same runs and tables as a local study; a worker SIGKILLed mid-study, or the
driver, and the study still completes with nothing partial or duplicated; Ray missing
is one clear line, and the local executor never imports it.

The model is a tiny random Llama with a small byte-level BPE tokenizer, saved as an HF
directory every node (here: every process) reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the Ray executor's tests need ray: pip install "
                                        "'attnvar[ray]'")

import attnvar  # noqa: E402
from attnvar.study import Study  # noqa: E402
from attnvar.study.runner import RayUnavailableError  # noqa: E402
from attnvar.util.lock import DirectoryBusyError, directory_lock  # noqa: E402
from attnvar.util.proc import running, session_of  # noqa: E402

HERE = Path(__file__).resolve().parent
# Where this attnvar is imported from (build/dev/pkg, or site-packages), for the workers;
# not resolved: the dev package is a folder of links beside its built extension.
PKG = Path(os.path.abspath(attnvar.__file__)).parent.parent
PROMPTS = ["The cat sat on the", "the dog ran to", "and the park", "on the mat",
           "the cat and", "to the park the", "dog and cat", "mat on the"]
# Run fields that may differ between two runs of one cell: timings, and the capture's
# file hashes (a worker runs on one thread, a local study on two: last bits may differ).
VOLATILE = ("timings", "capture", "extras_sha256")


@pytest.fixture(scope="module", autouse=True)
def ray_without_tokens():
    """Every Ray process of these tests, the drivers included, without token
    authentication: Ray 2.60 turns it on for a cluster when ~/.ray/auth_token exists
    (which its ray.init() writes), yet a node joining with `ray start` does not send it
    (docs/ray.md, "Authentication"). A test cluster on the loopback needs none."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        yield


def ray_env() -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env["PYTHONPATH"] = os.pathsep.join([str(PKG), str(HERE)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_hf_dir

    return save_tiny_hf_dir(tmp_path_factory.mktemp("tiny_model"), seed=3)


def study(model_dir, **kw) -> Study:
    # θ 0.02 / 0.03: the random model's flat distributions give parallel sets of 2–7.
    opts = dict(thresholds=[0.02, 0.03], modes=["isolated", "visible"],
                replays=["serial", "top_only"], max_steps=8, model_path=str(model_dir),
                batch=2)
    opts.update(kw)
    return Study(prompts=PROMPTS, **opts)


def _kill_sessions(sessions: set[int]) -> None:
    """SIGKILL every process in these sessions (the Ray processes this test started)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and session_of(int(entry.name)) in sessions:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def cluster():
    """A two-node Ray cluster of one CPU each: `ray start --head`, then a second node
    joining it. Each `ray start` runs in a new session, so the processes it leaves
    (and the workers they start) are found and stopped by session afterwards."""
    temp = tempfile.mkdtemp(prefix="avray", dir="/tmp")  # short: Ray's socket paths
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    sessions = set()
    try:
        head = subprocess.Popen(
            ["ray", "start", "--head", "--port=0", "--include-dashboard=false",
             f"--temp-dir={temp}", *common],
            env=ray_env(), start_new_session=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        sessions.add(head.pid)
        out = head.communicate(timeout=120)[0]
        found = re.search(r"ray start --address='([^']+)'", out)
        assert head.returncode == 0 and found, out
        address = found.group(1)
        node = subprocess.Popen(["ray", "start", f"--address={address}", *common],
                                env=ray_env(), start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sessions.add(node.pid)
        out = node.communicate(timeout=120)[0]
        assert node.returncode == 0, out
        yield address
    finally:
        _kill_sessions(sessions)
        shutil.rmtree(temp, ignore_errors=True)


def stable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["seconds"]).reset_index(drop=True)


def run_files(results: Path) -> dict[str, dict]:
    """Every run directory: its files, and its run.json less the volatile fields."""
    out = {}
    for d in sorted((results / "runs").iterdir()):
        meta = json.loads((d / "run.json").read_text())
        meta["summary"].pop("seconds")
        out[d.name] = {"files": sorted(p.relative_to(d).as_posix() for p in d.rglob("*")),
                       **{k: v for k, v in meta.items() if k not in VOLATILE}}
    return out


def assert_complete(results: Path, reference: Path, table: pd.DataFrame) -> None:
    """The same runs as the reference, each once and complete, nothing staged left."""
    assert not [p.name for p in (results / "runs").iterdir() if p.name.startswith(".")]
    assert table["run_id"].is_unique and len(table) == 96  # 32 cells × (1 + 2 replays)
    assert run_files(results) == run_files(reference)
    pd.testing.assert_frame_equal(
        pd.read_parquet(results / "tables" / "runs.parquet").drop(columns=["seconds"]),
        pd.read_parquet(reference / "tables" / "runs.parquet").drop(columns=["seconds"]))
    for run_id in table["run_id"]:
        attnvar.load_run(results / "runs" / run_id)  # loads completely (hashes checked)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The study run by the local executor: what every Ray run must equal."""
    out = tmp_path_factory.mktemp("local")
    return out, study(tiny_model_dir).run(out, progress=False)


def _ray_processes(title: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(title):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_a_study_on_the_cluster_gives_the_local_runs_and_tables(cluster, tiny_model_dir,
                                                                 reference, tmp_path, capsys):
    ref_dir, ref_table = reference
    table = study(tiny_model_dir).run(tmp_path, workers=2, executor="ray", address=cluster)
    pd.testing.assert_frame_equal(stable(table), stable(ref_table))
    assert_complete(tmp_path, ref_dir, table)
    assert (tmp_path / "summary.md").read_text().replace(str(tmp_path), "R") == \
        (ref_dir / "summary.md").read_text().replace(str(ref_dir), "R")
    # One bar, its counts per node: both nodes took cells (one 1-CPU actor each).
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    final = [line for line in bar if "32/32" in line][-1]
    counts = re.findall(r"\d+\.\d+\.\d+\.\d+:[0-9a-f]{6}=(\d+)", final)
    assert len(counts) == 2 and sum(map(int, counts)) == 32, final
    # Rerun: nothing to do, nothing rewritten; the study's lock holds for Ray too.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/run.json")}
    again = study(tiny_model_dir).run(tmp_path, workers=2, executor="ray", address=cluster,
                                      progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/run.json")} == before
    pd.testing.assert_frame_equal(stable(again), stable(table))
    with directory_lock(tmp_path), pytest.raises(DirectoryBusyError, match="another attnvar"):
        study(tiny_model_dir).run(tmp_path, workers=2, executor="ray", address=cluster)


def test_a_worker_killed_mid_study_is_replaced_and_its_cells_retried(cluster, tiny_model_dir,
                                                                     reference, tmp_path,
                                                                     capfd):
    ref_dir, _ = reference
    killed = []

    def kill_a_worker_once_runs_arrive():
        deadline = time.time() + 120
        while time.time() < deadline:
            runs = tmp_path / "runs"
            if runs.exists() and any(not p.name.startswith(".") for p in runs.iterdir()):
                workers = _ray_processes(b"ray::CellWorker")
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
                    killed.append(workers[0])
                    return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_worker_once_runs_arrive)
    killer.start()
    table = study(tiny_model_dir).run(tmp_path, workers=2, executor="ray", address=cluster,
                                      progress=False)
    killer.join()
    assert killed, "no worker was killed"
    # The kill landed while the worker held cells: they went back in the queue.
    assert "a Ray worker died with" in capfd.readouterr().err
    assert_complete(tmp_path, ref_dir, table)


DRIVER = """
import sys
from test_ray_executor import study
study(sys.argv[1]).run(sys.argv[2], workers=2, executor="ray", progress=False)
"""


def test_the_driver_killed_mid_study_then_rerun_completes_and_stops_its_ray(
        tiny_model_dir, reference, tmp_path, capfd):
    """The driver starts its own local Ray instance (no address) and is SIGKILLed once
    runs arrive; the rerun stops what Ray left of that instance and completes."""
    ref_dir, _ = reference
    out = tmp_path / "results"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tiny_model_dir), str(out)],
                              env=ray_env())
    deadline = time.time() + 180
    while time.time() < deadline and driver.poll() is None:
        runs = out / "runs"
        if runs.exists() and sum(not p.name.startswith(".") for p in runs.iterdir()) >= 4:
            break
        time.sleep(0.005)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done = sum(1 for _ in (out / "runs").glob("*/run.json"))
    assert 4 <= done < 96, f"the kill landed outside the study ({done} runs)"
    state = json.loads((out / ".attnvar-ray.json").read_text())
    assert state["processes"], state
    time.sleep(1)  # what Ray's own reaper stops, it stops now
    table = study(tiny_model_dir).run(out, workers=2, executor="ray", progress=False)
    assert_complete(out, ref_dir, table)
    assert not (out / ".attnvar-ray.json").exists()
    left = [pid for pid, _ in state["processes"] if running(pid)]
    assert not left, f"processes of the killed driver's Ray instance still run: {left}"
    capfd.readouterr()


def test_without_ray_the_ray_executor_is_one_clear_line(monkeypatch, tmp_path,
                                                        tiny_model_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if absent
    monkeypatch.delitem(sys.modules, "attnvar.study.ray_executor", raising=False)
    with pytest.raises(RayUnavailableError, match=r"pip install 'attnvar\[ray\]'") as e:
        study(tiny_model_dir).run(tmp_path / "r", executor="ray")
    assert isinstance(e.value, ImportError) and isinstance(e.value, ValueError)
    assert not (tmp_path / "r").exists()  # refused before anything is written
    code = ("import sys; sys.modules['ray'] = None\nfrom attnvar.cli import main\n"
            f"sys.exit(main(['study', '--executor', 'ray', '--out', {str(tmp_path / 'c')!r},"
            f" '--model', {str(tiny_model_dir)!r}, '--no-progress']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=ray_env(), timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == ("attnvar: error: the Ray executor needs Ray, which is not installed: "
                        "pip install 'attnvar[ray]'")


def test_the_local_executor_never_imports_ray(tiny_model_dir, tmp_path):
    # (Not through this module, which imports Ray for its own tests.)
    code = ("import sys\nfrom attnvar.study import Study\n"
            f"Study(prompts={PROMPTS[:2]!r}, max_steps=2, model_path=sys.argv[1])"
            ".run(sys.argv[2], workers=2, progress=False)\n"
            "print('ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir), str(tmp_path)],
                          capture_output=True, text=True, env=ray_env(), timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]


def test_ray_options_are_checked(tiny_model_dir, tmp_path, cluster):
    with pytest.raises(ValueError, match="only.*executor|options of the Ray executor"):
        study(tiny_model_dir).run(tmp_path, address=cluster)
    with pytest.raises(ValueError, match="threads must be"):
        study(tiny_model_dir).run(tmp_path, executor="ray", threads=0)
    with pytest.raises(ValueError, match="executor: 'dask'"):
        study(tiny_model_dir).run(tmp_path, executor="dask")
    # Two 1-CPU nodes cannot hold three workers of one CPU, nor one of two.
    with pytest.raises(ValueError, match="room for 2 workers of 1 CPU each, not 3"):
        study(tiny_model_dir).run(tmp_path / "a", workers=3, executor="ray", address=cluster,
                                  progress=False)
    with pytest.raises(ValueError, match="room for 0 workers of 2 CPUs"):
        study(tiny_model_dir).run(tmp_path / "b", executor="ray", address=cluster, threads=2,
                                  progress=False)
