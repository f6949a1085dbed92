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

__all__ = [
    "__version__",
    "BUILT_WITH_TORCH",
    "AttnvarError",
    "ConfigError",
    "FormatError",
    "_core",
]
