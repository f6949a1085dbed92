"""scikit-build-core dynamic-metadata provider: pin torch to the build-time version.

attnvar._core is compiled against the torch present at build time (built with
--no-build-isolation), so the wheel requires that torch release exactly. The pin is the
public version (``2.13.0``, not ``2.13.0+cpu``): PyPI carries no local tags, and ``==2.13.0``
matches the local builds of that release too. Which build (CPU or CUDA) is checked when
attnvar is imported (attnvar/_torch_check.py), with the fix in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def dynamic_metadata(settings: Mapping[str, Any], project: Mapping[str, Any]) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        built = version("torch")
    except PackageNotFoundError:
        raise RuntimeError(
            "attnvar compiles against the torch installed where it is built, and this build "
            "environment has none (pip's build isolation): install torch==2.13.0 first, then "
            "pip install --no-build-isolation .") from None
    extra = list(settings.get("requires", []))
    return {"dependencies": [f"torch=={built.split('+')[0]}", *extra]}
