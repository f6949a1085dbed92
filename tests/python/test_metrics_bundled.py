"""Metrics on the bundled SmolLM2-135M: positive control, M0 on the compat preset against
an independent implementation of the prototype's metric, and the placebo on top_only runs."""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

import attnvar
import attnvar.metrics as am
from attnvar.util.threads import limit_forked_threads, start_context

PROMPT = "The cat sat on the"
STEPS = [[" mat", " floor"], [" and"], [" the", " a"], [" dog"], [" was", " is"], [" very"],
         [" happy", " sad", " tired"], ["."], [" It"], [" ran"], [" away", " home"],
         [" quickly", " slowly"], [","], [" because"], [" it", " he", " she"], [" was"],
         [" hungry", " tired"], ["."]]


@pytest.fixture(scope="module")
def bundled(bundled_path):
    return attnvar.load_model(bundled_path)


def prompt_estimate(df, metric, variant):
    rows = df[(df.metric == metric) & (df.variant == variant) & (df.layer == -1)
              & (df.term == "parallel")]
    return float(rows.estimate.iloc[0])


def per_head(df, metric, variant, num_layers, num_heads):
    out = np.full((num_layers, num_heads), np.nan)
    sub = df[(df.metric == metric) & (df.variant == variant) & (df.layer >= 0)]
    out[sub.layer.to_numpy(), sub["head"].to_numpy()] = sub.estimate.to_numpy()
    return out


# ---- positive control ----------------------------------------------------------------

def test_positive_control_injected_delta_is_recovered_in_its_layer(bundled):
    """Δ = −log 2 on parallel keys' scores in one layer: β and δ move by exactly Δ there,
    not at all before it; the propagated change in later layers is printed."""
    tree = attnvar.Tree.build(bundled, PROMPT, STEPS)
    base = bundled.replay(tree, "shared_isolated", capture=attnvar.Capture(scores=True))
    sinks = am.find_sinks(bundled.replay(tree, "top_only", capture=attnvar.Capture()))
    parallel = [int(i) for i in np.flatnonzero(base.slots["is_parallel"].to_numpy())]
    delta = -math.log(2)
    L, H = bundled.num_layers, bundled.num_heads

    def estimates(run):
        view = am.as_view(run)
        pairs = am.count_pairs(view, sinks=sinks)
        return {
            "M2": per_head(am.logit_regression(pairs), "M2", "per_head", L, H),
            "M1": per_head(am.score_contrast(pairs), "M1", "plain", L, H),
            "M1dm": per_head(am.score_contrast(pairs, distance_matched=True), "M1",
                             "distance_matched", L, H),
        }

    before = estimates(base)
    assert np.isfinite(before["M2"]).all()
    for layer in (3, 15, 27):
        hit = bundled.replay(tree, "shared_isolated", capture=attnvar.Capture(scores=True),
                             interventions=[{"layer_begin": layer, "layer_end": layer + 1,
                                             "key_slots": parallel, "delta": delta}])
        after = estimates(hit)
        for name in after:
            diff = after[name] - before[name]
            err = np.abs(diff[layer] - delta).max()
            print(f"[positive control] {name} layer {layer}: max |Δβ − Δ| = {err:.2e}")
            assert err < 1e-4
            assert np.abs(diff[:layer]).max() < 1e-9  # earlier layers untouched
        later = after["M2"] - before["M2"]
        shown = [lyr for lyr in (layer + 1, layer + 2, layer + 4, L - 1) if layer < lyr < L]
        print(f"[positive control] injected at {layer}: mean Δβ(M2) in later layers "
              + ", ".join(f"{lyr}: {later[lyr].mean():+.4f}" for lyr in sorted(set(shown))))


# ---- M0 on the compat preset -----------------------------------------------------------

def tempo_legacy_reduction(run) -> float:
    """The prototype's metric written from its published description, on the preset's passes:
    rebuild every step's accumulated matrix (S_i = P + 1 + i rows), average over layers
    and heads, pool rows ≥ P and keys P ≤ c < row, label a key parallel when its index is
    a recorded printed index (every member of a set of k ≥ 2: L_t … L_t + k_t − 1)."""
    P = len(run.tree.prompt)
    widths = [len(s.members) for s in run.tree.steps]
    printed, recorded = P, set()
    for k in widths:
        if k >= 2:
            recorded.update(range(printed, printed + k))
        printed += k
    L = len(run.passes[0].attention)
    H = run.passes[0].attention[0].shape[0]
    sums = {True: 0.0, False: 0.0}
    counts = {True: 0, False: 0}
    for i in range(len(widths)):
        size = P + 1 + i
        acc = torch.zeros(L, H, size, size, dtype=torch.float64)
        for p in run.passes:
            if p.first_slot + p.num_queries > size:
                continue
            for li, a in enumerate(p.attention):  # (head, query, key)
                acc[li, :, p.first_slot:p.first_slot + p.num_queries, : a.shape[-1]] = a.double()
        mean = acc.mean((0, 1))
        for row in range(P, size):
            for col in range(P, row):
                lab = col in recorded
                sums[lab] += float(mean[row, col])
                counts[lab] += 1
    mean_p = sums[True] / counts[True]
    mean_n = sums[False] / counts[False]
    return (mean_n - mean_p) / mean_n * 100.0


