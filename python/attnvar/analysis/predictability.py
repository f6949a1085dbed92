"""Can the per-prompt effect be predicted? (docs/statistics.md, "Predictability").

Two pieces:

- :func:`prompt_features` — what is known about a run before or early in its
  generation: the prompt's length and ending, its category and structure when known, and
  summaries of the first few steps of the generated tree (share of parallel steps, set
  width, next-token entropy, selection probabilities).
- :func:`predict_effect` — a grouped K-fold cross-validated model of an effect column
  from feature columns: ridge regression for the magnitude, L2-regularised logistic
  regression for the sign, both on features standardised inside each training fold, the
  penalties chosen by an inner grouped CV on the training fold only (the inner folds
  reuse the training fold's standardisation). It reports the
  out-of-fold R² (against each fold's training mean), the sign accuracy against the
  majority-sign baseline (majority taken in-fold), one row per fold, and permutation p
  values from shuffling the target across groups.

Groups (prompts) are never split across folds, so rows of the same prompt (several
thresholds, seeds, duplicated rows) can never inform their own prediction.
Only numpy / scipy / pandas are used.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FEATURE_DOCS",
    "prompt_features",
    "group_folds",
    "PredictionResult",
    "predict_effect",
    "RIDGE_PENALTIES",
    "LOGISTIC_PENALTIES",
]

# ---- features ----------------------------------------------------------------------------------
#: What each column of :func:`prompt_features` means.
FEATURE_DOCS: dict[str, str] = {
    "prompt_tokens": "prompt length in tokens, BOS not counted",
    "prompt_chars": "prompt length in characters (the prompt text as the run shows it)",
    "ends_sentence": "1 if the prompt ends a sentence: . ! or ? optionally followed by "
                     "closing quotes or brackets, trailing whitespace ignored; else 0",
    "ends_punct": "1 if the last non-space character of the prompt is punctuation "
                  "(Unicode category P*); else 0",
    "ends_newline": "1 if the prompt text ends with a newline; else 0",
    "category": "the prompt's suite category when a Prompt is given, else None",
    "structure": "the prompt's structure (incomplete / complete) when a Prompt is given, "
                 "else None",
    "threshold": "the generation threshold θ the run was made with (NaN if unknown)",
    "early_steps": "number of steps summarised: min(first_steps, steps in the run)",
    "early_parallel_share": "share of the first steps whose set has ≥ 2 members",
    "early_mean_width": "mean set width (members, EOS included) over the first steps",
    "early_max_width": "largest set width over the first steps",
    "early_mean_entropy": "mean next-token entropy (nats) of q_t over the first steps",
    "early_top_prob": "mean selection probability q_t of each first step's rank-0 member",
    "early_set_mass": "mean total selection probability of each first step's set",
    "early_eos": "1 if an EOS member was selected within the first steps; else 0",
}

_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def prompt_features(run: Any, first_steps: int = 3, prompt: Any = None) -> dict[str, Any]:
    """Features of one run known before, or early in, its generation.

    Parameters
    ----------
    run : attnvar.Run
        A generated run (its ``tree``, ``prompt_text``, ``model`` and ``options`` are read).
    first_steps : int
        How many leading steps of the tree to summarise (≥ 1). A shorter run uses all of
        its steps (``early_steps`` says how many); a run without steps gets NaN summaries.
    prompt : attnvar.prompts.Prompt, optional
        The suite record of the run's prompt; gives ``category`` and ``structure``
        (None when absent — nothing is inferred, so unknown stays unknown).

    Returns
    -------
    dict
        The keys of :data:`FEATURE_DOCS`, in that order. Numeric features are floats
        (indicators are 0.0 / 1.0); ``category`` and ``structure`` are strings or None and
        :func:`predict_effect` one-hot encodes them.

    Notes
    -----
    Entropies are ``TreeStep.entropy`` (of q_t, the distribution the set was selected
    from) and probabilities ``Member.probability`` (q_t of the member); NaN values are
    left out of the means. EOS members count towards width and set mass.
    """
    if int(first_steps) < 1:
        raise ValueError(f"first_steps must be ≥ 1, got {first_steps}")
    tree = run.tree
    bos = (getattr(run, "model", None) or {}).get("bos_id")
    prompt_ids = list(tree.prompt)
    n_prompt = len(prompt_ids) - (1 if prompt_ids and bos is not None and prompt_ids[0] == bos
                                  else 0)
    text = run.prompt_text or ""
    stripped = text.rstrip()
    last = stripped[-1:] if stripped else ""
    options = getattr(run, "options", None) or {}
    threshold = options.get("threshold")
    steps = list(tree.steps)[: int(first_steps)]
    widths = [len(s.members) for s in steps]
    out: dict[str, Any] = {
        "prompt_tokens": float(n_prompt),
        "prompt_chars": float(len(text)),
        "ends_sentence": float(bool(_SENTENCE_END.search(stripped))),
        "ends_punct": float(bool(last) and unicodedata.category(last).startswith("P")),
        "ends_newline": float(text.endswith("\n")),
        "category": getattr(prompt, "category", None) if prompt is not None else None,
        "structure": getattr(prompt, "structure", None) if prompt is not None else None,
        "threshold": float(threshold) if threshold is not None else float("nan"),
        "early_steps": float(len(steps)),
    }
    if steps:
        out.update(
            early_parallel_share=float(np.mean([w >= 2 for w in widths])),
            early_mean_width=float(np.mean(widths)),
            early_max_width=float(max(widths)),
            early_mean_entropy=_nanmean([s.entropy for s in steps]),
            early_top_prob=_nanmean([s.members[0].probability for s in steps]),
            early_set_mass=_nanmean([
                math.fsum(m.probability for m in s.members)
                if all(math.isfinite(m.probability) for m in s.members) else float("nan")
                for s in steps]),
            early_eos=float(any(m.is_eos for s in steps for m in s.members)),
        )
    else:
        out.update(dict.fromkeys(("early_parallel_share", "early_mean_width",
                                  "early_max_width", "early_mean_entropy", "early_top_prob",
                                  "early_set_mass", "early_eos"), float("nan")))
    return {k: out[k] for k in FEATURE_DOCS}


# ---- folds -------------------------------------------------------------------------------------
def group_folds(groups: Sequence[Any] | np.ndarray, n_splits: int = 5, seed: int | None = 0
                ) -> np.ndarray:
    """Fold index (0 … n_splits − 1) of each row; every group lies in exactly one fold.

    The distinct groups are listed in order of first appearance; with ``seed`` not None
    that list is permuted by ``numpy.random.default_rng(seed).permutation``. Group number
    g of the list goes to fold ``g mod n_splits``, so fold sizes in groups differ by at
    most one. Example (``seed=None``): groups ``a a b c c c d e`` with 2 folds →
    a, c, e in fold 0 and b, d in fold 1 → ``0 0 1 0 0 0 1 0``.
    """
    g = pd.Series(np.asarray(groups, dtype=object))
    codes, uniques = pd.factorize(g, sort=False)
    if (codes < 0).any():
        raise ValueError("groups contain missing values")
    n_groups = len(uniques)
    if n_splits < 2:
        raise ValueError(f"n_splits must be ≥ 2, got {n_splits}")
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} groups cannot fill {n_splits} folds; need ≥ n_splits "
                         "groups")
    order = (np.arange(n_groups) if seed is None
             else np.random.default_rng(seed).permutation(n_groups))
    fold_of_group = np.empty(n_groups, dtype=int)
    fold_of_group[order] = np.arange(n_groups) % n_splits
    return fold_of_group[codes]


# ---- models ------------------------------------------------------------------------------------
#: Ridge penalties λ tried in the inner CV; objective mean((y − Xβ)²) + λ‖β‖² on
#: standardised features, intercept unpenalised.
RIDGE_PENALTIES: tuple[float, ...] = tuple(float(x) for x in np.logspace(-4, 3, 15))
#: Logistic penalties λ tried in the inner CV; objective mean log-loss + (λ/2)‖β‖².
LOGISTIC_PENALTIES: tuple[float, ...] = tuple(float(x) for x in np.logspace(-3, 1, 5))


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale by the training rows; a column constant in training becomes 0
    (carries nothing the training rows could have learned from)."""
    mu = train.mean(axis=0)
    sd = train.std(axis=0)
    const = sd <= 1e-12 * np.maximum(1.0, np.abs(mu))
    sd = np.where(const, 1.0, sd)
    a, b = (train - mu) / sd, (test - mu) / sd
    a[:, const] = 0.0
    b[:, const] = 0.0
    return a, b


