"""A study's results as the hypothesis functions see them, and the effects they share.

:func:`load` reads a results directory (the tables that the study and
:func:`attnvar.analysis.analyze_study` wrote, and the preregistered plan) into a
:class:`StudyResults`; :func:`effects` and :func:`contrast` turn the metric tables into
per-prompt effects; :func:`summarize` tests them over prompts.

The unit of analysis is the prompt: one effect per prompt and condition (mode, θ,
policy). The **primary design** is the replay contrast: the within-query contrast of the
generated run (parallel sets at shared positions) minus the same contrast on the replay of
the same tree under the preregistered ``contrast_encoding`` (``serial`` by default: every
member at its own position), so the text is held fixed and only the encoding differs.
Effects are on the log scale δ (negative = parallel tokens receive less attention) and
in % as reductions, 100·(1 − e^δ) (positive = less), as everywhere in attnvar.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm

from ...study import preregistration
from ...study.store import GENERATED_KINDS
from .. import stats
from ..metrics.profiles import VARIANTS as PROFILE_VARIANTS
from ..per_cell import load_tables, read_study

CONDITION = ["mode", "threshold", "policy"]
CELL_COLUMNS = ["cell_id", "prompt_id", "category", "structure", "pair", "mode", "threshold",
                "policy", "seed", "steps", "parallel_steps", "mean_width", "mean_entropy"]


# ---- loading ----------------------------------------------------------------------------------
@dataclass
class StudyResults:
    """A study's tables, its plan and the analysis settings derived from the plan.

    ``metric``/``variant``/``sinks_excluded``/``contrast_encoding`` default to the
    preregistered plan; overriding them is allowed and reported as a deviation.
    """

    path: Path
    study: dict
    prereg: dict
    tables: dict[str, pd.DataFrame]
    metric: str
    variant: str
    sinks_excluded: bool
    contrast_encoding: str
    apply_exclusions: bool = True

    @property
    def plan(self) -> dict:
        return self.prereg["plan"]

    @property
    def alpha(self) -> float:
        return float(self.plan["alpha"])

    def deviations(self) -> list[str]:
        """Analysis settings that differ from the plan."""
        out = []
        for name in ("metric", "variant", "sinks_excluded", "contrast_encoding"):
            if getattr(self, name) != self.plan[name]:
                out.append(f"{name}: planned {self.plan[name]!r}, analysed "
                           f"{getattr(self, name)!r}")
        if not self.apply_exclusions:
            out.append("exclusion rule not applied (planned: applied)")
        return out

    @property
    def design(self) -> str:
        """"replay" when the contrast replay exists in the study, else "observational"."""
        enc = derived("sources", self.tables["metrics"], _sources)
        return "replay" if self.contrast_encoding in enc else "observational"

    def cells(self) -> pd.DataFrame:
        """One row per generated run: grid values, run summary, degeneracy decision."""
        # a copy of the kept view: the caller may change its frame
        return derived("cells", self.tables, _cells).copy()

    def kept_cells(self) -> pd.DataFrame:
        c = self.cells()
        return c[~c["excluded"]] if self.apply_exclusions else c


def load(results: str | Path, metric: str | None = None, variant: str | None = None,
         sinks_excluded: bool | None = None, contrast_encoding: str | None = None,
         apply_exclusions: bool = True) -> StudyResults:
    """Load a study's results directory (tables written by the study and its analysis).

    Settings left None come from the study's preregistration.
    """
    results = Path(results)
    study = read_study(results)
    rec = preregistration.load(results)
    plan = rec["plan"]
    return StudyResults(
        path=results, study=study, prereg=rec, tables=load_tables(results),
        metric=metric or plan["metric"], variant=variant or plan["variant"],
        sinks_excluded=plan["sinks_excluded"] if sinks_excluded is None else sinks_excluded,
        contrast_encoding=contrast_encoding or plan["contrast_encoding"],
        apply_exclusions=apply_exclusions)


# ---- views of the tables, derived once while they are only read ------------------------------
_views: dict[tuple[str, int], tuple[Any, Any]] | None = None


@contextmanager
def reading_tables() -> Iterator[None]:
    """Within the block, what :func:`derived` derives from a table (the prompt-level rows
    of the metrics, the sources they hold, the cell table) is derived once per table and
    reused, for code that only reads the tables: the hypothesis functions, which
    :func:`~attnvar.analysis.hypotheses.compute_all` runs inside one, ask for the same
    views of a core study's metrics table (1.7 million rows) a hundred times. Outside a
    block every call derives afresh, so a table changed in place between calls is seen
    as it is."""
    global _views
    if _views is not None:  # nested: the outer block's views serve
        yield
        return
    _views = {}
    try:
        yield
    finally:
        _views = None


def derived(name: str, table: Any, make: Callable[[Any], Any]) -> Any:
    """``make(table)``, kept under ``name`` for this table (a frame, or the dict of a
    study's tables) within :func:`reading_tables`."""
    if _views is None:
        return make(table)
    key = (name, id(table))
    if key not in _views:
        _views[key] = (table, make(table))  # the table held, so its id stays its own
    return _views[key][1]


def _cells(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    runs = tables["runs"]
    gen = runs[runs["kind"].isin(GENERATED_KINDS)].rename(columns={"run_id": "cell_id"})
    deg = tables["degeneracy"]
    cols = [c for c in CELL_COLUMNS if c in gen]
    out = gen[cols].merge(deg[["cell_id", "excluded"]], on="cell_id", how="left")
    out["excluded"] = out["excluded"].fillna(False).astype(bool)
    out["proportion_parallel"] = out["parallel_steps"] / out["steps"].where(out["steps"] > 0)
    return out


def _sources(metrics: pd.DataFrame) -> set:
    return set(metrics.get("source", pd.Series(dtype=str)).unique())


def _prompt_level(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[(metrics["layer"] < 0) & (metrics["head"] < 0)]


# ---- effects ----------------------------------------------------------------------------------
def _se_diff(a: pd.Series, b: pd.Series) -> pd.Series:
    return np.sqrt(a.astype(float) ** 2 + b.astype(float) ** 2)


def contrast(frame: pd.DataFrame, keys: list[str], value: str = "estimate",
             se: str | None = None, design: str = "replay",
             encoding: str = "serial") -> pd.DataFrame:
    """Per ``keys``: the generated run's ``value`` (``generated``), the replay's
    (``replayed``) and the effect: generated − replayed (replay design) or generated
    (observational). With ``se``: ``effect_se`` (independent errors assumed, an upper
    bound since both runs share the text)."""
    cols = keys + [value] + ([se] if se else [])
    g = frame.loc[frame["source"] == "generated", cols].rename(
        columns={value: "generated", **({se: "se_generated"} if se else {})})
    if design == "observational":
        out = g.copy()
        out["replayed"] = np.nan
        out["effect"] = out["generated"]
        if se:
            out["effect_se"] = out["se_generated"]
        return out
    r = frame.loc[frame["source"] == encoding, cols].rename(
        columns={value: "replayed", **({se: "se_replayed"} if se else {})})
    out = g.merge(r, on=keys, how="inner")
    out["effect"] = out["generated"] - out["replayed"]
    if se:
        out["effect_se"] = _se_diff(out["se_generated"], out["se_replayed"])
    return out


def prompt_rows(metrics: pd.DataFrame, metric: str, variant: str, sinks_excluded: bool,
                source: str | None = None, term: str | None = None) -> pd.DataFrame:
    """The prompt-level rows (layer = head = −1) of one metric variant in a metrics table:
    with sinks excluded or not (M0 legacy has one form, taken either way), the
    ``parallel`` term of M2 unless ``term`` names another, of one ``source`` (the
    generated run or a replay's encoding) when given."""
    if "metric" not in metrics:  # a study without any analysable run
        return metrics.iloc[:0]
    # the prompt-level rows first (a few % of the rows): the text columns compared below
    # are slow to compare over all of them
    m = derived("prompt_level", metrics, _prompt_level)
    sel = (m["metric"] == metric) & (m["variant"] == variant)
    if (metric, variant) != ("M0", "legacy"):
        sel &= m["sinks_excluded"].astype(bool) == sinks_excluded
    if term is not None:
        sel &= m["term"] == term
    elif metric == "M2":
        sel &= m["term"] == "parallel"
    if source is not None:
        sel &= m["source"] == source
    return m[sel]


def effects(res: StudyResults, metric: str | None = None, variant: str | None = None,
            sinks_excluded: bool | None = None, design: str | None = None,
            term: str | None = None) -> pd.DataFrame:
    """Per-cell prompt-level effects of one metric variant, joined to the cell table
    (excluded cells dropped when the exclusion rule applies).

    Columns: the cell columns, ``generated``, ``replayed``, ``effect`` (log scale, or
    % points for M0), ``effect_se``, ``effect_pct`` (reduction in %), ``scale``.
    """
    metric = metric or res.metric
    variant = variant or res.variant
    sinks = res.sinks_excluded if sinks_excluded is None else sinks_excluded
    design = design or res.design
    rows = prompt_rows(res.tables["metrics"], metric, variant, sinks, term=term)
    out = contrast(rows, ["cell_id"], se="se", design=design, encoding=res.contrast_encoding)
    out = res.kept_cells().merge(out, on="cell_id", how="inner")
    scale = rows["scale"].iloc[0] if len(rows) else "log"
    out["scale"] = scale
    out["effect_pct"] = out["effect"] if scale == "percent" else stats.pct_from_log(out["effect"])
    return out.dropna(subset=["effect"]).reset_index(drop=True)


def summarize(frame: pd.DataFrame, by: list[str], res: StudyResults, unit: str = "prompt_id",
             correction: str = "bh", effect: str = "effect", scale: str = "log",
             equivalence: bool = True) -> pd.DataFrame:
    """Per group of ``by``: the test of ``effect`` over ``unit`` (stats.summarize_family).

    ``equivalence=False`` for slopes and coefficients: the ±margin % equivalence test is
    defined on the reduction scale of an effect, and means nothing for a slope, so its
    columns (``p_tost``, ``p_tost_adj``, ``equivalent``) are left empty there."""
    by = [b for b in by if b in frame and frame[b].notna().any()]
    frame = frame[np.isfinite(frame[effect].astype(float))]
    ok = frame
    if by:  # groups with fewer than 2 units have no test
        ok = frame[frame.groupby(by, dropna=False)[unit].transform("nunique") >= 2]
    elif frame[unit].nunique() < 2:
        ok = frame.iloc[:0]
    if ok.empty:
        return pd.DataFrame(columns=by + ["n", "mean", "ci_low", "ci_high", "p", "p_adj",
                                          "mean_pct", "ci_pct_low", "ci_pct_high"])
    out = stats.summarize_family(ok, effect=effect, by=by or None, unit=unit,
                                 correction=correction, alpha=res.alpha, scale=scale,
                                 correct_on=res.plan["primary_test"],
                                 margin_pct=float(res.plan["tost_margin_pct"]))
    if scale == "percent":
        out["mean_pct"], out["ci_pct_low"], out["ci_pct_high"] = (
            out["mean"], out["ci_low"], out["ci_high"])
    if not equivalence:
        out[["p_tost", "p_tost_adj", "equivalent"]] = np.nan
    return out


def profile_variant(res: StudyResults) -> str:
    """The M1 variant the hypotheses read from the profile tables (steps, truncated,
    classes): the primary one when the primary metric is M1, else distance-matched M1 —
    the profiles exist for M1 only, and its distance-matched form is the unbiased one."""
    return res.variant if res.metric == "M1" and res.variant in PROFILE_VARIANTS \
        else "distance_matched"


def metric_label(res: StudyResults, metric: str | None = None, variant: str | None = None,
                 sinks_excluded: bool | None = None) -> str:
    """How a table names the metric behind its numbers: metric, variant, sinks, design —
    e.g. "M1 distance_matched, sinks excluded, generated − serial replay"."""
    metric = metric or res.metric
    variant = variant or res.variant
    sinks = res.sinks_excluded if sinks_excluded is None else sinks_excluded
    design = (f"generated − {res.contrast_encoding} replay" if res.design == "replay"
              else "generated run alone")
    return f"{metric} {variant}, sinks {'excluded' if sinks else 'included'}, {design}"


def profile_label(res: StudyResults) -> str:
    """:func:`metric_label` of the profile tables (computed with sinks excluded)."""
    return metric_label(res, "M1", profile_variant(res), True)


def profile_rows(res: StudyResults, table: str) -> pd.DataFrame:
    """The rows of a profile table (steps, truncated, classes) in :func:`profile_variant`."""
    frame = res.tables[table]
    if "variant" not in frame:  # a study without any analysable run
        return frame
    return frame[frame["variant"] == profile_variant(res)].drop(columns="variant")


def p_column(res: StudyResults) -> str:
    """The summary column holding the plan's primary test's p value."""
    return stats.P_COLUMNS[res.plan["primary_test"]]


def condition_label(row: pd.Series | dict) -> str:
    parts = [str(row.get("mode", ""))]
    if "threshold" in row and pd.notna(row["threshold"]):
        parts.append(f"θ={float(row['threshold']):g}")
    if "policy" in row and pd.notna(row["policy"]):
        parts.append(str(row["policy"]))
    return " ".join(parts)


# How a test's native unit maps onto the one scale the summary uses: % reduction
# (positive = parallel tokens receive less attention), per a stated step of the covariate.
PCT_SCALES = {
    "%": (None, "% reduction"),
    "log units per step": (1.0, "% reduction per step"),
    "log units per unit θ": (0.1, "% reduction per 0.1 θ"),
    "log units per unit proportion": (0.1, "% reduction per 0.1 of steps parallel"),
}
SUPPORTS = "≠ 0 (two-sided test)"


def test_row(hypothesis: str, mode: str, test: str, estimate: float, low: float, high: float,
             p: float, n: int, unit: str = "%", metric: str = "", sd: float = math.nan,
             alpha: float = 0.05) -> dict:
    """One row of the H1–H4 family, in its native unit and on the common % scale: a
    slope b in log units per unit x becomes 100·(1 − e^{b·Δx}) % per Δx (the CI's ends
    swap, since the map decreases).

    ``sd``: the SD over units of the tested quantity (log units, per unit x for a slope)
    when the test is a one-sample t test over units; the row then carries ``mde``, the
    smallest true mean that test detects with 80 % power at level ``alpha`` (noncentral
    t, before any correction), in log units and as ``mde_pct`` on the row's % scale."""
    step, pct_unit = PCT_SCALES[unit]
    mde = (stats.mde_paired(int(n), float(sd), 0.8, alpha)
           if np.isfinite(sd) and sd > 0 and n >= 2 else math.nan)
    mde_pct = float(stats.pct_from_log(-abs(mde) * (step or 1.0)))
    if step is None:
        pct, pct_low, pct_high = estimate, low, high
    else:
        pct = float(stats.pct_from_log(step * estimate))
        pct_low = float(stats.pct_from_log(step * high))
        pct_high = float(stats.pct_from_log(step * low))
    return {"hypothesis": hypothesis, "mode": mode, "test": test, "estimate": estimate,
            "ci_low": low, "ci_high": high, "unit": unit, "p": p, "n": n,
            "pct": pct, "pct_low": pct_low, "pct_high": pct_high, "pct_unit": pct_unit,
            "supports": SUPPORTS, "metric": metric, "sd": sd, "mde": mde,
            "mde_pct": mde_pct}


@dataclass
class HypothesisTables:
    """What one hypothesis function computes: named tables, the rows it enters into the
    H1–H4 family (``tests``: hypothesis, mode, test, estimate, ci_low, ci_high, unit, p,
    n) and ``facts``, the few scalar counts its answer quotes (documented per function).
    Numbers only: the report draws figures and writes prose from these.

    ``metric`` names the metric behind the tables (:func:`metric_label`);
    ``table_metrics`` names it for the tables that use another one."""

    name: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    facts: dict[str, Any] = field(default_factory=dict)
    metric: str = ""
    table_metrics: dict[str, str] = field(default_factory=dict)

    def metric_of(self, table: str) -> str:
        """The metric label of one of the tables ("" when it holds no metric)."""
        return self.table_metrics.get(table, self.metric)


def tests_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(TEST_COLUMNS)) if rows else pd.DataFrame()


TEST_COLUMNS = ("hypothesis", "mode", "test", "estimate", "ci_low", "ci_high", "unit", "p", "n",
                "pct", "pct_low", "pct_high", "pct_unit", "supports", "metric", "sd", "mde",
                "mde_pct")


def ols(x: np.ndarray, y: np.ndarray) -> dict:
    """OLS slope of ``y`` on ``x`` with its 95 % CI and p (NaN below 3 points or no
    spread in ``x``)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0:
        return {"slope": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan,
                "n": int(ok.sum())}
    fit = sm.OLS(y[ok], sm.add_constant(x[ok])).fit()
    lo, hi = fit.conf_int()[1]
    return {"slope": float(fit.params[1]), "ci_low": float(lo), "ci_high": float(hi),
            "p": float(fit.pvalues[1]), "n": int(ok.sum())}
