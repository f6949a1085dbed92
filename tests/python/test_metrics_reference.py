"""Every vectorised metric kernel against a plain loop written from the metric definitions
(docs/metrics.md).

The loops below are deliberately naive (one query, one head, one key at a time) so that
they read like the definitions; the package's batched torch code must agree with them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnvar.metrics as am
from attnvar.analysis.toy_null import toy_view
from attnvar.metrics.counting import Sinks


def prompt_row(df, metric, variant, term="parallel"):
    rows = df[(df.metric == metric) & (df.variant == variant) & (df.layer == -1)
              & (df.term == term)]
    assert len(rows) == 1
    return rows.iloc[0]


def head_values(df, metric, variant, view, column="estimate"):
    out = np.full((len(view.layers), len(view.heads)), np.nan)
    sub = df[(df.metric == metric) & (df.variant == variant) & (df.layer >= 0)]
    for _, r in sub.iterrows():
        out[view.layers.index(r.layer), view.heads.index(r["head"])] = r[column]
    return out


@pytest.fixture(params=["isolated", "visible"])
def view(request):
    return toy_view(np.random.default_rng(3), mode=request.param, steps=12, layers=2, heads=3)


@pytest.fixture
def sinks(view):
    """Per-head sinks: key slot 9 in head (0, 1), key slot 12 in every head of layer 1."""
    mask = np.zeros((2, 3, view.num_slots), dtype=bool)
    mask[0, 1, 9] = True
    mask[1, :, 12] = True
    mask[:, :, 0] = True
    return Sinks([0, 1], [0, 1, 2], list(view.member_keys), mask)


def loop_pairs(view, sink_mask):
    """{(l, h): [(query, key), ...]} by the counting rules, one pair at a time."""
    out = {}
    for li in range(len(view.layers)):
        for hi in range(len(view.heads)):
            pairs = []
            for q in range(view.num_slots):
                for k in range(view.num_slots):
                    if view.step[q] < 0 or view.step[k] < 0:
                        continue  # generated queries and keys only
                    if not view.step[k] < view.step[q]:
                        continue  # strictly later-step queries
                    if not view.visibility[q, k]:
                        continue  # masked pairs never count
                    if sink_mask is not None and sink_mask[li, hi, k]:
                        continue
                    pairs.append((q, k))
            out[li, hi] = pairs
    return out


def test_count_pairs_follows_the_rules_pair_by_pair(view, sinks):
    pairs = am.count_pairs(view, sinks=sinks)
    expected = loop_pairs(view, sinks.mask_for(view))
    for (li, hi), exp in expected.items():
        got = [(int(pairs.query_slots[q]), int(pairs.key_slots[k]))
               for q, k in zip(*np.nonzero(pairs.include[li, hi].numpy()), strict=True)]
        assert sorted(got) == sorted(exp)
    # Without exclusion every head counts the same pairs, sinks included.
    free = am.count_pairs(view, sinks=sinks, exclude_sinks=False)
    assert int(free.include.sum()) > int(pairs.include.sum())
    assert all(bool((free.include[li, hi] == free.include[0, 0]).all())
               for li in range(2) for hi in range(3))
    # Logical distance, never slot distance.
    q, k = np.nonzero(pairs.base)
    d = view.position[pairs.query_slots[q]] - view.position[pairs.key_slots[k]]
    assert np.array_equal(pairs.distance[q, k], d)


def aggregate(values: dict[int, float], unit: dict[int, int]):
    """Mean over queries within a unit (step, or the query itself), then mean and SE
    over units."""
    units: dict[int, list[float]] = {}
    for q, v in values.items():
        units.setdefault(unit[q], []).append(v)
    means = [np.mean(v) for v in units.values()]
    se = np.std(means, ddof=1) / math.sqrt(len(means)) if len(means) > 1 else math.nan
    return np.mean(means), se, {u: np.mean(v) for u, v in units.items()}


@pytest.mark.parametrize("weighting", ["step", "query"])
def test_m1_plain_equals_a_loop_over_queries(view, sinks, weighting):
    df = am.score_contrast(view, sinks=sinks, weighting=weighting)
    pairs = loop_pairs(view, sinks.mask_for(view))
    s = view.scores.double().numpy()
    unit = {q: int(view.step[q]) if weighting == "step" else q for q in range(view.num_slots)}
    est = np.full((2, 3), np.nan)
    by_unit: dict[int, list[float]] = {}
    for (li, hi), pp in pairs.items():
        deltas = {}
        for q in sorted({q for q, _ in pp}):
            keys = [k for qq, k in pp if qq == q]
            par = [s[li, hi, q, k] for k in keys if view.is_parallel[k]]
            non = [s[li, hi, q, k] for k in keys if not view.is_parallel[k]]
            if par and non:
                deltas[q] = np.mean(par) - np.mean(non)
        est[li, hi], se, units = aggregate(deltas, unit)
        for u, v in units.items():
            by_unit.setdefault(u, []).append(v)
        got = df[(df.layer == li) & (df["head"] == hi)].iloc[0]
        assert got.estimate == pytest.approx(est[li, hi], abs=1e-10)
        assert got.se == pytest.approx(se, abs=1e-10)
        assert got.n_queries == len(deltas)
    row = prompt_row(df, "M1", "plain")
    assert row.estimate == pytest.approx(np.mean(est), abs=1e-10)
    over_heads = [np.mean(v) for v in by_unit.values()]
    assert row.se == pytest.approx(np.std(over_heads, ddof=1) / math.sqrt(len(over_heads)),
                                   abs=1e-10)
    assert row.effect_pct == pytest.approx(100 * (1 - math.exp(row.estimate)))


def dummy_ols(y, X):
    """OLS by numpy lstsq; returns coefficients and classical SEs."""
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    rank = np.linalg.matrix_rank(X)
    sigma2 = resid @ resid / (len(y) - rank)
    cov = sigma2 * np.linalg.pinv(X.T @ X)
    return beta, np.sqrt(np.maximum(np.diag(cov), 0.0))


def test_within_query_fit_equals_ols_with_query_dummies(view, sinks):
    """M2 and the distance-matched M1 against explicit query dummies + lstsq."""
    pairs = am.count_pairs(view, sinks=sinks)
    design, names = am.regression.regression_design(pairs)
    df = am.logit_regression(pairs, terms="all")
    dm = am.score_contrast(pairs, distance_matched=True)
    levels, _ = am.contrast.distance_levels(pairs)
    s = view.scores.double().numpy()
    pooled_rows, pooled_y = [], []
    for li in range(2):
        for hi in range(3):
            q, k = np.nonzero(pairs.include[li, hi].numpy())
            y = s[li, hi, pairs.query_slots[q], pairs.key_slots[k]]
            qd = (q[:, None] == np.unique(q)[None, :]).astype(float)
            x = design[q, k]
            # Drop columns the package drops (constant within queries / collinear): the
            # β of interest is the last column and must not depend on that choice.
            kept = [j for j in range(x.shape[1])
                    if np.isfinite(df[(df.layer == li) & (df["head"] == hi)
                                      & (df.term == names[j])].estimate.iloc[0])]
            beta, se = dummy_ols(y, np.hstack([x[:, kept], qd]))
            for j_pos, j in enumerate(kept):
                got = df[(df.layer == li) & (df["head"] == hi) & (df.term == names[j])].iloc[0]
                assert got.estimate == pytest.approx(beta[j_pos], abs=1e-8)
                assert got.se == pytest.approx(se[j_pos], rel=1e-7)
            xd = (levels[q, k][:, None] == np.arange(levels.max() + 1)[None, :]).astype(float)
            b2, se2 = dummy_ols(y, np.hstack([xd[:, 1:], qd, pairs.key_parallel[k][:, None]]))
            got = dm[(dm.layer == li) & (dm["head"] == hi)].iloc[0]
            assert got.estimate == pytest.approx(b2[-1], abs=1e-8)
            assert got.se == pytest.approx(se2[-1], rel=1e-7)
            Q = len(pairs.query_slots)
            block = np.zeros((len(y), 6 * Q))
            block[np.arange(len(y)), (li * 3 + hi) * Q + q] = 1
            pooled_rows.append(np.hstack([x, block]))
            pooled_y.append(y)
    beta, se = dummy_ols(np.concatenate(pooled_y), np.vstack(pooled_rows))
    got = prompt_row(df[df.variant == "pooled"], "M2", "pooled")
    assert got.estimate == pytest.approx(beta[design.shape[-1] - 1], abs=1e-8)


def test_m1m_raw_and_size_matched_equal_loops(view, sinks):
    draws, seed = 5, 11
    pairs = am.count_pairs(view, sinks=sinks)
    df = am.mass_ratio(pairs, draws=draws, seed=seed)
    s = view.scores.double().numpy()
    Q, K = len(pairs.query_slots), len(pairs.key_slots)
    gen = torch.Generator().manual_seed(seed)
    orders = [torch.rand(Q, K, generator=gen).argsort(-1).numpy() for _ in range(draws)]
    inc = pairs.include.numpy()
    for li in range(2):
        for hi in range(3):
            raw, matched = {}, {}
            for qi in range(Q):
                keys = np.flatnonzero(inc[li, hi, qi])
                sc = s[li, hi, pairs.query_slots[qi], pairs.key_slots]
                par = [k for k in keys if pairs.key_parallel[k]]
                non = [k for k in keys if not pairs.key_parallel[k]]
                if not par or not non:
                    continue
                raw[qi] = np.log(np.mean(np.exp(sc[par]))) - np.log(np.mean(np.exp(sc[non])))
                m = min(len(par), len(non))
                acc = 0.0
                for order in orders:
                    p_sub = [k for k in order[qi] if k in par][:m]
                    n_sub = [k for k in order[qi] if k in non][:m]
                    acc += np.log(np.sum(np.exp(sc[p_sub]))) - np.log(np.sum(np.exp(sc[n_sub])))
                matched[qi] = acc / draws
            step = dict(enumerate(pairs.query_step))
            got = df[(df.layer == li) & (df["head"] == hi)]
            assert got[got.variant == "raw"].estimate.iloc[0] == pytest.approx(
                aggregate(raw, step)[0], abs=1e-10)
            assert got[got.variant == "size_matched"].estimate.iloc[0] == pytest.approx(
                aggregate(matched, step)[0], abs=1e-10)


def test_m1p_equals_a_loop_over_sets(view, sinks):
    pairs = am.count_pairs(view, sinks=sinks)
    df = am.position_contrast(pairs)
    s = view.scores.double().numpy()
    inc = pairs.include.numpy()
    for li in range(2):
        for hi in range(3):
            deltas, logk = {}, {}
            for qi in range(len(pairs.query_slots)):
                keys = np.flatnonzero(inc[li, hi, qi])
                sc = s[li, hi, pairs.query_slots[qi], pairs.key_slots]
                sets: dict[int, list[int]] = {}
                for k in keys:
                    if pairs.key_parallel[k]:
                        sets.setdefault(int(pairs.key_step[k]), []).append(k)
                non = [k for k in keys if not pairs.key_parallel[k]]
                if not sets or not non:
                    continue
                lse = [np.log(np.sum(np.exp(sc[m]))) for m in sets.values()]
                deltas[qi] = np.mean(lse) - np.mean(sc[non])
                logk[qi] = np.mean([np.log(len(m)) for m in sets.values()])
            step = dict(enumerate(pairs.query_step))
            got = df[(df.layer == li) & (df["head"] == hi)]
            pos = got[got.variant == "position"].iloc[0]
            assert pos.estimate == pytest.approx(aggregate(deltas, step)[0], abs=1e-10)
            assert pos.mean_log_k == pytest.approx(aggregate(logk, step)[0], abs=1e-10)
            minus = got[got.variant == "position_minus_log_k"].iloc[0]
            diff = {q: deltas[q] - logk[q] for q in deltas}
            assert minus.estimate == pytest.approx(aggregate(diff, step)[0], abs=1e-10)


def test_m0_legacy_and_corrected_equal_loops(view, sinks):
    a = view.attention.double().numpy()
    P = view.prompt_length
    fed = sorted(set(int(t) for t in view.step if t >= 0))
    sums = {True: [0.0, 0], False: [0.0, 0]}
    mean_a = a.mean((0, 1))
    for t in fed:  # the accumulated matrix of step t: every slot up to the end of step t
        end = max(i for i in range(view.num_slots) if view.step[i] == t) + 1
        for r in range(P, end):
            for c in range(P, r):
                lab = bool(view.is_parallel[c])
                sums[lab][0] += mean_a[r, c]
                sums[lab][1] += 1
    mp, mn = sums[True][0] / sums[True][1], sums[False][0] / sums[False][1]
    got = prompt_row(am.legacy_reduction(view), "M0", "legacy")
    assert got.estimate == pytest.approx((mn - mp) / mn * 100, abs=1e-9)
    assert got.effect_pct == got.estimate and got.ratio == pytest.approx(mp / mn)

    pairs = loop_pairs(view, sinks.mask_for(view))
    sp = sn = 0.0
    cp = cn = 0
    for (li, hi), pp in pairs.items():
        for q, k in pp:
            if view.is_parallel[k]:
                sp, cp = sp + a[li, hi, q, k], cp + 1
            else:
                sn, cn = sn + a[li, hi, q, k], cn + 1
    got = prompt_row(am.legacy_reduction(view, corrected=True, sinks=sinks), "M0", "corrected")
    assert got.estimate == pytest.approx((sn / cn - sp / cp) / (sn / cn) * 100, abs=1e-9)


def test_find_sinks_equals_a_loop(view):
    # Make slot 8 a sink in layer 1, head 2: most later queries put their mass there.
    s = view.scores.clone()
    s[1, 2, :, 8] = torch.where(torch.isfinite(s[1, 2, :, 8]), s[1, 2, :, 8] + 12.0,
                                s[1, 2, :, 8])
    view.scores, view.attention = s, torch.softmax(s, -1)
    sinks = am.find_sinks(view)
    a = view.attention.double().numpy()
    for li in range(2):
        for hi in range(3):
            for k in range(view.num_slots):
                qs = [q for q in range(k + 1, view.num_slots)
                      if view.step[q] >= 0 and view.visibility[q, k]]
                flagged = k == 0 or (len(qs) >= 4 and np.mean(a[li, hi, qs, k]) > 0.3)
                assert bool(sinks.mask[li, hi, k]) == flagged, (li, hi, k)
    assert sinks.mask[1, 2, 8] and not sinks.mask[0, 0, 8]


def test_natural_spline_basis_spans_natural_cubic_splines():
    scipy_interp = pytest.importorskip("scipy.interpolate")
    knots = np.array([0.3, 1.0, 1.7, 2.9, 3.4])
    # A natural cubic spline with these knots: the interpolant with natural ends.
    spline = scipy_interp.CubicSpline(knots, [0.5, -1.0, 2.0, 0.2, 1.1], bc_type="natural")
    x = np.linspace(0.3, 3.4, 200)
    basis = np.hstack([np.ones((len(x), 1)), am.natural_spline_basis(x, knots)])
    assert basis.shape[1] == len(knots)
    coef, *_ = np.linalg.lstsq(basis, spline(x), rcond=None)
    assert np.max(np.abs(basis @ coef - spline(x))) < 1e-9
    # Linear beyond the boundary knots.
    out = np.array([4.0, 5.0, 6.0])
    second = np.diff(am.natural_spline_basis(out, knots), 2, axis=0)
    assert np.max(np.abs(second)) < 1e-9


def test_sign_convention_of_the_tables():
    row = am.frames.record(metric="M1", variant="plain", layer=0, head=0,
                           estimate=-math.log(2), se=0.1)
    assert row["ratio"] == pytest.approx(0.5) and row["effect_pct"] == pytest.approx(50.0)
    assert row["effect_pct_low"] < 50 < row["effect_pct_high"]
    row = am.frames.record(metric="M0", variant="legacy", layer=-1, head=-1, estimate=-12.1,
                           scale="percent")
    assert row["effect_pct"] == -12.1 and row["ratio"] == pytest.approx(1.121)


def test_m0_compat_labels_are_every_recorded_member_printed_index():
    """The prototype recorded every member's printed index L_t … L_t + k_t − 1 of each set
    with k ≥ 2 and labelled them all; a key is parallel when its slot index is one."""
    from types import SimpleNamespace

    # P = 3; widths 2, 1, 3 → printed starts 3, 5, 6; recorded {3, 4, 6, 7, 8}.
    view = SimpleNamespace(kind="tempo-2025", printed_set_starts=[3, 5, 6],
                           set_widths=[2, 1, 3], num_slots=9)
    assert am.legacy.recorded_printed_indices(view) == [3, 4, 6, 7, 8]
    assert am.legacy.legacy_labels(view).tolist() == [False] * 3 + [True, True, False,
                                                                     True, True, True]
