"""Runs on disk. A run is a directory:

    run.json                      everything but tensors (schema version, kind, encoding,
                                  versions, model identity, options, tree, slots, summary)
    capture/pass_00000.safetensors  one file per forward pass: layer{L}.{attention|scores|
                                  value_norms}
    extras.safetensors            next-step distributions and visibility, when present

It is written in a temporary sibling directory that is renamed into place, so a reader
never sees a half-written run; a run streamed during generation fills that staging
directory pass by pass."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._build_info import ATTNVAR_VERSION
from .._core import FormatError, MissingError
from ..util.atomic import fsync_dir, fsync_file, new_staging_dir, publish_dir, write_atomic
from .records import PassRecord, load_tensors, tree_from_dict, tree_to_dict
from .tensor_file import write_tensor_file

if TYPE_CHECKING:
    from .run import Run

SCHEMA_VERSION = 1
RUN_JSON = "run.json"
CAPTURE_DIR = "capture"
EXTRAS_FILE = "extras.safetensors"


def _versions() -> dict:
    return {"attnvar": ATTNVAR_VERSION, "torch": torch.__version__}


def pass_file(root: Path, index: int) -> Path:
    return root / CAPTURE_DIR / f"pass_{index:05d}.safetensors"


def new_staging(target: str | os.PathLike) -> Path:
    """A fresh temporary directory beside ``target`` for a run being written."""
    staging = new_staging_dir(target)
    (staging / CAPTURE_DIR).mkdir()
    return staging


class PassStream:
    """A generate() sink that writes each pass's capture to the staging directory as it
    is computed and keeps only file-backed records in memory."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.records: list[PassRecord] = []

    def __call__(self, core_pass) -> None:
        rec = PassRecord.from_core(core_pass)
        path = pass_file(self.staging, len(self.records))
        sha = rec.write(path, in_staging=True)
        self.records.append(PassRecord(rec.step, rec.first_slot, rec.num_queries, source=path,
                                       sha256=sha))


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
            **({"hooks": run.capture_hooks} if run.capture_hooks else {}),
            "passes": [
                {"step": p.step, "first_slot": p.first_slot, "num_queries": p.num_queries}
                for p in run.passes
            ],
            **({"removed": run.capture_removed} if run.capture_removed else {}),
        },
    }


def save_run(run: Run, path: str | os.PathLike, staging: Path | None = None) -> None:
    """Write ``run`` to directory ``path`` (replacing any run there) atomically.

    ``staging``: a directory from :func:`new_staging` that already holds streamed pass
    files for this run.
    """
    target = Path(path)
    staging = staging or new_staging(target)
    try:
        hashes = []
        for i, p in enumerate(run.passes):
            dest = pass_file(staging, i)
            if p.source is not None and Path(p.source) == dest:  # streamed here
                hashes.append(p.sha256 or file_sha256(dest))
            elif p.source is not None and Path(p.source).exists():
                shutil.copyfile(p.source, dest)
                fsync_file(dest)
                hashes.append(file_sha256(dest))
            else:
                hashes.append(p.write(dest, in_staging=True))
        extras = {}
        if run.distributions is not None:
            extras["distributions"] = run.distributions.contiguous()
        if run.visibility is not None:
            extras["visibility"] = run.visibility.contiguous()
        meta = run_to_dict(run)
        for entry, sha in zip(meta["capture"]["passes"], hashes, strict=True):
            entry["sha256"] = sha
        if extras:
            meta["extras_sha256"] = write_tensor_file(staging / EXTRAS_FILE, extras,
                                                      in_staging=True)
        fsync_dir(staging / CAPTURE_DIR)  # the files written in place above
        write_atomic(staging / RUN_JSON, json.dumps(meta))
        publish_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for i, p in enumerate(run.passes):  # records backed by staging files now live here
        if p.source is not None and Path(p.source).parent.parent == staging:
            p.source = pass_file(target, i)


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
    raise FormatError(
        f"{path}: run schema version {version!r} is not readable by this attnvar "
        f"(reads {SCHEMA_VERSION} and migrates 0); upgrade attnvar to read it"
    )


