"""The compiled extension is tied to the exact torch it was built against."""

from __future__ import annotations


def check_torch_version(built: str, running: str) -> None:
    """Raise ImportError unless ``running`` equals ``built`` exactly.

    ``attnvar._core`` links libtorch's C++ API, which has no stable ABI across torch
    releases (or across the CPU/CUDA builds of one release), so loading it into another
    torch can crash or misbehave instead of failing cleanly.
    """
    if running == built:
        return
    raise ImportError(
        f"attnvar was built against torch {built}, but torch {running} is installed. "
        f"Either install the matching torch (pip install torch=={built.split('+')[0]}) "
        "or rebuild attnvar against the installed one: "
        "pip install --no-build-isolation --force-reinstall --no-deps <attnvar source dir>"
    )
