"""The ``attnvar`` command line: generate, replay, study (the main job: runs, analysis and
the hypothesis report), hypotheses (analysis and report of existing results), inspect."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from ._core import ConfigError, MissingError
from .analysis import CellAnalysis, analyze_study
from .engine import Capture, load_model, load_run
from .report import write_report
from .report.claims import write_findings
from .report.plots import export_run_view
from .study import Study, format_summary, prompts
from .study.store import STUDY_FILE


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def _id_list_or_none(text: str) -> list[int]:
    return [] if text.strip().lower() == "none" else _ints(text)


def _words(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


# What --fields may name: the Capture flags of the attention capture.
CAPTURE_FIELDS = ("probabilities", "scores", "value_norms")


def _indices_or_all(text: str) -> str | list[int]:
    return "all" if text.strip().lower() == "all" else _ints(text)


def _fields(text: str) -> list[str]:
    names = _words(text)
    bad = [n for n in names if n not in CAPTURE_FIELDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated fields out of {', '.join(CAPTURE_FIELDS)}, got {text!r}")
    return names


def _capture_flags(parser: argparse.ArgumentParser) -> None:
    """--layers, --heads, --fields: what --save captures."""
    parser.add_argument("--layers", type=_indices_or_all, default="all",
                        help="with --save: layers to capture, comma-separated indices or "
                             "'all' (default all)")
    parser.add_argument("--heads", type=_indices_or_all, default="all",
                        help="with --save: query heads to capture, comma-separated indices "
                             "or 'all' (default all)")
    parser.add_argument("--fields", type=_fields, default=["probabilities", "scores"],
                        help="with --save: what to capture, comma-separated out of "
                             f"{', '.join(CAPTURE_FIELDS)} (default probabilities,scores)")


def _capture_spec(a) -> Capture | None:
    """The Capture of --save and its --layers/--heads/--fields (None without --save)."""
    if not a.save:
        chosen = [flag for flag, used in (("--layers", a.layers != "all"),
                                          ("--heads", a.heads != "all"),
                                          ("--fields", a.fields != ["probabilities", "scores"]))
                  if used]
        if chosen:
            raise ValueError(f"{', '.join(chosen)}: only with --save (they choose what the "
                             "saved run captures)")
        return None
    return Capture(layers=a.layers, heads=a.heads,
                   **{name: name in a.fields for name in CAPTURE_FIELDS})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnvar",
        description="Parallel-token generation (shared RoPE positions) and attention capture.",
    )
    sub = p.add_subparsers(dest="command", required=True, help="what to do (attnvar COMMAND "
                                                                "--help for its options)")

    g = sub.add_parser("generate", help="generate with parallel sets and print the bracketed text")
    g.add_argument("prompt", help="the prompt text")
    g.add_argument("--model", help="GGUF file, HF directory or Hub id org/name in the local "
                                   "Hugging Face cache (default: the bundled SmolLM2)")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    g.add_argument("--weights", choices=["quantized", "float32"], default="quantized",
                   help="how a GGUF model's quantized weights are held: quantized (default: in "
                        "their blocks, a sixth of the memory) or float32 (decoded at load); "
                        "the results are the same bit for bit")
    g.add_argument("--threshold", type=float, default=0.1, help="θ in (0, 1] (default 0.1)")
    g.add_argument("--mode", default="isolated", help="isolated | visible | causal")
    g.add_argument("--policy", default="mixture", help="mixture | top | last | mean_logits")
    g.add_argument("--max-steps", type=int, default=30,
                   help="at most this many sets (default 30)")
    g.add_argument("--max-width", type=int, default=32,
                   help="at most this many members per set (default 32)")
    g.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature of each next-step distribution (default 1.0)")
    g.add_argument("--sample", action="store_true", help="a drawn token joins each set")
    g.add_argument("--seed", type=int, default=0, help="seed of --sample's draws (default 0)")
    g.add_argument("--beyond-context", action="store_true",
                   help="run even when the prompt plus --max-steps needs more positions "
                        "than the model's context (refused otherwise)")
    g.add_argument("--stop-on", default="any_eos", help="any_eos | top_eos")
    g.add_argument("--preset", choices=["tempo-2025"], help="run the compat preset instead")
    g.add_argument("--emulate-isolation-bug", action="store_true",
                   help="tempo-2025: the prototype's isolated mode (its misplaced mask)")
    g.add_argument("--bos", choices=["model", "on", "off"], default="model",
                   help="tempo-2025: BOS as the model's tokenizer has it, or as the "
                        "prototype's tokenizer says (on/off)")
    g.add_argument("--eos-ids", type=_id_list_or_none, default=None,
                   help="tempo-2025: comma-separated ids that stop the run ('none': never "
                        "stop on EOS); default the model's")
    g.add_argument("--save", help="save the run (with capture) to this directory")
    _capture_flags(g)

    r = sub.add_parser("replay", help="replay a saved run's tree under another encoding")
    r.add_argument("run", help="a saved run directory")
    r.add_argument("--encoding", default="serial",
                   help="shared_isolated | shared_visible | shared_causal | serial | "
                        "fractional | top_only")
    r.add_argument("--model", help="model file or directory (default: the run's own)")
    r.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    r.add_argument("--save", help="save the replay to this directory")
    _capture_flags(r)
    r.add_argument("--other-model", action="store_true",
                   help="replay a run made by another model than --model (refused otherwise)")

    s = sub.add_parser("study", help="run a study grid into a results directory (the main job)")
    s.add_argument("--out", default="results", help="results directory (default ./results)")
    s.add_argument("--suite", default="core-small",
                   help="core-small (default, fast) | core | tempo13 | a prompt file")
    s.add_argument("--config", help="a TOML/YAML study file (overrides the grid options)")
    s.add_argument("--thresholds", type=_floats, default=[0.1, 0.2],
                   help="θ values, comma-separated (default 0.1,0.2: a dose–response for H4)")
    s.add_argument("--modes", type=_words, default=["isolated", "visible"],
                   help="sibling visibility modes, comma-separated (default isolated,visible)")
    s.add_argument("--policies", type=_words, default=["mixture"],
                   help="next-step policies, comma-separated (default mixture)")
    s.add_argument("--replays", type=_words, default=None,
                   help="encodings each tree is replayed under (default serial,top_only; "
                        "none for --preset)")
    s.add_argument("--seeds", type=_ints, default=[0],
                   help="sampling seeds, comma-separated (default 0)")
    s.add_argument("--sample", action="store_true", help="a drawn token joins each set")
    s.add_argument("--max-steps", type=int, default=20,
                   help="at most this many sets per generation (default 20)")
    s.add_argument("--min-new-steps", type=int, default=None,
                   help="no run stops (EOS) before this many steps (default 4; 0 with "
                        "--preset, which refuses any other value)")
    s.add_argument("--max-prompts", type=int, default=None, help="use the first N prompts only")
    s.add_argument("--workers", type=int, default=1,
                   help="worker processes, or Ray actors with --executor ray (default 1)")
    s.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local (default): this machine; ray: Ray actors (pip install "
                        "'attnvar[ray]'; docs/ray.md)")
    s.add_argument("--address",
                   help="--executor ray: the cluster to join (e.g. auto, HOST:6379); "
                        "default: a Ray instance of this machine, started and stopped here")
    s.add_argument("--threads", type=int, default=None,
                   help="--executor ray: CPU threads per actor (default: the CPUs shared "
                        "by the workers)")
    s.add_argument("--batch", type=int, default=None,
                   help="generations run together per worker (default: 8 per thread, fewer "
                        "if their captures could pass the memory budget; results do not "
                        "depend on it)")
    s.add_argument("--full", action="store_true",
                   help="the full grid: core suite, θ 0.05/0.1/0.15, all modes and policies, "
                        "all replays, 30 steps")
    s.add_argument("--model", help="GGUF file, HF directory or Hub id org/name in the local "
                                   "Hugging Face cache (default: the bundled SmolLM2)")
    s.add_argument("--device", help="cpu (default, or the study file's), cuda or cuda:N")
    s.add_argument("--weights", choices=["quantized", "float32"], default="quantized",
                   help="how a GGUF model's quantized weights are held: quantized (default: in "
                        "their blocks, a sixth of the memory) or float32 (decoded at load); "
                        "the results are the same bit for bit")
    s.add_argument("--preset", choices=["tempo-2025"],
                   help="run every cell with the compat preset (modes isolated/visible are "
                        "the prototype's)")
    s.add_argument("--bos", choices=["model", "on", "off"], default="model",
                   help="--preset: BOS as the prototype's tokenizer has it")
    s.add_argument("--eos-ids", type=_id_list_or_none, default=None,
                   help="--preset: ids that stop a run ('none': never)")
    s.add_argument("--emulate-mask-leak", action="store_true",
                   help="--preset: each condition's prompts in order in one process, with "
                        "the prototype's stale-mask leak (one worker)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--no-report", action="store_true",
                   help="stop after the runs (default: analyse them and write the report)")
    s.add_argument("--tables-only", action="store_true",
                   help="remove each cell's raw captures once it is analysed: the study "
                        "keeps its trees and analysis tables (a few %% of the bytes)")

    h = sub.add_parser("hypotheses",
                       help="analyse a study's results and write the H1–H4 report "
                            "(Markdown + HTML)")
    h.add_argument("results", help="a study results directory")
    h.add_argument("--out", help="report directory (default RESULTS/report)")
    h.add_argument("--workers", type=int, default=1,
                   help="processes for the per-run analysis and the report's analyses and "
                        "figures (default 1)")
    h.add_argument("--metric", help="override the preregistered metric (reported as a deviation)")
    h.add_argument("--variant", help="override the preregistered variant (a deviation)")
    h.add_argument("--no-exclusions", action="store_true",
                   help="do not apply the preregistered exclusion rule (a deviation)")
    h.add_argument("--no-predict", action="store_true", help="skip the predictability model")
    h.add_argument("--no-progress", action="store_true", help="no progress bars")

    f = sub.add_parser("findings", help="explain the prototype's published claims on a model: "
                                        "compat runs, the mechanism, the toy null → findings.md")
    f.add_argument("--out", default="findings", help="results directory (default ./findings)")
    f.add_argument("--model", help="GGUF file or HF directory (default: the bundled model)")
    f.add_argument("--small", action="store_true",
                   help="the same pipeline at a size that runs in a minute or two")
    f.add_argument("--page", help="also write the page here (e.g. docs/findings.md)")
    f.add_argument("--workers", type=int, default=1,
                   help="processes for the runs and their analysis (default 1)")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")

    i = sub.add_parser("inspect", help="describe a saved run (text, options, what was "
                                       "captured) or a model")
    i.add_argument("path", help="a saved run directory, a GGUF file, an HF model directory "
                                "or a Hub id org/name in the local Hugging Face cache")
    i.add_argument("--html", metavar="FILE", default=None,
                   help="a saved run: also write its views (summary, set view as text and "
                        "chart) as one standalone HTML page")
    return p


def _cmd_generate(a) -> int:
    capture = _capture_spec(a)
    model = load_model(a.model, device=a.device, weights=a.weights)
    compat_only = [flag for flag, used in (("--emulate-isolation-bug", a.emulate_isolation_bug),
                                           ("--bos", a.bos != "model"),
                                           ("--eos-ids", a.eos_ids is not None)) if used]
    if a.preset != "tempo-2025" and compat_only:
        raise ValueError(f"{', '.join(compat_only)}: only with --preset tempo-2025")
    if a.preset == "tempo-2025":
        run = model.tempo2025(a.prompt, threshold=a.threshold, max_steps=a.max_steps,
                              emulate_isolation_bug=a.emulate_isolation_bug, capture=capture,
                              add_bos={"model": None, "on": True, "off": False}[a.bos],
                              eos_ids=a.eos_ids)
    else:
        run = model.generate(a.prompt, threshold=a.threshold, max_steps=a.max_steps, mode=a.mode,
                             policy=a.policy, max_width=a.max_width, temperature=a.temperature,
                             sample=a.sample, seed=a.seed, stop_on=a.stop_on, capture=capture,
                             beyond_context=a.beyond_context)
    print(run.bracketed)
    if a.save:
        run.save(a.save)
        print(f"saved to {a.save}", file=sys.stderr)
    return 0


def _cmd_replay(a) -> int:
    capture = _capture_spec(a)
    src = load_run(a.run)
    model = load_model(a.model or src.model.get("path"), device=a.device)
    rep = model.replay(src, a.encoding, capture=capture, other_model=a.other_model)
    print(json.dumps({"encoding": rep.encoding, **rep.summary()}, indent=1))
    if a.save:
        rep.save(a.save)
    return 0


FULL_GRID = dict(thresholds=[0.05, 0.1, 0.15], modes=["isolated", "visible", "causal"],
                 policies=["mixture", "top", "last", "mean_logits"],
                 replays=["shared_isolated", "shared_visible", "serial", "fractional", "top_only"],
                 max_steps=30)


def _cmd_study(a) -> int:
    if a.config:
        flags = [f for f, used in (("--preset", a.preset), ("--bos", a.bos != "model"),
                                   ("--eos-ids", a.eos_ids is not None),
                                   ("--emulate-mask-leak", a.emulate_mask_leak)) if used]
        if flags:
            raise ValueError(f"{', '.join(flags)}: with --config, set these in the study "
                             "file (preset, add_bos, eos_ids, emulate_mask_leak)")
        study = Study.from_file(a.config)
        if a.device is not None:  # else the file's device, or cpu
            study.device = a.device
        study.weights = a.weights
    else:
        suite = "core" if a.full and a.suite == "core-small" else a.suite
        items = prompts.load_suite(suite) if Path(suite).exists() else prompts.suite(suite)
        if a.max_prompts is not None:
            if a.max_prompts < 1:
                raise ValueError(f"--max-prompts must be ≥ 1, got {a.max_prompts}")
            items = items[: a.max_prompts]
        replays = a.replays if a.replays is not None else (
            [] if a.preset else ["serial", "top_only"])
        grid = dict(thresholds=a.thresholds, modes=a.modes, policies=a.policies,
                    replays=replays, max_steps=a.max_steps)
        if a.full:
            grid.update(FULL_GRID)
        compat = dict(preset=a.preset, add_bos={"model": None, "on": True, "off": False}[a.bos],
                      eos_ids=a.eos_ids, emulate_mask_leak=a.emulate_mask_leak or False)
        study = Study(prompts=items, seeds=a.seeds, sample=a.sample, model_path=a.model,
                      device=a.device or "cpu", weights=a.weights,
                      min_new_steps=a.min_new_steps, **grid,
                      **compat)
    if a.batch is not None:
        if a.batch < 1:
            raise ValueError(f"--batch must be ≥ 1, got {a.batch}")
        study.batch = a.batch
    if a.tables_only and a.no_report:
        raise ValueError("--tables-only removes the captures once analysed; with "
                         "--no-report nothing would analyse them: drop one of the two")
    # The analysis runs as each group of cells is generated (CellAnalysis), in the
    # process that generated it; the report's analysis then only gathers the tables.
    after = None if a.no_report else CellAnalysis(keep_capture=not a.tables_only)
    if a.executor != "ray" and (a.address is not None or a.threads is not None):
        raise ValueError("--address and --threads: only with --executor ray")
    study.run(a.out, workers=a.workers, progress=not a.no_progress, after_cells=after,
              executor=a.executor, address=a.address, threads=a.threads)
    print(format_summary(Path(a.out)))
    if a.no_report:
        return 0
    return _report(Path(a.out), workers=a.workers, progress=not a.no_progress)


def _report(results: Path, workers: int = 1, progress: bool = True, out: str | None = None,
            predict: bool = True, **load_kwargs) -> int:
    analyze_study(results, workers=workers, progress=progress)
    path = write_report(results, out=out, predict=predict, workers=workers, **load_kwargs)
    print(_answers(path))
    print(f"report: {path} (and {path.with_suffix('.md').name})")
    return 0


def _answers(path: Path) -> str:
    """The report's answers (the "**Answer.**" paragraphs), one per section."""
    lines, section = [], ""
    for line in path.with_suffix(".md").read_text().splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line.startswith("**Answer.** "):
            lines.append(f"{section}: {line[len('**Answer.** '):]}")
    return "\n".join(lines)


