"""Runs on disk (DESIGN.md §7): a directory with run.json (everything but tensors) and
capture.safetensors (per-pass capture tensors), written atomically (write, then rename)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from .run import PassRecord, Run, tree_from_dict, tree_to_dict

SCHEMA_VERSION = 1
RUN_JSON = "run.json"
CAPTURE_FILE = "capture.safetensors"


def _versions() -> dict:
    from . import __version__

    return {"attnvar": __version__, "torch": torch.__version__}


def run_to_dict(run: Run) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": run.kind,
        "encoding": run.encoding,
        "versions": _versions(),
        "model": run.model,
        "options": run.options,
        "stop_reason": run.stop_reason,
        "timings": run.timings,
        "summary": run.summary(),
        "bracketed": run.bracketed,
        "tree": tree_to_dict(run.tree),
        "slots": run.slot_records,
        "pieces": {str(k): v for k, v in run.pieces.items()},
        "capture": {
            "layers": run.capture_layers,
            "heads": run.capture_heads,
            "passes": [
                {"step": p.step, "first_slot": p.first_slot, "num_queries": p.num_queries}
                for p in run.passes
            ],
        },
    }


def save_run(run: Run, path: str | os.PathLike) -> None:
    """Write `run` to directory `path`. A reader never sees a half-written run: the files
    go to a temporary sibling directory that is renamed into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors = {}
        for i, p in enumerate(run.passes):
            for name in ("attention", "scores", "value_norms"):
                for l, t in enumerate(getattr(p, name)):
                    tensors[f"pass{i:05d}.layer{l:03d}.{name}"] = t.contiguous()
        if run.distributions is not None:
            tensors["distributions"] = run.distributions.contiguous()
        if run.visibility is not None:
            tensors["visibility"] = run.visibility.contiguous()
        if tensors:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp / CAPTURE_FILE))
        with open(tmp / RUN_JSON, "w") as f:
            json.dump(run_to_dict(run), f)
            f.flush()
            os.fsync(f.fileno())
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _migrate(d: dict, path: Path) -> dict:
    version = d.get("schema_version")
    if version == SCHEMA_VERSION:
        return d
    if version == 0:
        # Schema 0 (pre-release) had no "encoding" and called the slot table "slot_table".
        d = dict(d)
        d["slots"] = d.pop("slot_table")
        d.setdefault("encoding", "shared_isolated")
        d["schema_version"] = SCHEMA_VERSION
        return d
    raise ValueError(
        f"{path}: run schema version {version!r} is not readable by this attnvar "
        f"(reads {SCHEMA_VERSION} and migrates 0); upgrade attnvar to read it"
    )


def load_run(path: str | os.PathLike) -> Run:
    """Read a run written by :meth:`Run.save`."""
    root = Path(path)
    meta_path = root / RUN_JSON
    if not meta_path.exists():
        raise FileNotFoundError(f"{root}: not a saved run (no {RUN_JSON})")
    try:
        d = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: corrupt run file: {e}") from e
    d = _migrate(d, meta_path)
    tensors = {}
    if (root / CAPTURE_FILE).exists():
        from safetensors.torch import load_file

        tensors = load_file(str(root / CAPTURE_FILE))
    passes = []
    for i, p in enumerate(d["capture"]["passes"]):
        rec = PassRecord(p["step"], p["first_slot"], p["num_queries"])
        for name in ("attention", "scores", "value_norms"):
            l = 0
            while f"pass{i:05d}.layer{l:03d}.{name}" in tensors:
                getattr(rec, name).append(tensors[f"pass{i:05d}.layer{l:03d}.{name}"])
                l += 1
        passes.append(rec)
    return Run(
        kind=d["kind"],
        encoding=d["encoding"],
        tree=tree_from_dict(d["tree"]),
        slot_records=d["slots"],
        passes=passes,
        options=d["options"],
        model=d["model"],
        pieces={int(k): v for k, v in d["pieces"].items()},
        capture_layers=d["capture"]["layers"],
        capture_heads=d["capture"]["heads"],
        stop_reason=d.get("stop_reason", ""),
        timings=d.get("timings", {}),
        distributions=tensors.get("distributions"),
        visibility=tensors.get("visibility"),
    )