@pytest.mark.parametrize("bug", [False, True])
def test_m0_on_a_compat_run_equals_an_independent_implementation(bundled, bug):
    run = bundled.tempo2025(PROMPT, threshold=0.1, max_steps=10, emulate_isolation_bug=bug,
                            capture=attnvar.Capture())
    assert any(len(s.members) >= 2 for s in run.tree.steps)
    expected = tempo_legacy_reduction(run)
    df = am.legacy_reduction(run)
    got = prompt_estimate(df, "M0", "legacy")
    print(f"[compat M0] bug={bug}: attnvar {got:+.6f} %, independent {expected:+.6f} %")
    assert got == pytest.approx(expected, abs=1e-9)
    # The prototype's labels are printed indices, not parallel slots: they differ here.
    view = am.as_view(run)
    assert not np.array_equal(am.legacy.legacy_labels(view)[len(run.tree.prompt):],
                              view.is_parallel[len(run.tree.prompt):])
    corrected = prompt_estimate(am.legacy_reduction(run, corrected=True), "M0", "corrected")
    assert np.isfinite(corrected) and corrected != pytest.approx(got)


# ---- placebo on top_only runs -----------------------------------------------------------

# Share of steps with k ≥ 2 in 10 bundled-model generations (threshold 0.1, isolated,
# core-suite prompts 0, 4, …, 36): 161 of 259 steps.
LABELLED_FRACTION = 0.62


def top_only_views(bundled, count, tokens, layers):
    """top_only replays of plain text (two core-suite prompts joined), each token a step."""
    texts = [p.text for p in attnvar.prompts.suite("core")]
    views = []
    for j in range(count):
        ids = bundled.encode(texts[2 * j] + " " + texts[2 * j + 1])
        tree = attnvar._core.Tree.build(ids[:4], [[i] for i in ids[4:4 + tokens]])
        run = bundled.replay(tree, "top_only", capture=attnvar.Capture(layers=layers,
                                                                         scores=True))
        views.append(am.as_view(run))
    return views


def placebo_rejections(views, draws, seed, fraction=LABELLED_FRACTION,
                       metrics=("M1", "M1 distance-matched", "M2"), workers=1):
    """Share of draws where a one-sample t-test across prompts rejects at α = .05.
    Prompts without an estimate in a draw (a short generation with no pair of P and N
    keys, or β not identified) are left out of that draw's test. ``workers`` > 1 splits
    the draws between that many one-thread processes, worker k drawing from seed + k."""
    if workers == 1:
        counts = _placebo_rejected(views, draws, seed, fraction, metrics)
    else:
        shares = [draws // workers + (k < draws % workers) for k in range(workers)]
        with ProcessPoolExecutor(workers, mp_context=start_context(1),
                                 initializer=limit_forked_threads, initargs=(1,)) as pool:
            parts = list(pool.map(_placebo_rejected, [views] * workers, shares,
                                  [seed + k for k in range(workers)], [fraction] * workers,
                                  [metrics] * workers))
        counts = {m: sum(part[m] for part in parts) for m in metrics}
    return {m: r / draws for m, r in counts.items()}


def _placebo_rejected(views, draws, seed, fraction, metrics) -> dict[str, int]:
    """How many of ``draws`` placebo draws (rng seeded ``seed``) each metric rejects."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    sinks = [am.find_sinks(v) for v in views]
    rejected = {m: 0 for m in metrics}
    for _ in range(draws):
        est = {m: [] for m in metrics}
        for view, sink in zip(views, sinks, strict=True):
            labels = am.placebo_labels(view, fraction, rng)
            pairs = am.count_pairs(view, sinks=sink, labels=labels)
            if "M1" in metrics:
                est["M1"].append(am.contrast_estimates(pairs).prompt_estimate)
            if "M1 distance-matched" in metrics:
                est["M1 distance-matched"].append(
                    am.contrast_estimates(pairs, distance_matched=True).prompt_estimate)
            if "M2" in metrics:
                beta = am.regression_fit(pairs)[0].coef[:, -1]
                finite = np.isfinite(beta)
                est["M2"].append(float(beta[finite].mean()) if finite.any() else np.nan)
        for m in metrics:
            if stats.ttest_1samp(est[m], 0.0, nan_policy="omit").pvalue < 0.05:
                rejected[m] += 1
    return rejected


def test_placebo_on_top_only_runs_rejects_at_the_nominal_rate(bundled):
    """Random steps labelled parallel on plain sequences: M1 (plain and distance-matched)
    and M2 reject in 2–9 % of 200 draws (12 prompts × 24 tokens, layers 0, 9, 18, 27)."""
    pytest.importorskip("scipy")
    views = top_only_views(bundled, count=12, tokens=24, layers=[0, 9, 18, 27])
    rates = placebo_rejections(views, draws=200, seed=2025)
    print(f"[placebo] rejection rates over 200 draws: {rates}")
    for rate in rates.values():
        assert 0.02 <= rate <= 0.09


@pytest.mark.slow
def test_placebo_full_model_generated_trees(bundled):
    """The placebo on top_only replays of generated trees, all layers and heads, the
    labelled fraction measured on the same generations: 400 draws, 24 prompts."""
    pytest.importorskip("scipy")
    prompts = attnvar.prompts.suite("core")[:24]
    views, widths = [], []
    for p in prompts:
        gen = bundled.generate(p.text, threshold=0.1, max_steps=30)
        widths += [len(s.members) for s in gen.tree.steps]
        run = bundled.replay(gen.tree, "top_only", capture=attnvar.Capture(scores=True))
        views.append(am.as_view(run))
    fraction = float(np.mean(np.asarray(widths) >= 2))
    steps = [int((v.step >= 0).sum()) for v in views]
    print(f"[placebo slow] labelled fraction of the generations: {fraction:.3f}; "
          f"steps per generation: {steps}")
    # Two processes (CI has two cores, and this is its longest test): 200 draws each.
    rates = placebo_rejections(views, draws=400, seed=7, fraction=fraction, workers=2)
    print(f"[placebo slow] rejection rates over 400 draws: {rates}")
    for rate in rates.values():
        assert 0.02 <= rate <= 0.09