def _cmd_hypotheses(a) -> int:
    results = Path(a.results)
    if not (results / STUDY_FILE).exists():
        raise MissingError(f"{results}: not a study results directory (no study.json)")
    kwargs = {}
    if a.metric:
        kwargs["metric"] = a.metric
    if a.variant:
        kwargs["variant"] = a.variant
    if a.no_exclusions:
        kwargs["apply_exclusions"] = False
    return _report(results, workers=a.workers, progress=not a.no_progress, out=a.out,
                   predict=not a.no_predict, **kwargs)


def _cmd_findings(a) -> int:
    path = write_findings(a.out, model_path=a.model, small=a.small, workers=a.workers,
                          progress=not a.no_progress, page=a.page)
    print(f"findings: {path}" + (f" (and {a.page})" if a.page else ""))
    return 0


def _cmd_inspect(a) -> int:
    path = Path(a.path)
    if path.is_dir() and (path / "run.json").exists():
        run = load_run(path)
        print(run.bracketed)
        print(json.dumps({"kind": run.kind, "encoding": run.encoding, "model": run.model,
                          "options": run.options, **run.summary(),
                          "capture": run.capture_summary()}, indent=1, default=str))
        if a.html:
            print(f"run view written to {export_run_view(run, a.html)}", file=sys.stderr)
        return 0
    if a.html:
        raise ConfigError(f"--html writes a saved run's views, and {path} is not a saved run "
                          "(no run.json)")
    if path.is_dir() and not (path / "config.json").exists():
        if (path / STUDY_FILE).exists():
            raise MissingError(f"{path} is a study results directory, not a run or a model: "
                               f"its runs are in {path / 'runs'}/ (inspect one of those), and "
                               f"`attnvar hypotheses {path}` analyses them")
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; it holds {', '.join(ggufs)}: inspect that file" if ggufs else ""
        raise MissingError(f"{path} is a directory but neither a saved run (no run.json) nor "
                           f"an HF model directory (no config.json){hint}")
    # A string, not a Path: a Hub id (org/name) resolves from the local cache.
    model = load_model(a.path)
    print(json.dumps(model.info(), indent=1))
    return 0


_USER_OS_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"generate": _cmd_generate, "replay": _cmd_replay, "study": _cmd_study,
                "hypotheses": _cmd_hypotheses, "findings": _cmd_findings,
                "inspect": _cmd_inspect}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"attnvar: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # Where the output cannot be written (disk full, read-only, no permission): one
        # line, like any user error; nothing half-written is left (files are written
        # atomically). Other OS errors keep their traceback.
        if e.errno not in _USER_OS_ERRORS:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"attnvar: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnvar: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
