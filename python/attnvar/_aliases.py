"""Short module names that stay importable: ``attnvar.metrics`` is
``attnvar.analysis.metrics``, ``attnvar.hypotheses`` is ``attnvar.report.findings``, and
so on (the names attnvar had before its layers became subpackages, and the ones the
documentation uses).

An alias is the same module object as its target, never a second copy: a finder on
``sys.meta_path`` answers ``import attnvar.metrics`` (and ``attnvar.metrics.contrast``)
by importing the target and handing that module back.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

ALIASES = {
    "attnvar.capture": "attnvar.engine.capture",
    "attnvar.model": "attnvar.engine.model",
    "attnvar.run": "attnvar.engine.run",
    "attnvar.run_store": "attnvar.engine.run_store",
    "attnvar.tree": "attnvar.engine.tree",
    "attnvar.degeneracy": "attnvar.study.degeneracy",
    "attnvar.preregistration": "attnvar.study.preregistration",
    "attnvar.prompts": "attnvar.study.prompts",
    "attnvar.study_runner": "attnvar.study.runner",
    "attnvar.metrics": "attnvar.analysis.metrics",
    "attnvar.predictability": "attnvar.analysis.predictability",
    "attnvar.stats": "attnvar.analysis.stats",
    "attnvar.study_analysis": "attnvar.analysis.per_cell",
    "attnvar.hypotheses": "attnvar.report.findings",
    "attnvar.plots": "attnvar.report.plots",
}


def target_of(fullname: str) -> str | None:
    """The real module name behind ``fullname`` (itself or a submodule of an alias)."""
    parts = fullname.split(".")
    for i in range(len(parts), 1, -1):
        target = ALIASES.get(".".join(parts[:i]))
        if target is not None:
            return ".".join([target, *parts[i:]])
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self._spec = None

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamps the alias's spec on the module; the module keeps
        # its own, so that it stays what it is (name, package, reloads).
        module.__spec__ = self._spec


class AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        real = target_of(fullname)
        if real is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real))


def install() -> None:
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())


__all__ = ["ALIASES", "AliasFinder", "install", "target_of"]
