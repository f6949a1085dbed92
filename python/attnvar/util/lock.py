"""One writer per results directory.

A study run and an analysis both rewrite a results directory (runs, staging directories,
tables), and each starts by clearing what a killed writer left behind — which would be
the other writer's work in progress if two ran at once. So each takes an exclusive
advisory lock (``fcntl.flock``) on ``<dir>/.attnvar.lock`` for as long as it writes; a
second writer is refused at once with :class:`DirectoryBusyError` naming the directory
and the process holding it. The lock goes with the process: a killed writer leaves no
stale lock behind (the file stays, unlocked).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".attnvar.lock"


class DirectoryBusyError(ValueError):
    """Another process is writing to this results directory."""


@contextmanager
def directory_lock(directory: str | os.PathLike, what: str = "a study") -> Iterator[Path]:
    """Hold the results directory's lock for the duration of the block (the directory is
    created if missing). Raises DirectoryBusyError when another writer holds it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise DirectoryBusyError(
                f"{directory}: another attnvar process (pid {holder}) is writing to this "
                f"results directory; wait for it or use another directory for {what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["LOCK_FILE", "DirectoryBusyError", "directory_lock"]
