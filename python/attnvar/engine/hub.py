"""Models from the local Hugging Face cache: ``load_model("org/name")`` finds the snapshot
that a Hub download left on this machine, without a network and without needing the
``huggingface_hub`` package.

The cache layout (as the Hub client writes it)::

    <cache>/models--org--name/refs/main              a file holding a commit hash
    <cache>/models--org--name/snapshots/<commit>/    config.json, tokenizer.json,
                                                     *.safetensors (or a .gguf)

``<cache>`` is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .._core import MissingError

# org/name as the Hub spells repository ids: one slash, letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def looks_like_hub_id(text: str) -> bool:
    """Whether ``text`` has the shape of a Hub model id (``org/name``): one slash, no
    leading dot or slash, no ``..``, no file suffix of a model file."""
    return (bool(_HUB_ID.fullmatch(text)) and ".." not in text
            and not text.lower().endswith((".gguf", ".json", ".safetensors")))


def hub_cache_dir() -> Path:
    """The directory the Hub client caches models in (see the module docstring)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base).expanduser() / "huggingface" / "hub"


def _snapshot_dir(repo: Path, model_id: str, revision: str, cache: Path) -> Path:
    """The snapshot a revision names: a branch or tag through ``refs/``, or a commit hash
    (or a prefix of one) directly."""
    snapshots = repo / "snapshots"
    ref = repo / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        path = snapshots / commit
        if path.is_dir():
            return path
        raise MissingError(
            f"{model_id}: the local Hugging Face cache ({cache}) names revision "
            f"{revision!r} as commit {commit}, but holds no snapshot {path}; download it "
            "again (e.g. `hf download " + model_id + "`)")
    if (snapshots / revision).is_dir():
        return snapshots / revision
    if re.fullmatch(r"[0-9a-f]{7,40}", revision) and snapshots.is_dir():
        found = sorted(p for p in snapshots.iterdir() if p.name.startswith(revision))
        if len(found) == 1:
            return found[0]
    have = sorted(p.name for p in (repo / "refs").glob("*")) if (repo / "refs").is_dir() else []
    held = sorted(p.name[:12] for p in snapshots.iterdir()) if snapshots.is_dir() else []
    raise MissingError(
        f"{model_id}: revision {revision!r} is not in the local Hugging Face cache "
        f"({repo}; refs: {', '.join(have) or 'none'}; snapshots: {', '.join(held) or 'none'})")


def _model_in(snapshot: Path, model_id: str) -> Path:
    """What load_model reads from a snapshot: the directory when it holds an HF model
    (config.json), else its one GGUF file."""
    if (snapshot / "config.json").is_file():
        if not any(snapshot.glob("*.safetensors")):
            raise MissingError(
                f"{model_id}: the cached snapshot {snapshot} has a config.json but no "
                "*.safetensors weights (a partial download?); download the weights")
        return snapshot
    ggufs = sorted(snapshot.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        raise MissingError(
            f"{model_id}: the cached snapshot {snapshot} holds {len(ggufs)} GGUF files "
            f"({', '.join(p.name for p in ggufs)}); pass the path of the one to load")
    raise MissingError(f"{model_id}: the cached snapshot {snapshot} holds neither an HF model "
                       "(config.json + *.safetensors) nor a .gguf file")


def resolve_hub_model(model_id: str, revision: str = "main") -> tuple[Path, str]:
    """(path for load_model, commit hash of the snapshot) of a model in the local Hugging
    Face cache. MissingError (a FileNotFoundError) naming the id and the cache searched
    when it is not there."""
    cache = hub_cache_dir()
    repo = cache / ("models--" + model_id.replace("/", "--"))
    if not repo.is_dir():
        raise MissingError(
            f"{model_id!r} is neither a file or directory nor a model in the local Hugging "
            f"Face cache (searched {repo}; the cache is $HF_HUB_CACHE, $HF_HOME/hub or "
            "~/.cache/huggingface/hub). Download it first (e.g. `hf download "
            f"{model_id}`), or pass a path")
    snapshot = _snapshot_dir(repo, model_id, revision, cache)
    return _model_in(snapshot, model_id), snapshot.name


__all__ = ["hub_cache_dir", "looks_like_hub_id", "resolve_hub_model"]
