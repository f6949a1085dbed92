"""Atomic file output: every writer in attnvar goes through here.

A file is written to a temporary sibling (``.<name>.tmp-<random>``), flushed and
fsync'd, then renamed over its final name; a directory is built in a temporary sibling
and renamed into place. A reader therefore sees the old content or the new content,
never a partial one, and a process killed mid-write leaves only temporary siblings,
whose names start with "." so that directory scans skip them, and which
:func:`remove_stale` deletes on the next run. Files inside a directory still being built
(``write_atomic(..., in_staging=True)``) are written under their own names instead: nobody
sees that directory before it is renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

TMP_MARK = ".tmp-"


def _sibling(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}{kind}{uuid.uuid4().hex[:8]}"


def temp_sibling(path: str | os.PathLike) -> Path:
    """A fresh, unused temporary name beside ``path`` (nothing is created)."""
    return _sibling(Path(path), TMP_MARK)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside directory ``path`` durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Make the content of the file ``path`` durable."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path for a writer that needs a file name (safetensors,
    parquet); on a clean exit the file is fsync'd and renamed to ``path``, on an error
    it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str | Sequence, *,
                 in_staging: bool = False) -> None:
    """Write ``data`` (str is UTF-8 encoded; a sequence of bytes-like buffers is written
    one after the other) to ``path`` atomically and durably.

    ``in_staging``: ``path`` lies in a directory from :func:`new_staging_dir` that nobody
    reads before :func:`publish_dir` renames it into place. The file is then written under
    its own name and fsync'd, without a temporary sibling, a rename or a directory fsync:
    the staging directory is unseen until published, a writer killed before leaves only
    the staging directory (which :func:`remove_stale` deletes), and the one who publishes
    fsyncs the directories the files are in first (:func:`fsync_dir`)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    if in_staging:
        path = Path(path)
        try:
            with open(path, "wb") as f:
                f.writelines(parts)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.writelines(parts)


def new_staging_dir(target: str | os.PathLike) -> Path:
    """A fresh, empty temporary directory beside ``target`` (parents created)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_sibling(target)
    staging.mkdir()
    return staging


def publish_dir(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the finished directory ``staging`` to ``target``, replacing any directory
    there: the old one is first renamed aside, so ``target`` is always either complete
    old or complete new content."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        old = _sibling(target, ".old-")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
    fsync_dir(target.parent)


def remove_stale(directory: str | os.PathLike) -> int:
    """Clean up after a writer killed in ``directory``; returns how many entries it
    touched. Temporary siblings (``.<name>.tmp-*``) are deleted. A replaced directory
    (``.<name>.old-*``) is deleted when ``<name>`` exists, and renamed back to ``<name>``
    when the kill fell between :func:`publish_dir`'s two renames, so complete content
    is never lost."""
    directory = Path(directory)
    if not directory.exists():
        return 0
    n = 0
    for stale in sorted(directory.glob(".*.old-*")):
        original = directory / stale.name[1:stale.name.rindex(".old-")]
        if not original.exists():
            stale.rename(original)
        else:
            _remove(stale)
        n += 1
    for stale in directory.glob(f".*{TMP_MARK}*"):
        _remove(stale)
        n += 1
    return n


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


__all__ = ["atomic_path", "fsync_dir", "fsync_file", "new_staging_dir", "publish_dir",
           "remove_stale", "temp_sibling", "write_atomic"]
