"""scikit-build-core dynamic-metadata provider: pin torch to the build-time version.

attnvar._core is compiled against the torch present at build time (built with
--no-build-isolation), so the wheel must require exactly that torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def dynamic_metadata(settings: Mapping[str, Any], project: Mapping[str, Any]) -> dict:
    import torch

    extra = list(settings.get("requires", []))
    return {"dependencies": [f"torch=={torch.__version__}", *extra]}
