"""The engine layer: a model file loaded into the C++ engine, what a run captures, the
trees it generates or replays, and runs on disk.

Depends only on the extension ``attnvar._core`` and the leaf helpers in
``attnvar.util``; every other layer builds on it.
"""

from __future__ import annotations

from .capture import Capture
from .interventions import KeyBias, Knockout, MeanAblate, Patch, Steer, ZeroAblate
from .mask_leak import MaskLeak
from .model import (
    ENCODINGS,
    MODES,
    POLICIES,
    STOP_RULES,
    Model,
    default_model_path,
    load_model,
)
from .records import PassRecord
from .run import Run, load_run
from .tree import build_tree

__all__ = ["ENCODINGS", "MODES", "POLICIES", "STOP_RULES", "Capture", "KeyBias", "Knockout",
           "MaskLeak", "MeanAblate", "Model", "PassRecord", "Patch", "Run", "Steer",
           "ZeroAblate", "build_tree", "default_model_path", "load_model", "load_run"]
