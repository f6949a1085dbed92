"""Shared test setup: threads pinned to the reference machine's 2 cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(2)
