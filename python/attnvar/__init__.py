"""attnvar: parallel-token generation and attention measurement on LibTorch.

Import order matters: torch is imported and its version checked before the compiled
extension ``attnvar._core`` is loaded, so a mismatch is a clear ImportError rather than
an undefined-symbol failure.
"""

from __future__ import annotations

import torch as _torch

from ._build_info import ATTNVAR_VERSION as __version__
from ._build_info import TORCH_VERSION as BUILT_WITH_TORCH
from ._torch_check import check_torch_version as _check_torch_version

_check_torch_version(BUILT_WITH_TORCH, _torch.__version__)

from . import _core  # noqa: E402
from ._core import AttnvarError, ConfigError, FormatError  # noqa: E402
from .capture import Capture  # noqa: E402
from . import prompts  # noqa: E402
from .model import Model, default_model_path, load_model  # noqa: E402
from .run import Run  # noqa: E402
from .run_store import load_run  # noqa: E402
from .tree import build_tree  # noqa: E402


class Tree:
    """Trees built by hand: ``attnvar.Tree.build(model, prompt, steps)``."""

    @staticmethod
    def build(model: Model, prompt, steps, eos_ids=None):
        """``steps[t]`` lists S_t's members as pieces (``" mat"``) or ids, rank order."""
        return build_tree(model.tokenizer, model.encode(prompt), steps,
                          model.eos_ids if eos_ids is None else eos_ids)


__all__ = [
    "__version__",
    "BUILT_WITH_TORCH",
    "AttnvarError",
    "Capture",
    "ConfigError",
    "FormatError",
    "Model",
    "Run",
    "Tree",
    "default_model_path",
    "load_model",
    "load_run",
    "prompts",
    "_core",
]
