"""Thread limits for worker processes.

A pool of ``workers`` processes on ``n`` cores gives each worker ``n // workers``
threads. torch's intra-op pool is one limit; the BLAS library numpy and scipy link
(OpenBLAS in the PyPI wheels) is the other: forked workers inherit its full-size pool,
and its threads busy-wait between calls, so two workers each running two BLAS threads on
two cores run at half speed (measured: the study analysis took 3.5× longer with two
workers than their cells' sum on one). :func:`limit_worker_threads` sets both.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext

import torch
from threadpoolctl import threadpool_limits

_blas_limit = None  # kept alive: the limit holds while the object exists


def worker_threads(workers: int) -> int:
    """Threads per worker when ``workers`` processes share this process's torch threads."""
    return max(1, torch.get_num_threads() // max(1, workers))


def limit_worker_threads(threads: int) -> None:
    """Cap this process's torch and BLAS thread pools at ``threads`` (a pool initializer)."""
    global _blas_limit
    torch.set_num_threads(threads)
    _blas_limit = threadpool_limits(limits=threads)


def limit_forked_threads(threads: int) -> None:
    """:func:`limit_worker_threads` for a forked worker: BLAS at ``threads`` (OpenBLAS
    restarts its pool in a forked child), torch at one thread (see the module's note)."""
    global _blas_limit
    torch.set_num_threads(1)
    _blas_limit = threadpool_limits(limits=threads)


def can_fork() -> bool:
    """Whether this platform starts processes by fork."""
    return "fork" in multiprocessing.get_all_start_methods()


def check_not_bootstrapping(what: str) -> None:
    """Raise a clear RuntimeError when called while a worker started by forkserver or
    spawn is importing its parent's main script (an unguarded script would otherwise run
    ``what`` again in every worker)."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            f"{what} was called while a worker process was importing the main script: "
            "attnvar starts workers that run more than one thread each from a clean process, "
            "which imports the script that started them; put the script's work under "
            "`if __name__ == \"__main__\":`")


def start_context(threads: int) -> BaseContext:
    """How to start workers that run torch on ``threads`` threads: by fork when that is
    one (or less) and the platform forks, else from a forkserver (spawn where there is
    none). A forkserver is started once per process, clean, and forks the workers."""
    if threads <= 1 and can_fork():
        return multiprocessing.get_context("fork")
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch and one BLAS thread, restoring both after. For work
    made of many small tensor operations (the per-cell analysis), where waking a second
    thread costs more than it saves: 40 core cells took 52.9 s on two threads and 28.8 s
    on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


__all__ = ["limit_worker_threads", "one_thread", "worker_threads"]
