"""Thread limits for worker processes.

A pool of ``workers`` processes on ``n`` cores gives each worker ``n // workers``
threads. torch's intra-op pool is one limit; the BLAS library numpy and scipy link
(OpenBLAS in the PyPI wheels) is the other: forked workers inherit its full-size pool,
and its threads busy-wait between calls, so two workers each running two BLAS threads on
two cores run at half speed (measured: the study analysis took 3.5× longer with two
workers than their cells' sum on one). :func:`limit_worker_threads` sets both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
