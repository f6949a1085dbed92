"""Facts about processes from Linux's /proc: what the Ray executor needs to find and stop
the processes of a Ray instance it started (and its tests and bench, those of a cluster
they started)."""

from __future__ import annotations

from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name: [state, ppid, pgrp, session, …];
    None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def session_of(pid: int) -> int | None:
    """The process's session id; None when it is gone."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[3])


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in "ZX"