def read_run(path: str | os.PathLike, verify: bool | None = None) -> dict[str, Any]:
    """The constructor arguments of the run saved in directory ``path`` (``Run.load``
    builds the run); capture tensors load lazily, per pass. A run directory without
    run.json raises MissingError; a run.json that is not UTF-8 JSON, lacks a field or
    holds one of the wrong type raises FormatError naming the file and the field.

    ``verify`` (default :func:`verify_default`): check each tensor file against the
    SHA-256 run.json records for it when the file is read, raising FormatError on a
    mismatch. Runs saved before checksums were recorded load unverified."""
    verify = verify_default() if verify is None else bool(verify)
    root = Path(path)
    meta_path = root / RUN_JSON
    if not meta_path.exists():
        raise MissingError(f"{root}: not a saved run (no {RUN_JSON})")
    try:
        d = json.loads(meta_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FormatError(f"{meta_path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{meta_path}: corrupt run file: {e}") from None
    if not isinstance(d, dict):
        raise FormatError(f"{meta_path}: a run file holds a JSON object, not "
                          f"{type(d).__name__}")
    try:
        return _run_arguments(_migrate(d, meta_path), root, verify)
    except FormatError:
        raise
    except KeyError as e:
        raise FormatError(f"{meta_path}: field {e.args[0]!r} is missing") from None
    except (TypeError, ValueError, AttributeError, IndexError) as e:
        raise FormatError(f"{meta_path}: a field has the wrong type or value ({e})") from None


def _run_arguments(d: dict, root: Path, verify: bool) -> dict[str, Any]:
    passes = []
    for i, p in enumerate(d["capture"]["passes"]):
        source = pass_file(root, i)
        if not source.exists():
            raise FormatError(f"{root}: capture file {source.name} is missing")
        passes.append(PassRecord(int(p["step"]), int(p["first_slot"]), int(p["num_queries"]),
                                 source=source,
                                 sha256=str(p["sha256"]) if verify and "sha256" in p else None))
    extras = {}
    if (root / EXTRAS_FILE).exists():
        extras = load_tensors(root / EXTRAS_FILE,
                              sha256=d.get("extras_sha256") if verify else None)
    elif "extras_sha256" in d:
        raise FormatError(f"{root}: {EXTRAS_FILE} is missing (run.json records its checksum)")
    return dict(
        kind=str(d["kind"]),
        encoding=str(d["encoding"]),
        tree=tree_from_dict(d["tree"]),
        slot_records=list(d["slots"]),
        passes=passes,
        options=dict(d["options"]),
        model=dict(d["model"]),
        pieces={int(k): v for k, v in d["pieces"].items()},
        capture_layers=d["capture"]["layers"],
        capture_heads=d["capture"]["heads"],
        capture_hooks=[str(n) for n in d["capture"].get("hooks", [])],
        stop_reason=d.get("stop_reason", ""),
        timings=d.get("timings", {}),
        distributions=extras.get("distributions"),
        visibility=extras.get("visibility"),
        capture_removed=str(d["capture"].get("removed", "")),
    )


VERIFY_ENV = "ATTNVAR_VERIFY_CHECKSUMS"


def verify_default() -> bool:
    """Whether loaded runs check their tensor files' checksums: yes, unless the
    environment sets ``ATTNVAR_VERIFY_CHECKSUMS=0`` (for speed; hashing costs about
    1 ms per MB read)."""
    return os.environ.get(VERIFY_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_capture(path: str | os.PathLike, reason: str) -> int:
    """Delete the capture files of the run saved in ``path``, keeping everything else
    (tree, slots, options, summary, distributions); ``reason`` is recorded in run.json and
    given by any later attempt to read the capture. run.json is rewritten first, so a
    crash between the two steps leaves unreferenced files, never a run that names missing
    ones. Returns the bytes freed."""
    root = Path(path)
    meta_path = root / RUN_JSON
    d = json.loads(meta_path.read_text())
    d["capture"]["passes"] = []
    d["capture"]["removed"] = reason
    write_atomic(meta_path, json.dumps(d))
    freed = 0
    capture_dir = root / CAPTURE_DIR
    if capture_dir.exists():
        freed = sum(f.stat().st_size for f in capture_dir.iterdir() if f.is_file())
        shutil.rmtree(capture_dir)
    return freed
