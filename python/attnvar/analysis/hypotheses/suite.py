"""H1–H4 as one family, and every hypothesis function in report order."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import stats
from .checks import dataset, degeneracy, heads, predictability, prototype, robustness
from .context import h4_context
from .controls import controls
from .primary import primary
from .results import HypothesisTables, StudyResults
from .semantics import h3_semantics
from .structure import h2_structure
from .temporal import h1_temporal

HYPOTHESES = ("H1", "H2", "H3", "H4")


def family(results: dict, res: StudyResults) -> pd.DataFrame:
    """The H1–H4 tests (one per hypothesis and mode) with the plan's family-wise
    correction (Holm by default). ``results`` maps names to objects with a ``tests``
    frame (:class:`HypothesisTables`, or the report's findings)."""
    rows = [r.tests for k, r in results.items() if k in HYPOTHESES and len(r.tests)]
    if not rows:
        return pd.DataFrame(columns=["hypothesis", "mode", "test", "p", "p_adj", "reject"])
    table = pd.concat(rows, ignore_index=True)
    c = stats.correct(table["p"], res.plan["hypotheses_correction"], res.alpha)
    table["p_adj"], table["reject"] = c["p_adj"].to_numpy(), c["reject"].to_numpy()
    return table


NOT_COMPUTED = "not_computed"
# What a study too small or too odd for one analysis raises there (numpy, scipy,
# statsmodels and pandas all signal "not enough data" with these).
DATA_ERRORS = (ValueError, ZeroDivisionError, np.linalg.LinAlgError, KeyError, IndexError)


def not_computed(name: str, error: BaseException) -> HypothesisTables:
    """The stand-in for an analysis the study's data do not allow; ``facts`` says why."""
    return HypothesisTables(name, facts={NOT_COMPUTED: f"{type(error).__name__}: {error}"})


def _safely(name: str, fn, res: StudyResults, **kwargs) -> HypothesisTables:
    try:
        return fn(res, **kwargs)
    except DATA_ERRORS as e:
        return not_computed(name, e)


def compute_all(res: StudyResults, predict: bool = True, n_permutations: int = 200
                ) -> dict[str, HypothesisTables]:
    """Every table of the report, in report order, plus ``family`` (table ``family``:
    the corrected H1–H4 tests). ``n_permutations`` goes to the predictability model's
    permutation p values. An analysis the data do not allow (a tiny study) comes back
    empty with ``facts["not_computed"]`` saying why, so the report can say so."""
    steps = [("dataset", dataset, {}), ("controls", controls, {}), ("primary", primary, {}),
             ("H1", h1_temporal, {}),
             ("H2", h2_structure, {}), ("H3", h3_semantics, {}), ("H4", h4_context, {})]
    if predict:
        steps.append(("predictability", predictability, {"n_permutations": n_permutations}))
    steps += [("robustness", robustness, {}), ("prototype", prototype, {}),
              ("heads", heads, {}), ("degeneracy", degeneracy, {})]
    out = {name: _safely(name, fn, res, **kw) for name, fn, kw in steps}
    fam = family(out, res)
    out["family"] = HypothesisTables("family", {"family": fam}, fam)
    return out


__all__ = ["DATA_ERRORS", "HYPOTHESES", "NOT_COMPUTED", "compute_all", "family", "not_computed"]
