"""One run's metrics and profiles in a single pass: the per-cell analysis of a study.

The public functions of this package (:func:`attnvar.metrics.analyze`, the profiles of
profiles.py) each count the pairs, read the score grid and fit their models on their
own, for one sink rule at a time; a study needs all of them, with and without the sink
exclusion, on every run. :class:`RunPass` does the shared work once per run:

- the pairs are counted and the score (and attention) grid gathered and checked once;
  the two sink rules are masks of it: per-query sums (M0 corrected, M1 plain, M1m, M1p,
  the profiles' plain contrasts) are products of the grid with key-set weights, one for
  every head and the key sets of both rules, then one product per sink pattern for the
  heads that leave keys out;
- heads are grouped once by the pairs they count (their sink pattern; without the
  exclusion every head counts the base pairs, as do the heads without a generated sink
  under it): a handful of groups for both rules. Each group's responses are gathered
  and demeaned within queries once; M1m draws its size-matched subsets once per group;
- every distance-matched design of the run (M1, the truncations to the first T steps,
  the token classes, one parallel coefficient per query step) is a choice of columns,
  of queries or a split by step of one design — the distance dummies, the parallel
  label and each class's two columns — whose sums per query step
  (:class:`~attnvar.metrics.fixed_effects.ClusterStats`) are computed once per group; a
  fit, its SEs and its cluster influences then need no pair again;
- M2 is fitted once per rule, the H3 terms table reads the fit with the exclusion;
- log-sum-exps come from one exp(s − row max) per run: LSE_S = max + log Σ_S e.

Every number equals the one the public functions give up to rounding (sums in another
order: about 1e-15 relative; ill-conditioned pooled M2 terms about 1e-12);
``tests/python/test_analysis_single_pass.py`` compares the two on every table.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import torch

from .contrast import (
    _groups,
    aggregate_batch,
    average_draws,
    distance_levels,
    draw_orders,
    matched_log_ratios,
    position_terms,
    raw_mass_ratio,
)
from .counting import CaptureView, CountedPairs, Sinks, count_pairs, gather_grid
from .fixed_effects import (
    ClusterStats,
    GroupFit,
    WithinFit,
    cluster_stats,
    collect_fits,
    distinct_rows,
    fit_columns,
    fit_from_stats,
    fit_group,
    mean_over_heads_se,
    pair_groups,
)
from .frames import COLUMNS, HeadEstimates, head_block, lead_columns, table
from .legacy import corrected_blocks, legacy_blocks
from .profiles import (
    MAX_STEPS_GRID,
    PHASES,
    VARIANTS,
    _num_steps,
    distance_table,
    key_classes,
    phase_of,
)
from .regression import regression_blocks, regression_design
from .rollout import rollout_blocks
from .value_weighted import value_weighted_blocks

RULES = (True, False)  # sinks excluded, then not: the order of analyze's rows
SIZE_MATCHED_DRAWS = 16  # mass_ratio's defaults
SIZE_MATCHED_SEED = 0
_ZERO = torch.zeros((), dtype=torch.float64)


class RunPass:
    """The counted pairs of one run under both sink rules, and everything derived from
    them that several metrics share.

    Per-query sums are products of the run's [B, Q, K] grids (B = layers × heads) with
    per-head key weights: for each head, P and N with its sinks left out, and P and N
    without (rule 0 and rule 1, :data:`RULES`); every per-query quantity below has shape
    [2, L, H, Q].

    Parameters
    ----------
    view : the run's CaptureView (scores captured; attention for M0 and M4)
    sinks : from :func:`find_sinks` on the ``top_only`` replay; None: the first slot only
    """

    def __init__(self, view: CaptureView, sinks: Sinks | None):
        self.view = view
        self.sinks = sinks
        pairs = count_pairs(view, sinks=sinks, exclude_sinks=True)
        self.pairs = pairs  # the rule with the exclusion, which the profiles read
        L, H, Q, K = pairs.shape
        self.L, self.H, self.Q, self.K, self.B = L, H, Q, K, L * H
        B = self.B
        self.base = torch.from_numpy(pairs.base)
        self.base_d = self.base.double()
        # The keys (with a counted pair) each head leaves out under the exclusion.
        self.left_out = ((~pairs.include.reshape(B, Q, K).any(1)).numpy()
                         & pairs.base.any(0)[None, :])
        self.kept_keys = torch.from_numpy(~self.left_out)
        self.grid, self.s0 = self._checked_grid("scores")
        self._pattern_groups()
        lab = torch.from_numpy(pairs.key_parallel)
        self.set_keys = torch.stack([lab, ~lab], 1)  # P, N
        sums = self._sums = self._per_query(self.s0, self.set_keys)
        counts = self._counts(self.set_keys)
        self.n_p, self.n_n = counts[..., 0], counts[..., 1]
        self.valid = (self.n_p > 0) & (self.n_n > 0)
        self.mean_n = sums[..., 1] / self.n_n.clamp(min=1)
        self.delta = sums[..., 0] / self.n_p.clamp(min=1) - self.mean_n
        self.n_pairs_valid, self.n_par_valid = self._valid_counts(self.valid)
        self.n_par = self.n_p.sum(-1).long()
        self.step_groups = _groups(pairs, "step")
        steps, self.step_index = np.unique(pairs.query_step, return_inverse=True)
        self.query_steps = steps  # the cluster of index c is the query step steps[c]
        self.n_clusters = len(steps)
        index, levels = distance_levels(pairs)
        self.n_dist = max(len(levels) - 1, 0)
        # The distance dummies of every distance-matched design: one per logical distance
        # but the most frequent (the query effects hold that level).
        x = np.zeros((Q, K, self.n_dist))
        qi, ki = np.nonzero(index >= 1)
        x[qi, ki, index[qi, ki] - 1] = 1.0
        self.x_dist = torch.from_numpy(x)
        self._stats = None
        self._m2 = None
        self._classes_of = None
        self._m1 = None

    # ---- shared state -------------------------------------------------------------------
    def _checked_grid(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The [B, Q, K] f64 grid of ``name`` and its values on the base pairs (0
        elsewhere), checked once: every pair either rule counts must be finite."""
        dense = getattr(self.view, name)
        if dense is None:
            raise ValueError(f"this run did not capture {name}; pass capture="
                             f"attnvar.Capture({'scores=True' if name == 'scores' else ''})")
        grid = gather_grid(dense, self.pairs.query_slots, self.pairs.key_slots)
        grid = grid.reshape(self.B, self.Q, self.K)
        counted = torch.where(self.base, grid, _ZERO)
        # A non-finite counted value makes the sum non-finite; only then look closer.
        if not bool(torch.isfinite(counted.sum())) and not bool(torch.isfinite(counted).all()):
            raise ValueError("a counted pair has a non-finite score: the visibility and the "
                             "capture disagree")
        return grid, counted

    def _per_query(self, x: torch.Tensor, keys: torch.Tensor, rules: int = 2,
                   x_excluded: torch.Tensor | None = None) -> torch.Tensor:
        """Per-query sums of ``x`` ([B, Q, K], 0 off the base pairs) over the key sets
        ``keys`` ([K, m] bool): [rules, L, H, Q, m], rule 0 (with the exclusion) first.
        ``x_excluded``: the values rule 0 reads, when they differ (only for heads that
        leave keys out). Heads with the same pattern share their key weights, and heads
        that leave nothing out have the same sums under both rules."""
        B, Q, K = self.B, self.Q, self.K
        w = keys.double()
        every = (x.reshape(B * Q, K) @ w).reshape(B, Q, -1)
        out = [every.clone()]
        for g, kept in enumerate(self.kept_patterns):
            if g == self.base_group:
                continue
            hs = self.pattern_heads[g]
            src = x if x_excluded is None else x_excluded
            out[0][hs] = (src[hs].reshape(-1, K) @ (w * kept[:, None])).reshape(len(hs), Q, -1)
        if rules == 2:
            out.append(every)
        return torch.stack(out).reshape(rules, self.L, self.H, Q, -1)

    def _counts(self, keys: torch.Tensor, rules: int = 2) -> torch.Tensor:
        """Counted pairs per query in each key set ``keys`` ([K, m] bool),
        [rules, L, H, Q, m]: one product per pattern."""
        w = keys.double()
        per_pattern = torch.stack([self.base_d @ (w * kept[:, None])
                                   for kept in self.kept_patterns])  # (pattern, Q, m)
        out = [per_pattern[torch.from_numpy(self.which)]]
        if rules == 2:
            out.append(per_pattern[self.base_group].expand_as(out[0]))
        return torch.stack(out).reshape(rules, self.L, self.H, self.Q, -1)

    def _valid_counts(self, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Counted and counted parallel pairs of the ``valid`` queries, [2, L, H] each."""
        return (torch.where(valid, self.n_p + self.n_n, _ZERO).sum(-1).long(),
                torch.where(valid, self.n_p, _ZERO).sum(-1).long())

    def _pattern_groups(self) -> None:
        """Heads grouped by the pairs they count, under both rules: the keys a head
        leaves out is its pattern; without the exclusion every head has the empty one."""
        B = self.B
        which, patterns = distinct_rows(self.left_out)
        empty = [g for g, r in enumerate(patterns) if not r.any()]
        if empty:
            base_group = empty[0]
        else:
            patterns.append(np.zeros(self.K, dtype=bool))
            base_group = len(patterns) - 1
        heads = [np.flatnonzero(which == g) for g in range(len(patterns))]
        self.pattern_heads = [torch.from_numpy(h) for h in heads]  # under the exclusion
        self.kept_patterns = [torch.from_numpy(~r).double() for r in patterns]
        heads[base_group] = np.arange(B)
        self.masks = [torch.from_numpy(self.pairs.base & ~r[None, :]) for r in patterns]
        self.groups = pair_groups(self.grid, self.masks, heads)
        # Per rule: (group, its rows, the heads they are).
        excluded = []
        for g in range(len(patterns)):
            hs = np.flatnonzero(which == g)
            if len(hs):
                excluded.append((g, np.searchsorted(self.groups[g].heads, hs), hs))
        self.rule_parts = (excluded, [(base_group, np.arange(B), np.arange(B))])
        self.which, self.base_group = which, base_group

    def _collect(self, fits: list[GroupFit | None], rule: int, width: int,
                 clusters: bool = False, pooled: bool = False) -> WithinFit:
        """The WithinFit of one rule from fits of every group (all its rows); the pooled
        fit only with ``pooled`` (M2 reports it, nothing else reads it)."""
        parts = []
        for g, rows, hs in self.rule_parts[rule]:
            fit = fits[g]
            if fit is not None and len(rows) != len(fit.rows):
                fit = _take_rows(fit, rows)
            parts.append((fit, hs))
        return collect_fits(parts, self.B, width, self.n_clusters if clusters else None,
                            pooled=pooled)

    # ---- metrics (analyze) --------------------------------------------------------------
    def metric_parts(self, top: CaptureView | None = None) -> list[tuple[list[dict], bool]]:
        """The rows of :func:`attnvar.metrics.analyze` of this run (default metrics: M0–M2,
        M3 when value norms were captured, M4 when ``top`` is given), as (column blocks,
        sinks_excluded) in analyze's order."""
        view = self.view
        if view.attention is None:
            raise ValueError("M0 needs attention probabilities (Capture(probabilities=True))")
        parts = [(legacy_blocks(view), False)]
        corrected = self._corrected_sums()
        raw, matched, pos_delta, log_k, pos_valid = self._mass_terms()
        # One aggregation for every per-query metric of both rules.
        stack = torch.cat([self.delta, raw, matched, pos_delta, pos_delta - log_k, log_k])
        valid = torch.cat([self.valid] * 3 + [pos_valid] * 3)
        agg = aggregate_batch(stack, valid, self.step_groups)
        pos_counts = self._valid_counts(pos_valid)
        extra = [{"mean_log_k": agg[0][10 + v]} for v in (0, 1)]

        def est(m, v, counts=(self.n_pairs_valid, self.n_par_valid), extra=None):
            i = 2 * m + v
            return HeadEstimates(agg[0][i], agg[1][i], agg[2][i], counts[0][v].numpy(),
                                 counts[1][v].numpy(), prompt_se=agg[3][i],
                                 extra=extra[v] if extra else {})

        plain, raw_e, matched_e = ([est(m, v) for v in (0, 1)] for m in range(3))
        pos_e, pos_k = ([est(m, v, pos_counts, extra) for v in (0, 1)] for m in (3, 4))
        m1 = self._m1_fits()
        m2, names = self.regression_fits()
        layers, heads, L, H = view.layers, view.heads, self.L, self.H
        for v, excl in enumerate(RULES):
            blocks = corrected_blocks(view, *(t[v] for t in corrected))
            blocks.append(head_block("M1", "plain", layers, heads, plain[v]))
            fit = m1[v]
            coef = fit.coef[:, -1]
            blocks.append(head_block("M1", "distance_matched", layers, heads, HeadEstimates(
                coef.reshape(L, H), fit.se[:, -1].reshape(L, H), fit.n_queries.reshape(L, H),
                fit.n_pairs.reshape(L, H), self.n_par[v].numpy(),
                prompt_se=mean_over_heads_se(coef, fit.influence))))
            blocks.append(head_block("M1m", "raw", layers, heads, raw_e[v]))
            blocks.append(head_block("M1m", "size_matched", layers, heads, matched_e[v]))
            blocks.append(head_block("M1p", "position", layers, heads, pos_e[v]))
            blocks.append(head_block("M1p", "position_minus_log_k", layers, heads, pos_k[v]))
            parts.append((blocks, excl))
            parts.append((regression_blocks(view, m2[v], names,
                                            self.n_par[v].reshape(-1).numpy()), excl))
            if view.value_norms is not None:
                parts.append((value_weighted_blocks(self.rule_pairs(v)), excl))
            if top is not None:
                parts.append((rollout_blocks(view, top, self.sinks, excl), excl))
        return parts

    def rule_pairs(self, v: int) -> CountedPairs:
        """The CountedPairs of rule ``v`` (0: sinks excluded, 1: not)."""
        if v == 0:
            return self.pairs
        L, H, Q, K = self.pairs.shape
        return dataclasses.replace(self.pairs, include=self.base.expand(L, H, Q, K).clone(),
                                   sinks_excluded=False)

    def _corrected_sums(self):
        """M0 corrected's sums per rule and head ([2, L, H] each): attention on P and N,
        their counted pairs, counted queries."""
        a = self._per_query(self._checked_grid("attention")[1], self.set_keys).sum(-2)
        n = torch.stack([self.n_p, self.n_n], -1)
        return (a[..., 0], n.sum(-2)[..., 0], a[..., 1], n.sum(-2)[..., 1],
                ((self.n_p + self.n_n) > 0).sum(-1))

    def _mass_terms(self):
        """M1m raw and size-matched, and M1p's δ_pos and mean log k, per query under both
        rules, from e = exp(s − row max) over the counted keys: LSE_S(s) = max +
        log Σ_S e. (Should a counted set's e all underflow, ~745 nats below the row's
        max, raw and M1p are taken from the log-sum-exp kernels of contrast.py.)"""
        B, Q, K = self.B, self.Q, self.K
        key_step, kp = self.pairs.key_step, self.pairs.key_parallel
        members = torch.from_numpy((key_step[:, None] == np.unique(key_step[kp])[None, :])
                                   & kp[:, None])  # (key, parallel set)
        size = self._counts(members)
        counts = torch.stack([self.n_p, self.n_n], -1)
        top_n = _row_max(self.grid, self.base)
        e_n = torch.where(self.base, (self.s0 - top_n).exp(), _ZERO)
        e_s, top_s = e_n, top_n
        sums = self._per_query(e_n, self.set_keys)
        mass = self._per_query(e_n, members)
        if bool(((counts[0] > 0) & (sums[0] == 0)).any() or ((size[0] > 0) & (mass[0] == 0)).any()):
            # Rule 0 leaves a head's row max out (a sink's score): its own max instead.
            include = self.base[None] & self.kept_keys[:, None, :]
            top_s = _row_max(self.grid, include)
            e_s = torch.where(include, (self.s0 - top_s).exp(), _ZERO)
            sums = self._per_query(e_n, self.set_keys, x_excluded=e_s)
            mass = self._per_query(e_n, members, x_excluded=e_s)
        underflow = bool(((counts > 0) & (sums == 0)).any() or ((size > 0) & (mass == 0)).any())
        zero = _ZERO
        raw = ((sums[..., 0] * self.n_n.clamp(min=1))
               / (sums[..., 1] * self.n_p.clamp(min=1))).log()
        raw = torch.where(self.valid, raw, zero)

        # Size-matched: the subsets of a draw are chosen once per pattern of counted pairs.
        D = SIZE_MATCHED_DRAWS
        orders = draw_orders(Q, K, D, SIZE_MATCHED_SEED)
        lab = torch.from_numpy(kp)
        log_ratio = torch.zeros(2, B, D, Q, dtype=torch.float64)
        for g, group in enumerate(self.groups):
            hs = torch.from_numpy(group.heads)
            base = g == self.base_group  # its rows are every head, read under rule 1
            lr = matched_log_ratios((e_n if base else e_s)[hs], self.masks[g], lab, orders)
            if base:
                log_ratio[1] = lr
                sub = torch.from_numpy(np.flatnonzero(self.which == g))
                log_ratio[0, sub] = lr[sub]
            else:
                log_ratio[0, hs] = lr
        matched = average_draws(log_ratio.reshape(2, self.L, self.H, D, Q), self.valid, D)

        # M1p: each parallel set's counted members combined by LSE.
        top = torch.stack([top_s, top_n]).reshape(2, self.L, self.H, Q, 1)
        has = size > 0
        n_sets = has.sum(-1)
        # Σ over a query's sets of LSE = |sets|·max + Σ log of their masses.
        lse = mass.clamp(min=1e-300).log()
        pos_mean = (torch.where(has, lse, zero).sum(-1) / n_sets.clamp(min=1)
                    + top[..., 0] * (n_sets > 0))
        valid = (n_sets > 0) & (self.n_n > 0)
        # log of the set sizes (small integers) from a table.
        log_of = torch.arange(int(size.max()) + 1 if size.numel() else 1,
                              dtype=torch.float64).clamp(min=1).log()
        log_k = torch.where(valid, log_of[size.long()].sum(-1) / n_sets.clamp(min=1), zero)
        delta = torch.where(valid, pos_mean - self.mean_n, zero)
        if underflow:
            s, in_p, in_n = self._dense_sets()
            raw = raw_mass_ratio(s, in_p, in_n)[0]
            delta, log_k, valid = position_terms(s, in_p, in_n, key_step, kp)
        return raw, matched, delta, log_k, valid

    def _dense_sets(self):
        """Scores and P / N masks of both rules as [2, L, H, Q, K] tensors."""
        include = torch.stack([self.base[None] & self.kept_keys[:, None, :],
                               self.base.expand(self.B, self.Q, self.K)])
        include = include.reshape(2, self.L, self.H, self.Q, self.K)
        s = torch.where(include, self.s0.reshape(self.L, self.H, self.Q, self.K), _ZERO)
        lab = torch.from_numpy(self.pairs.key_parallel)
        return s, include & lab, include & ~lab

    def distance_frame(self, decimals: int = 3, lead: dict | None = None) -> pd.DataFrame:
        """:func:`attnvar.metrics.profiles.distance_profile` of the rule with the
        exclusion."""
        total = self.n_p[0] + self.n_n[0]
        qmean = (self._sums[0].sum(-1)
                 / total.clamp(min=1)).reshape(self.B, self.Q, 1)
        include = self.base[None] & self.kept_keys[:, None, :]
        dm = torch.where(include, self.s0 - qmean, _ZERO)
        return distance_table(dm.sum(0), include.sum(0), self.pairs, decimals, lead)

    def _main_stats(self) -> list[ClusterStats]:
        """Per group, the per-query-step sums of every distance-matched design of the
        run: the distance dummies, the parallel label, then each token class's two
        columns (the class, the class's parallel keys)."""
        if self._stats is None:
            classes = {name: keys for name, keys in self._key_classes().items()
                       if (keys & self.pairs.key_parallel).any()
                       and (keys & ~self.pairs.key_parallel).any()}
            kp = self.pairs.key_parallel
            cols = [kp] + [c for keys in classes.values() for c in (keys, keys & kp)]
            extra = np.broadcast_to(np.stack(cols, -1)[None].astype(np.float64),
                                    (self.Q, self.K, len(cols)))
            x = torch.cat([self.x_dist, torch.from_numpy(np.ascontiguousarray(extra))], -1)
            self._classes = {name: self.n_dist + 1 + 2 * i for i, name in enumerate(classes)}
            self._stats = [cluster_stats(g, g.demean(x), self.step_index, self.n_clusters)
                           for g in self.groups]
        return self._stats

    def _key_classes(self) -> dict[str, np.ndarray]:
        """:func:`~attnvar.metrics.profiles.key_classes` of the run's pairs, once."""
        if self._classes_of is None:
            self._classes_of = key_classes(self.pairs)
        return self._classes_of

    def _m1_fits(self) -> list[WithinFit]:
        """M1 distance-matched under both rules (once: the truncation to every step is
        the fit with the exclusion)."""
        if self._m1 is None:
            cols = np.arange(self.n_dist + 1)
            fits = [fit_columns(st, cols, influence=True) for st in self._main_stats()]
            self._m1 = [self._collect(fits, v, len(cols), clusters=True) for v in (0, 1)]
        return self._m1

    def regression_fits(self) -> tuple[list[WithinFit], list[str]]:
        """M2 under both rules (one fit each, shared by the metrics and the terms)."""
        if self._m2 is None:
            x, names = regression_design(self.pairs)
            x = torch.from_numpy(np.ascontiguousarray(x))
            fits = [fit_group(g, g.demean(x)) for g in self.groups]
            self._m2 = ([self._collect(fits, v, x.shape[-1], pooled=True) for v in (0, 1)],
                        names)
        return self._m2

    def terms_blocks(self) -> list[dict]:
        """M2 with every coefficient, sinks excluded (the H3 terms table)."""
        fits, names = self.regression_fits()
        return regression_blocks(self.view, fits[0], names,
                                 self.n_par[0].reshape(-1).numpy(), terms="all")

    # ---- profiles (sinks excluded) ------------------------------------------------------
    def _subset_deltas(self, keys: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain δ per query and its validity ([M, L, H, Q]) with keys restricted to each
        column of ``keys`` ([K, M] bool), sinks excluded."""
        sets = torch.from_numpy(keys)
        lab = torch.from_numpy(self.pairs.key_parallel)[:, None]
        both = torch.cat([sets & lab, sets & ~lab], 1)
        sums = self._per_query(self.s0, both, rules=1)[0]
        counts = self._counts(both, rules=1)[0]
        M = keys.shape[1]
        n_p, n_n = counts[..., :M], counts[..., M:]
        delta = sums[..., :M] / n_p.clamp(min=1) - sums[..., M:] / n_n.clamp(min=1)
        valid = (n_p > 0) & (n_n > 0)
        return delta.permute(3, 0, 1, 2), valid.permute(3, 0, 1, 2)

    def _phase_stats(self, keys: np.ndarray) -> tuple[list[ClusterStats], list]:
        """Cluster sums of the distance dummies and the parallel label for the rule with
        the exclusion with keys restricted to ``keys`` ([K] bool): its own head groups."""
        base = self.pairs.base & keys[None, :]
        which, patterns = distinct_rows(self.left_out & base.any(0)[None, :])
        heads = [np.flatnonzero(which == g) for g in range(len(patterns))]
        groups = pair_groups(self.grid, [torch.from_numpy(base & ~r[None, :])
                                         for r in patterns], heads)
        kp = np.broadcast_to(self.pairs.key_parallel[None, :, None].astype(np.float64),
                             (self.Q, self.K, 1))
        x = torch.cat([self.x_dist, torch.from_numpy(np.ascontiguousarray(kp))], -1)
        stats = [cluster_stats(g, g.demean(x), self.step_index, self.n_clusters)
                 for g in groups]
        return stats, [(g, np.arange(len(hs)), hs) for g, hs in enumerate(heads)]

    def _step_fit(self, stats: ClusterStats) -> GroupFit | None:
        """The distance-matched fit with one parallel coefficient per query step: the
        parallel column of each step's queries is that step's column of the design, so
        its sums are the step's cluster sums."""
        nA, P, C = self.n_dist, self.n_dist, len(stats.n)
        A = np.arange(nA)
        gram = np.zeros((nA + C, nA + C))
        gram[:nA, :nA] = stats.gram.sum(0)[np.ix_(A, A)]
        cross = stats.gram[:, A, P]  # (step, distance)
        gram[:nA, nA:] = cross.T
        gram[nA:, :nA] = cross
        gram[nA + np.arange(C), nA + np.arange(C)] = stats.gram[:, P, P]
        xty = np.concatenate([stats.xty.sum(0)[:, A], stats.xty[:, :, P].T], 1)
        return fit_from_stats(stats, gram, xty, stats.yty.sum(0), int(stats.n.sum()),
                              int(stats.n_q.sum()))

    def steps_frame(self, phases: bool = True, lead: dict | None = None) -> pd.DataFrame:
        """:func:`attnvar.metrics.profiles.step_profile` of the rule with the exclusion
        (``lead``: constant columns put first, here and in the other tables)."""
        pairs = self.pairs
        num_steps = _num_steps(pairs)
        names, keys = ["all"], [np.ones(self.K, dtype=bool)]
        if phases:
            key_phase = phase_of(pairs.key_step, num_steps)
            names += list(PHASES)
            keys += [key_phase == i for i in range(len(PHASES))]
        delta, valid = self._subset_deltas(np.stack(keys, 1))
        steps = self.query_steps
        onehot = self.step_groups  # [Q, T]
        width = self.n_dist + len(steps)
        cols: dict[str, list] = {k: [] for k in ("variant", "key_phase", "query_step",
                                                  "estimate", "n_queries", "n_heads")}

        def add(variant: str, name: str, keep: np.ndarray, estimate, n_queries, n_heads):
            cols["variant"].append(np.full(keep.sum(), variant, dtype=object))
            cols["key_phase"].append(np.full(keep.sum(), name, dtype=object))
            for k, x in (("query_step", steps), ("estimate", estimate),
                         ("n_queries", n_queries), ("n_heads", n_heads)):
                cols[k].append(np.asarray(x)[keep])

        for i, name in enumerate(names):
            n_queries = (valid[i].any(0).any(0).double() @ onehot).long().numpy()
            if name == "all":
                fits = [self._step_fit(st) for st in self._main_stats()]
                fit = self._collect(fits, 0, width)
            else:
                stats, parts = self._phase_stats(keys[i])
                fit = collect_fits([(self._step_fit(st), hs) for st, (_, _, hs)
                                    in zip(stats, parts, strict=True)], self.B, width,
                                   pooled=False)
            # Distance-matched: per step, the mean over the heads that identify δ_t.
            coef = fit.coef[:, self.n_dist:]
            ok = np.isfinite(coef)
            n_ok = ok.sum(0)
            add("distance_matched", name, n_ok > 0,
                np.where(ok, coef, 0.0).sum(0) / np.maximum(n_ok, 1), n_queries, n_ok)
            # Plain: per step and head the mean over its valid queries, then over heads.
            v = valid[i]
            count = v.double() @ onehot  # (L, H, T)
            has = count > 0
            head_mean = (torch.where(v, delta[i], _ZERO) @ onehot) / count.clamp(min=1)
            n_heads = has.sum((0, 1))
            add("plain", name, (n_heads > 0).numpy(),
                (torch.where(has, head_mean, _ZERO).sum((0, 1)) / n_heads.clamp(min=1)).numpy(),
                n_queries, n_heads.numpy())
        out = {k: np.concatenate(v) for k, v in cols.items()}
        if not len(out["variant"]):
            frame = pd.DataFrame([], columns=list(cols))
            frame.insert(3, "query_phase", pd.Series(dtype=object))
            return lead_columns(frame, lead)
        phase = np.asarray(PHASES, dtype=object)[phase_of(out["query_step"], num_steps)]
        return table({"variant": out["variant"], "key_phase": out["key_phase"],
                      "query_step": out["query_step"].astype(np.int64), "query_phase": phase,
                      "estimate": out["estimate"].astype(np.float64),
                      "n_queries": out["n_queries"].astype(np.int64),
                      "n_heads": out["n_heads"].astype(np.int64)}, lead)

    def truncated_frame(self, grid: tuple[int, ...] = MAX_STEPS_GRID,
                        lead: dict | None = None) -> pd.DataFrame:
        """:func:`attnvar.metrics.profiles.truncated_contrasts` of the rule with the
        exclusion: the queries of steps < T, from the same cluster sums."""
        num_steps = _num_steps(self.pairs)
        cols = np.arange(self.n_dist + 1)
        rows = []
        lengths = sorted({t for t in grid if t < num_steps} | {num_steps})
        # Plain: the queries of steps < T, every T at once.
        keep = torch.from_numpy(self.pairs.query_step[None, :] < np.array(lengths)[:, None])
        valid = self.valid[0][None] & keep[:, None, None, :]
        plain = aggregate_batch(self.delta[0][None].expand_as(valid), valid, self.step_groups)
        for i, T in enumerate(lengths):
            # The query steps are the clusters, in order: steps < T are the first ones.
            first = int(np.searchsorted(self.query_steps, T))
            if first == self.n_clusters:  # every query: M1's own fit
                fit = self._m1_fits()[0]
            else:
                fits = [fit_columns(st, cols, first, influence=True)
                        for st in self._main_stats()]
                fit = self._collect(fits, 0, len(cols), clusters=True)
            coef = fit.coef[:, -1]
            rows.append(("distance_matched", int(T), _finite_mean(coef),
                         mean_over_heads_se(coef, fit.influence)))
            rows.append(("plain", int(T), _finite_mean(plain[0][i]), plain[3][i]))
        return _frame(rows, ["variant", "max_steps", "estimate", "se"],
                      [object, np.int64, np.float64, np.float64], lead)

    def classes_frame(self, lead: dict | None = None) -> pd.DataFrame:
        """:func:`attnvar.metrics.profiles.class_contrasts` of the rule with the
        exclusion."""
        pairs = self.pairs
        classes = self._key_classes()
        names = list(classes)
        stats = self._main_stats()
        if names:
            delta, valid = self._subset_deltas(np.stack([classes[n] for n in names], 1))
            plain = aggregate_batch(delta, valid, self.step_groups)
        rows = []
        for i, name in enumerate(names):
            keys = classes[name]
            n_par = int((keys & pairs.key_parallel).sum())
            n_oth = int((keys & ~pairs.key_parallel).sum())
            for variant in VARIANTS:
                est, se = math.nan, math.nan
                if n_par and n_oth and variant == "distance_matched":
                    c = self._classes[name]
                    cols = np.concatenate([np.arange(self.n_dist), [c, c + 1]])
                    fits = [fit_columns(st, cols, influence=True) for st in stats]
                    fit = self._collect(fits, 0, len(cols), clusters=True)
                    coef = fit.coef[:, -1]
                    if np.isfinite(coef).any():
                        est, se = _finite_mean(coef), mean_over_heads_se(coef, fit.influence)
                elif n_par and n_oth:
                    est, se = _finite_mean(plain[0][i]), float(plain[3][i])
                rows.append((variant, name, est, se, n_par, n_oth))
        return _frame(rows, ["variant", "class", "estimate", "se", "n_parallel_keys",
                             "n_other_keys"],
                      [object, object, np.float64, np.float64, np.int64, np.int64], lead)


def _row_max(grid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[..., Q, 1] max of ``grid`` over each row's keys in ``mask`` (0 for empty rows)."""
    top = torch.where(mask, grid, torch.full((), -math.inf, dtype=grid.dtype)).amax(
        -1, keepdim=True) if grid.shape[-1] else torch.zeros(*grid.shape[:-1], 1,
                                                              dtype=grid.dtype)
    return torch.where(torch.isfinite(top), top, _ZERO)


def _finite_mean(x: np.ndarray) -> float:
    """The mean of the finite entries (the prompt value of per-head estimates), NaN if
    none."""
    finite = np.isfinite(x)
    return float(x[finite].mean()) if finite.any() else math.nan


def _take_rows(fit: GroupFit, index: np.ndarray) -> GroupFit:
    return dataclasses.replace(
        fit, rows=fit.rows[index], xty=fit.xty[index], yty=fit.yty[index], coef=fit.coef[index],
        se=fit.se[index], influence=None if fit.influence is None else fit.influence[index])


def _frame(rows: list[tuple], columns: list[str], dtypes: list,
           lead: dict | None = None) -> pd.DataFrame:
    """A table of ``rows`` (tuples in ``columns`` order, cast to ``dtypes``), with the
    constant columns ``lead`` first."""
    if not rows:
        return lead_columns(pd.DataFrame([], columns=columns), lead)
    data = list(zip(*rows, strict=True))
    return table({c: np.asarray(d, dtype=t)
                  for c, d, t in zip(columns, data, dtypes, strict=True)}, lead)


def metrics_frame(parts: list[tuple[list[dict], bool]], *, prompt: str | None, kind: str,
                  encoding: str, keep=None, lead: dict | None = None) -> pd.DataFrame:
    """One table from (column blocks, sinks_excluded) parts: the concatenation of
    :func:`attnvar.metrics.frames.frame` of each part (COLUMNS, then each part's extra
    columns in order of first appearance, NaN where a part lacks them), built once;
    ``keep(columns)`` selects rows; ``lead``: constant columns put first."""
    parts = [(b, excl) for blocks, excl in parts for b in blocks if len(b["estimate"])]
    names = [c for c in COLUMNS if c not in ("prompt", "kind", "encoding", "sinks_excluded")]
    extra: list[str] = []
    for b, _ in parts:
        extra += [k for k in sorted(set(b) - set(names)) if k not in extra]
    sizes = [len(b["estimate"]) for b, _ in parts]
    cols = {}
    for name in names + extra:
        cols[name] = np.concatenate([b[name] if name in b else np.full(n, np.nan)
                                     for (b, _), n in zip(parts, sizes, strict=True)])
    cols["sinks_excluded"] = np.concatenate([np.full(n, excl, dtype=bool)
                                             for (_, excl), n in zip(parts, sizes, strict=True)])
    rows = keep(cols) if keep is not None else np.ones(sum(sizes), dtype=bool)
    n = int(rows.sum())
    out = {"prompt": pd.Series([prompt] * n, dtype=object),
           "kind": np.full(n, kind, dtype=object), "encoding": np.full(n, encoding, dtype=object)}
    for name in COLUMNS[3:]:
        out[name] = cols[name][rows]
    for name in extra:
        out[name] = cols[name][rows]
    return table(out, lead)


__all__ = ["RULES", "RunPass", "metrics_frame"]
