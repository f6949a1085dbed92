"""H1–H4 as one family, and every hypothesis function in report order."""

from __future__ import annotations

import pandas as pd

from .. import stats
from .checks import dataset, degeneracy, heads, predictability, robustness
from .context import h4_context
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


def compute_all(res: StudyResults, predict: bool = True, n_permutations: int = 200
                ) -> dict[str, HypothesisTables]:
    """Every table of the report, in report order, plus ``family`` (table ``family``:
    the corrected H1–H4 tests). ``n_permutations`` goes to the predictability model's
    permutation p values."""
    out = {"dataset": dataset(res), "primary": primary(res), "H1": h1_temporal(res),
           "H2": h2_structure(res), "H3": h3_semantics(res), "H4": h4_context(res)}
    if predict:
        out["predictability"] = predictability(res, n_permutations=n_permutations)
    out["robustness"] = robustness(res)
    out["heads"] = heads(res)
    out["degeneracy"] = degeneracy(res)
    fam = family(out, res)
    out["family"] = HypothesisTables("family", {"family": fam}, fam)
    return out


__all__ = ["HYPOTHESES", "compute_all", "family"]
