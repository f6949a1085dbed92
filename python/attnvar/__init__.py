"""attnvar: parallel-token generation and attention measurement on LibTorch.

Import order matters: torch is imported and its version checked before the compiled
extension ``attnvar._core`` is loaded, so a mismatch is a clear ImportError rather than
an undefined-symbol failure.

The package is laid out in layers that depend one way (docs/development.md):
``util`` ← ``engine`` ← ``study`` ← ``analysis`` ← ``report`` ← ``cli``. The names
below are the engine's; ``attnvar.study``, ``attnvar.analysis`` and ``attnvar.report``
are imported on first use, and the short names ``attnvar.metrics``, ``attnvar.stats``,
``attnvar.prompts``, ``attnvar.hypotheses``, ``attnvar.plots`` … stay importable.
"""

from __future__ import annotations

import importlib

import torch as _torch

from . import _aliases
from ._build_info import ATTNVAR_VERSION as __version__
from ._build_info import TORCH_VERSION as BUILT_WITH_TORCH
from ._torch_check import check_torch_version as _check_torch_version

_check_torch_version(BUILT_WITH_TORCH, _torch.__version__)
_aliases.install()

from . import _core  # noqa: E402
from ._core import AttnvarError, ConfigError, FormatError, MissingError  # noqa: E402
from .engine import (  # noqa: E402
    Capture,
    KeyBias,
    Knockout,
    MeanAblate,
    Model,
    Patch,
    Run,
    Steer,
    ZeroAblate,
    build_tree,
    default_model_path,
    load_model,
    load_run,
)


class Tree:
    """Trees built by hand: ``attnvar.Tree.build(model, prompt, steps)``."""

    @staticmethod
    def build(model: Model, prompt, steps, eos_ids=None):
        """``steps[t]`` lists S_t's members as pieces (``" mat"``) or ids, rank order."""
        return build_tree(model.tokenizer, model.encode(prompt), steps,
                          model.eos_ids if eos_ids is None else eos_ids)


_SUBPACKAGES = ("analysis", "engine", "report", "study", "util")


def __getattr__(name: str):
    # Layers above the engine, and the short alias names, load on first use.
    if name in _SUBPACKAGES or f"{__name__}.{name}" in _aliases.ALIASES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "BUILT_WITH_TORCH",
    "AttnvarError",
    "Capture",
    "ConfigError",
    "FormatError",
    "KeyBias",
    "Knockout",
    "MeanAblate",
    "MissingError",
    "Model",
    "Patch",
    "Run",
    "Steer",
    "ZeroAblate",
    "Tree",
    "default_model_path",
    "load_model",
    "load_run",
    "prompts",
    "_core",
]