def _ridge_path(x: np.ndarray, y: np.ndarray, penalties: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Ridge fits for every penalty at once by SVD of the centred design.

    Returns ``(intercepts (L,), coefs (L, p))`` for the objective
    ``mean((y − b0 − Xβ)²) + λ‖β‖²`` (so the normal equations use ``n·λ``).
    """
    n = x.shape[0]
    xm, ym = x.mean(axis=0), y.mean()
    u, s, vt = np.linalg.svd(x - xm, full_matrices=False)
    uty = u.T @ (y - ym)
    shrink = s[None, :] / (s[None, :] ** 2 + n * penalties[:, None])  # (L, r)
    coefs = (shrink * uty[None, :]) @ vt  # (L, p)
    return ym - coefs @ xm, coefs


def _logistic_batch(x: np.ndarray, y: np.ndarray, weights: np.ndarray, lams: np.ndarray,
                    max_iter: int = 100, tol: float = 1e-8) -> np.ndarray:
    """B L2-penalised logistic regressions on the same rows, by damped Newton.

    Problem b minimises ``Σ_i w_bi·(log(1 + e^{η_i}) − y_i·η_i) / Σ_i w_bi +
    (λ_b/2)‖β‖²`` with η = b0 + Xβ and the intercept unpenalised; weights are 0/1 row
    masks (inner training folds). Each Newton step is halved until the objective does
    not increase. The penalty makes the problem strictly convex in β; the intercept alone
    diverges only if a problem's rows hold one class, which callers exclude.

    Shapes: x (n, p), y (n,), weights (B, n), lams (B,) → (B, 1 + p) = (b0, β…).
    """
    n, p = x.shape
    xa = np.hstack([np.ones((n, 1)), x])  # (n, 1 + p)
    nw = weights.sum(axis=1)  # (B,)
    pen = lams[:, None] * np.r_[0.0, np.ones(p)][None, :]  # (B, 1 + p)
    eye = 1e-10 * np.eye(p + 1)

    def objective(w: np.ndarray) -> np.ndarray:
        eta = w @ xa.T
        return ((weights * (np.logaddexp(0.0, eta) - y * eta)).sum(axis=1) / nw
                + 0.5 * (pen * w**2).sum(axis=1))

    w = np.zeros((lams.size, p + 1))
    f = objective(w)
    for _ in range(max_iter):
        mu = 1.0 / (1.0 + np.exp(-np.clip(w @ xa.T, -35, 35)))  # (B, n)
        grad = (weights * (mu - y)) @ xa / nw[:, None] + pen * w
        s = weights * mu * (1.0 - mu)
        # Σ_n s_bn·x_ni·x_nj as one batched matmul (a three-operand einsum without a
        # contraction path loops in C over b, i, j and n: 60 of the report's 97 s).
        hess = np.matmul((s[:, :, None] * xa[None]).transpose(0, 2, 1), xa) / nw[:, None, None]
        hess += pen[:, :, None] * np.eye(p + 1)[None] + eye
        step = np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        t = np.ones(lams.size)
        for _ in range(30):
            cand = w - t[:, None] * step
            fc = objective(cand)
            worse = fc > f + 1e-12 * np.maximum(1.0, np.abs(f))
            if not worse.any():
                break
            t[worse] /= 2.0
        w, f = cand, fc
        if np.max(np.abs(t[:, None] * step)) < tol:
            break
    return w


def _logistic_fit(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """One fit of :func:`_logistic_batch` on all rows; returns ``(b0, β…)``."""
    return _logistic_batch(x, y, np.ones((1, x.shape[0])), np.array([lam]))[0]


def _inner_folds(groups: np.ndarray, n_inner: int) -> np.ndarray:
    n_groups = len(np.unique(groups))
    return group_folds(groups, min(n_inner, n_groups), seed=None)


def _choose_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, penalties: np.ndarray,
                  n_inner: int) -> float:
    """The penalty with the smallest inner grouped-CV squared error (largest on ties).
    ``x`` is already standardised by the (outer) training fold."""
    folds = _inner_folds(groups, n_inner)
    sse = np.zeros(penalties.size)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        b0, beta = _ridge_path(x[tr], y[tr], penalties)
        pred = b0[:, None] + beta @ x[te].T  # (L, n_test)
        sse += ((y[te][None, :] - pred) ** 2).sum(axis=1)
    best = np.flatnonzero(sse <= sse.min() * (1 + 1e-12))
    return float(penalties[best].max())


def _log_loss(y: np.ndarray, eta: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, eta) - y * eta


def _choose_logistic(x: np.ndarray, y: np.ndarray, groups: np.ndarray, penalties: np.ndarray,
                     n_inner: int) -> float:
    """The penalty with the smallest inner grouped-CV log-loss (largest on ties); all
    (inner fold, penalty) fits in one batch. An inner training fold holding one class
    predicts that class's smoothed rate. ``x`` is standardised by the training fold."""
    folds = _inner_folds(groups, n_inner)
    loss = np.zeros(penalties.size)
    fit_masks = []
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        ytr = y[tr]
        if ytr.min() == ytr.max():
            rate = (ytr.sum() + 0.5) / (ytr.size + 1.0)
            loss += _log_loss(y[te], np.full(te.sum(), math.log(rate / (1 - rate)))).sum()
        else:
            fit_masks.append(tr)
    if fit_masks:
        masks = np.asarray(fit_masks, dtype=float)  # (F, n)
        n_pen = penalties.size
        w = _logistic_batch(x, y, np.repeat(masks, n_pen, axis=0),
                            np.tile(penalties, len(fit_masks)))  # (F·L, 1 + p)
        eta = w[:, :1] + w[:, 1:] @ x.T  # (F·L, n)
        test = 1.0 - np.repeat(masks, n_pen, axis=0)
        per = (test * _log_loss(y[None, :], eta)).sum(axis=1)
        loss += per.reshape(len(fit_masks), n_pen).sum(axis=0)
    best = np.flatnonzero(loss <= loss.min() * (1 + 1e-12))
    return float(penalties[best].max())


# ---- design ------------------------------------------------------------------------------------
def _design(frame: pd.DataFrame, features: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Numeric columns as they are (bools as 0/1); object, string and categorical columns
    one-hot with one column per observed level (missing → all zeros). The level set is
    read from the whole frame: it holds no information about the target."""
    cols: list[np.ndarray] = []
    names: list[str] = []
    for f in features:
        s = frame[f]
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            cols.append(s.astype(float).to_numpy())
            names.append(f)
        else:
            levels = sorted(pd.unique(s.dropna()).tolist(), key=str)
            for lev in levels:
                cols.append((s == lev).fillna(False).to_numpy(dtype=float))
                names.append(f"{f}={lev}")
    return np.column_stack(cols) if cols else np.empty((len(frame), 0)), names


def _impute(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Missing feature values → the training rows' column mean (0 if all missing)."""
    with np.errstate(invalid="ignore"):
        fill = np.nanmean(np.where(np.isfinite(train), train, np.nan), axis=0) \
            if train.size else np.zeros(train.shape[1])
    fill = np.where(np.isfinite(fill), fill, 0.0)
    a, b = train.copy(), test.copy()
    a[~np.isfinite(a)] = np.take(fill, np.nonzero(~np.isfinite(a))[1])
    b[~np.isfinite(b)] = np.take(fill, np.nonzero(~np.isfinite(b))[1])
    return a, b


# ---- cross-validation ---------------------------------------------------------------------------
@dataclass
class PredictionResult:
    """What :func:`predict_effect` returns.

    Attributes
    ----------
    summary : dict
        ``target, n, n_groups, n_splits, n_features, cv_r2, sign_acc, sign_acc_ridge,
        baseline_acc, sign_gain, p_r2, p_sign, n_permutations, rmse, mean_target,
        share_positive`` (see :func:`predict_effect`).
    folds : DataFrame
        One row per fold: ``fold, n_train, n_test, n_groups_train, n_groups_test,
        train_mean, r2, sse, sst, sign_acc, sign_acc_ridge, baseline_acc,
        majority_positive, ridge_penalty, logistic_penalty``.
    predictions : DataFrame
        Out-of-fold predictions, one per row of the input (its index): ``group, fold,
        target, pred, prob_positive, baseline_positive``.
    coefficients : DataFrame
        Full-data fits (penalties chosen by grouped CV on all rows), standardised
        features: ``feature, ridge, logistic``. For reading, not for testing.
    """

    summary: dict[str, Any]
    folds: pd.DataFrame
    predictions: pd.DataFrame
    coefficients: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """The summary as a one-row DataFrame (settings in ``.attrs``)."""
        out = pd.DataFrame([self.summary])
        out.attrs.update(self.settings)
        return out


def _cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: np.ndarray,
        ridge_pen: np.ndarray, logit_pen: np.ndarray, n_inner: int, keep_rows: bool
        ) -> dict[str, Any]:
    """One full outer CV pass; returns pooled statistics (and per-fold / per-row detail
    when ``keep_rows``)."""
    n = y.size
    pos = (y > 0).astype(float)
    pred = np.empty(n)
    prob = np.empty(n)
    base = np.empty(n)
    train_mean = np.empty(n)
    rows = []
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        a, b = _impute(x[tr], x[te])
        a, b = _standardise(a, b)
        ytr, ptr = y[tr], pos[tr]
        lam = _choose_ridge(a, ytr, groups[tr], ridge_pen, n_inner) if a.shape[1] else np.nan
        if a.shape[1]:
            b0, beta = _ridge_path(a, ytr, np.array([lam]))
            pred[te] = b0[0] + b @ beta[0]
        else:
            pred[te] = ytr.mean()
        majority = float(ptr.mean() > 0.5) if ptr.mean() != 0.5 else float(y[tr].mean() > 0)
        base[te] = majority
        if ptr.min() == ptr.max() or not a.shape[1]:
            clam = np.nan
            prob[te] = majority
        else:
            clam = _choose_logistic(a, ptr, groups[tr], logit_pen, n_inner)
            w = _logistic_fit(a, ptr, clam)
            prob[te] = 1.0 / (1.0 + np.exp(-np.clip(w[0] + b @ w[1:], -35, 35)))
        train_mean[te] = ytr.mean()
        if keep_rows:
            yt = y[te]
            sse = float(((yt - pred[te]) ** 2).sum())
            sst = float(((yt - ytr.mean()) ** 2).sum())
            rows.append(dict(
                fold=int(f), n_train=int(tr.sum()), n_test=int(te.sum()),
                n_groups_train=len(np.unique(groups[tr])),
                n_groups_test=len(np.unique(groups[te])), train_mean=float(ytr.mean()),
                r2=1.0 - sse / sst if sst > 0 else np.nan, sse=sse, sst=sst,
                sign_acc=float(np.mean((prob[te] > 0.5) == pos[te])),
                sign_acc_ridge=float(np.mean((pred[te] > 0) == pos[te])),
                baseline_acc=float(np.mean(majority == pos[te])),
                majority_positive=bool(majority), ridge_penalty=float(lam),
                logistic_penalty=float(clam)))
    sse = float(((y - pred) ** 2).sum())
    sst = float(((y - train_mean) ** 2).sum())
    out = dict(
        cv_r2=1.0 - sse / sst if sst > 0 else np.nan,
        sign_acc=float(np.mean((prob > 0.5) == pos)),
        sign_acc_ridge=float(np.mean((pred > 0) == pos)),
        baseline_acc=float(np.mean(base == pos)),
        rmse=math.sqrt(sse / n),
    )
    if keep_rows:
        out.update(fold_rows=rows, pred=pred, prob=prob, base=base)
    return out


def _exchangeable_blocks(groups: np.ndarray) -> list[list[np.ndarray]]:
    """Row indices of each group, collected into classes of groups with the same number
    of rows (only classes of ≥ 2 groups: a group of unique size cannot be exchanged)."""
    codes, _ = pd.factorize(pd.Series(groups, dtype=object), sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    members = np.split(order, bounds)
    by_size: dict[int, list[np.ndarray]] = {}
    for m in members:
        by_size.setdefault(m.size, []).append(m)
    return [ms for ms in by_size.values() if len(ms) >= 2]


def _permute_across_groups(y: np.ndarray, blocks: list[list[np.ndarray]],
                           rng: np.random.Generator) -> np.ndarray:
    """The target with whole groups' target blocks exchanged among groups of equal size
    (row order within a block kept). With one row per group: a plain shuffle."""
    out = y.copy()
    for same in blocks:
        perm = rng.permutation(len(same))
        for dst, src in enumerate(perm):
            out[same[dst]] = y[same[src]]
    return out


def predict_effect(frame: pd.DataFrame, target: str, features: Sequence[str],
                   groups: str | None = "prompt_id", n_splits: int = 5, seed: int = 0,
                   n_permutations: int = 200, n_inner: int = 5,
                   ridge_penalties: Sequence[float] = RIDGE_PENALTIES,
                   logistic_penalties: Sequence[float] = LOGISTIC_PENALTIES
                   ) -> PredictionResult:
    """Cross-validated prediction of an effect's magnitude and sign from features.

    Parameters
    ----------
    frame : DataFrame
        One row per unit of prediction (usually one per prompt; several rows per prompt —
        thresholds, seeds — are allowed and stay together).
    target : str
        The effect column (e.g. a per-prompt M1 δ or % reduction). Rows with a missing
        target are dropped (counted in ``n_dropped``).
    features : list of str
        Feature columns (e.g. from :func:`prompt_features`). Numeric and bool columns
        are used as they are; string / categorical columns are one-hot encoded. Missing
        feature values are imputed with the training fold's mean.
    groups : str or None
        Column whose rows are never split across folds (default ``"prompt_id"``). None
        makes every row its own group (ordinary K-fold; only for comparison — it leaks
        when rows of a prompt are related).
    n_splits : int
        Outer folds (≥ 2); groups are assigned by :func:`group_folds` with ``seed``.
    seed : int
        Seeds the fold assignment and the permutations.
    n_permutations : int
        Permutations for the p values (0 = none). Each refits the whole CV (inner
        penalty choice included) with the target shuffled across groups: target blocks of
        equal-size groups are exchanged, so any within-group structure moves with its
        group; the folds stay fixed.
    n_inner : int
        Inner grouped folds on each training fold for choosing the penalties.
    ridge_penalties, logistic_penalties :
        The penalty grids (:data:`RIDGE_PENALTIES`, :data:`LOGISTIC_PENALTIES`).

    Returns
    -------
    PredictionResult
        ``summary`` holds:

        - ``cv_r2`` — out-of-fold R², ``1 − Σ(y − ŷ)² / Σ(y − ȳ_train(fold))²`` pooled
          over all rows, where ŷ is the ridge prediction from the fold that held the row
          out and ȳ_train(fold) that fold's training mean. 0 = no better than predicting
          the training mean; negative = worse.
        - ``sign_acc`` — share of rows whose sign (target > 0 = positive; 0 counts as
          non-positive) the logistic model predicts out-of-fold (probability > ½);
          ``sign_acc_ridge`` the same from the sign of the ridge prediction.
        - ``baseline_acc`` — accuracy of predicting each fold's training majority sign;
          ``sign_gain = sign_acc − baseline_acc``.
        - ``p_r2``, ``p_sign`` — permutation p values ``(1 + #{perm ≥ observed}) /
          (1 + n_permutations)`` for ``cv_r2`` and ``sign_gain`` (NaN without
          permutations, or when no two groups have the same number of rows).
        - ``n, n_groups, n_dropped, n_splits, n_features`` (design columns after
          one-hot), ``rmse``, ``mean_target``, ``share_positive``.

    Raises
    ------
    KeyError
        A target, feature or group column is missing (all missing names listed).
    ValueError
        Fewer groups than folds or than 3, a constant target, no features, or a
        non-numeric target.
    """
    features = list(features)
    if not features:
        raise ValueError("predict_effect needs at least one feature column")
    wanted = [target, *features, *([groups] if groups is not None else [])]
    missing = [c for c in dict.fromkeys(wanted) if c not in frame.columns]
    if missing:
        raise KeyError(f"columns not in frame: {missing}; frame has {list(frame.columns)}")
    if not pd.api.types.is_numeric_dtype(frame[target]):
        raise ValueError(f"target {target!r} must be numeric, got {frame[target].dtype}")
    df = frame[frame[target].notna() & np.isfinite(frame[target].astype(float))]
    n_dropped = len(frame) - len(df)
    y = df[target].to_numpy(dtype=float)
    g = (df[groups].to_numpy(dtype=object) if groups is not None
         else np.arange(len(df)).astype(object))
    if pd.isna(pd.Series(g, dtype=object)).any():
        raise ValueError(f"group column {groups!r} has missing values")
    n_groups = len(pd.unique(pd.Series(g, dtype=object)))
    if n_groups < max(3, n_splits):
        raise ValueError(f"too few groups: {n_groups} distinct {groups or 'rows'} with a "
                         f"target, need ≥ max(3, n_splits={n_splits})")
    if y.size and np.ptp(y) == 0:
        raise ValueError(f"target {target!r} is constant ({y[0]!r}): nothing to predict")
    x, names = _design(df, features)
    folds = group_folds(g, n_splits, seed)
    rp = np.asarray(ridge_penalties, dtype=float)
    lp = np.asarray(logistic_penalties, dtype=float)
    res = _cv(x, y, g, folds, rp, lp, n_inner, keep_rows=True)

    p_r2 = p_sign = float("nan")
    rng = np.random.default_rng(seed)
    blocks = _exchangeable_blocks(g)
    if n_permutations > 0 and blocks:
        gain = res["sign_acc"] - res["baseline_acc"]
        ge_r2 = ge_sign = 0
        for _ in range(int(n_permutations)):
            yp = _permute_across_groups(y, blocks, rng)
            r = _cv(x, yp, g, folds, rp, lp, n_inner, keep_rows=False)
            ge_r2 += r["cv_r2"] >= res["cv_r2"] - 1e-12
            ge_sign += r["sign_acc"] - r["baseline_acc"] >= gain - 1e-12
        p_r2 = (1 + ge_r2) / (1 + n_permutations)
        p_sign = (1 + ge_sign) / (1 + n_permutations)

    summary = dict(
        target=target, n=int(y.size), n_groups=int(n_groups), n_dropped=int(n_dropped),
        n_splits=int(n_splits), n_features=len(names), cv_r2=res["cv_r2"],
        sign_acc=res["sign_acc"], sign_acc_ridge=res["sign_acc_ridge"],
        baseline_acc=res["baseline_acc"], sign_gain=res["sign_acc"] - res["baseline_acc"],
        p_r2=p_r2, p_sign=p_sign, n_permutations=int(n_permutations), rmse=res["rmse"],
        mean_target=float(y.mean()), share_positive=float((y > 0).mean()))
    predictions = pd.DataFrame({
        "group": g, "fold": folds, "target": y, "pred": res["pred"],
        "prob_positive": res["prob"], "baseline_positive": res["base"].astype(bool),
    }, index=df.index)

    # full-data fits, for reading the direction of each feature
    a, _ = _impute(x, x[:0])
    a, _ = _standardise(a, a[:0])
    lam = _choose_ridge(a, y, g, rp, n_inner)
    _, beta = _ridge_path(a, y, np.array([lam]))
    posy = (y > 0).astype(float)
    logit = (np.full(len(names), np.nan) if posy.min() == posy.max()
             else _logistic_fit(a, posy, _choose_logistic(a, posy, g, lp, n_inner))[1:])
    coefficients = pd.DataFrame({"feature": names, "ridge": beta[0], "logistic": logit})
    settings = dict(target=target, features=features, design_columns=names, groups=groups,
                    n_splits=n_splits, seed=seed, n_permutations=n_permutations,
                    n_inner=n_inner, ridge_penalties=list(rp),
                    logistic_penalties=list(lp))
    return PredictionResult(summary=summary, folds=pd.DataFrame(res["fold_rows"]),
                            predictions=predictions, coefficients=coefficients,
                            settings=settings)
