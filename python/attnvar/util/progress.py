"""A progress bar over a study's cells (tqdm when installed, else none)."""

from __future__ import annotations


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "cell"):
    """A tqdm bar, or None when disabled or tqdm is missing; callers check for None."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit=unit, desc=desc)


__all__ = ["progress_bar"]
