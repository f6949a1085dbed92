"""A/B of the report phase of a study: ``attnvar hypotheses RESULTS --workers W`` (what
``attnvar study`` runs once its runs are done: the analysis tables gathered from the
per-cell files, every hypothesis table, the figures, report.md and report.html), timed
for each build on its own copy of the same results directory. Builds alternate round by
round so both see the same machine load; the load average is printed with each time,
with the CPU time of the command and its worker processes (what parallelism cannot
shorten) and the resident size of the largest of them.

    python bench/report_phase.py RESULTS build/base/pkg build/dev/pkg [--rounds 2]
        [--workers 2] [--keep DIR]

Each copy holds everything of RESULTS but runs/, which it links (the phase reads runs,
never writes them). After the rounds, every build's report and tables are compared with
the first build's, file by file: the output says which files differ, if any (a build
that changes no number writes the same bytes). ``--keep DIR`` keeps the copies there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness_util import load_average  # noqa: E402

COMPARED = ("tables", "report")  # what the phase writes, compared across builds


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in load_average())


def copy_results(src: Path, dst: Path) -> None:
    """``src`` into ``dst`` without copying its runs (linked: they are only read)."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name == "runs":
            (dst / "runs").symlink_to(item.resolve(), target_is_directory=True)
        elif item.is_dir():
            shutil.copytree(item, dst / item.name, symlinks=True)
        else:
            shutil.copy2(item, dst / item.name)


def run_phase(build: str, results: Path, workers: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of the command and its worker processes, the largest
    resident size among them in GB)."""
    env = dict(os.environ, PYTHONPATH=build)
    cmd = [sys.executable, "-m", "attnvar", "hypotheses", str(results), "--workers",
           str(workers), "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # the usage of the command and its workers
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20  # KiB on Linux


def differing(a: Path, b: Path) -> list[str]:
    """Files under COMPARED that differ between two results directories (or exist in
    one only)."""
    out = []
    for part in COMPARED:
        files = {p.relative_to(a) for p in (a / part).rglob("*") if p.is_file()}
        files |= {p.relative_to(b) for p in (b / part).rglob("*") if p.is_file()}
        for rel in sorted(files):
            if not ((a / rel).is_file() and (b / rel).is_file()
                    and (a / rel).read_bytes() == (b / rel).read_bytes()):
                out.append(str(rel))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a complete study results directory")
    ap.add_argument("builds", nargs="+", help="PYTHONPATH of each build (a dev pkg dir)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="keep the copies in this directory")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="report_phase_", dir=a.keep))
    times: dict[str, list[float]] = {b: [] for b in a.builds}
    last: dict[str, Path] = {}
    try:
        for r in range(a.rounds):
            for i, build in (enumerate(a.builds) if r % 2 == 0
                             else reversed(list(enumerate(a.builds)))):
                # the same directory name for every copy: the report quotes it
                copy = root / f"round{r}_build{i}" / a.results.resolve().name
                copy_results(a.results, copy)
                before = _load()
                t, cpu, rss = run_phase(build, copy, a.workers)
                times[build].append(t)
                print(f"round {r} {build}: {t:.1f} s, CPU {cpu:.1f} s, largest process "
                      f"{rss:.2f} GB (load average before {before}, after {_load()})",
                      flush=True)
                if build in last and a.keep is None:
                    shutil.rmtree(last[build].parent)
                last[build] = copy
        for build in a.builds:
            best = min(times[build])
            print(f"{build}: best {best:.1f} s, all " + " ".join(f"{t:.1f}" for t in times[build]))
        first = a.builds[0]
        for build in a.builds[1:]:
            diff = differing(last[first], last[build])
            print(f"{build} vs {first}: " + ("the same bytes in " + ", ".join(COMPARED)
                                             if not diff else f"differ: {', '.join(diff)}"))
    finally:
        if a.keep is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"copies kept in {root}")


if __name__ == "__main__":
    main()
