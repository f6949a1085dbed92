"""attnvar.predictability: grouped cross-validation recovers a known signal, finds none in
noise, is not fooled by duplicated rows within a prompt; folds and features by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from attnvar import predictability as P
from attnvar.engine.records import tree_from_dict
from attnvar.prompts import Prompt


def linear_frame(seed: int, n: int = 400, beta=(1.0, 0.5, 0.0), noise_sd: float = 1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(beta)))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(len(beta))])
    frame["effect"] = x @ np.asarray(beta) + rng.normal(0.0, noise_sd, size=n)
    frame["prompt_id"] = [f"p{i:03d}" for i in range(n)]
    return frame


# ---- cross-validated R² and sign accuracy ----------------------------------------------------
def test_linear_signal_cv_r2_near_truth():
    # y = 1·f0 + 0.5·f1 + 0·f2 + N(0, 1), f ~ N(0, I): the population R² is
    # Var(signal)/Var(y) = 1.25/2.25 = 0.5556. Estimating 3 slopes from 320 training rows
    # costs ≈ (1 − R²)·p/n_train ≈ 0.444·3/320 ≈ 0.004, so the expected CV R² ≈ 0.55
    # (measured: mean 0.549, SD 0.035 over 40 simulated data sets). The mean over 10 data
    # sets has SE ≈ 0.011.
    r2 = [P.predict_effect(linear_frame(100 + s), "effect", ["f0", "f1", "f2"],
                           n_permutations=0).summary["cv_r2"] for s in range(10)]
    assert np.mean(r2) == pytest.approx(0.5556, abs=0.035)
    assert min(r2) > 0.4


def test_linear_signal_sign_accuracy_and_permutation_p():
    res = P.predict_effect(linear_frame(7), "effect", ["f0", "f1", "f2"], n_permutations=19)
    s = res.summary
    # The sign of y is predictable from the same signal: P(sign right) for a probit-like
    # boundary at corr(y, signal) = 0.745 is 1/2 + arcsin(0.745)/π ≈ 0.77.
    assert s["sign_acc"] == pytest.approx(0.77, abs=0.06)
    assert s["baseline_acc"] < 0.56  # the sign of y is near balanced
    assert s["sign_gain"] > 0.15
    # no permutation beats a real signal: p = 1/(1 + 19)
    assert s["p_r2"] == pytest.approx(1 / 20) and s["p_sign"] == pytest.approx(1 / 20)
    assert (s["n"], s["n_groups"], s["n_splits"], s["n_features"]) == (400, 400, 5, 3)
    coef = res.coefficients.set_index("feature")["ridge"]
    assert coef["f0"] > coef["f1"] > abs(coef["f2"])


def test_pure_noise_r2_not_above_zero_and_sign_at_baseline():
    # No feature carries information: the best out-of-fold predictor is the training mean,
    # whose expected CV R² is slightly negative (−1/n_train·… per fold); sign accuracy
    # should match the majority-sign baseline up to noise (SD ≈ 0.025 per data set).
    r2, gain = [], []
    for s in range(10):
        res = P.predict_effect(linear_frame(200 + s, beta=(0.0, 0.0, 0.0)), "effect",
                               ["f0", "f1", "f2"], n_permutations=0).summary
        r2.append(res["cv_r2"])
        gain.append(res["sign_acc"] - res["baseline_acc"])
    assert max(r2) < 0.02
    assert np.mean(r2) <= 0.0
    assert abs(np.mean(gain)) < 0.03


def test_cv_r2_is_against_the_in_fold_training_mean():
    frame = linear_frame(3, n=60, beta=(0.3, 0.0, 0.0))
    res = P.predict_effect(frame, "effect", ["f0", "f1", "f2"], n_splits=4,
                           n_permutations=0)
    pred = res.predictions
    ref = np.empty(len(pred))
    for f in range(4):
        ref[pred["fold"].to_numpy() == f] = pred.loc[pred["fold"] != f, "target"].mean()
    sse = ((pred["target"] - pred["pred"]) ** 2).sum()
    sst = ((pred["target"] - ref) ** 2).sum()
    assert res.summary["cv_r2"] == pytest.approx(1 - sse / sst)
    # the in-fold majority sign: positive when more than half the training rows are
    for f in range(4):
        train = pred.loc[pred["fold"] != f, "target"]
        test = pred[pred["fold"] == f]
        assert (test["baseline_positive"] == ((train > 0).mean() > 0.5)).all()
    base = (pred["baseline_positive"] == (pred["target"] > 0)).mean()
    assert res.summary["baseline_acc"] == pytest.approx(base)
    assert res.folds["n_test"].sum() == 60
    assert res.folds["sse"].sum() == pytest.approx(sse)


# ---- groups -----------------------------------------------------------------------------------
def test_group_folds_by_hand():
    # first appearance a b c d e → group numbers 0..4 → folds 0 1 0 1 0
    assert list(P.group_folds(list("aabcccde"), 2, seed=None)) == [0, 0, 1, 0, 0, 0, 1, 0]
    assert list(P.group_folds(list("aabcccde"), 3, seed=None)) == [0, 0, 1, 2, 2, 2, 0, 1]
    groups = np.repeat([f"g{i}" for i in range(23)], 3)
    folds = P.group_folds(groups, 5, seed=4)
    per_group = pd.Series(folds).groupby(groups).nunique()
    assert (per_group == 1).all()  # a group never spans two folds
    counts = pd.Series(folds).groupby(groups).first().value_counts()
    assert counts.max() - counts.min() <= 1  # 23 groups → 5, 5, 5, 4, 4
    assert list(P.group_folds(groups, 5, seed=4)) == list(folds)
    assert list(P.group_folds(groups, 5, seed=5)) != list(folds)


def test_groups_never_split_in_predict_effect():
    frame = linear_frame(5, n=90)
    frame["prompt_id"] = np.repeat([f"p{i}" for i in range(30)], 3)
    res = P.predict_effect(frame, "effect", ["f0", "f1"], n_permutations=0, seed=2)
    assert (res.predictions.groupby("group")["fold"].nunique() == 1).all()
    np.testing.assert_array_equal(res.predictions["fold"],
                                  P.group_folds(frame["prompt_id"], 5, seed=2))
    assert res.folds["n_groups_test"].sum() == 30


def test_duplicated_rows_within_a_group_do_not_inflate_r2():
    # 40 prompts, 60 pure-noise features, the target pure noise; every prompt's row is
    # repeated 5 times. Ungrouped CV puts copies of a test row in training; with more
    # features than prompts the ridge fit interpolates them, so the leaked R² is near 1.
    # Grouped CV sees each prompt only in its own fold: the copies change nothing (the
    # mean-loss objective weighs a duplicated prompt as one), so its R² equals the R² of
    # the frame without copies, ≤ 0.
    rng = np.random.default_rng(11)
    base = pd.DataFrame(rng.normal(size=(40, 60)), columns=[f"x{i}" for i in range(60)])
    base["effect"] = rng.normal(size=40)
    base["prompt_id"] = [f"p{i}" for i in range(40)]
    dup = base.loc[base.index.repeat(5)].reset_index(drop=True)
    feats = [f"x{i}" for i in range(60)]
    single = P.predict_effect(base, "effect", feats, n_permutations=0).summary["cv_r2"]
    grouped = P.predict_effect(dup, "effect", feats, n_permutations=0).summary["cv_r2"]
    leaked = P.predict_effect(dup, "effect", feats, groups=None,
                              n_permutations=0).summary["cv_r2"]
    assert grouped == pytest.approx(single, abs=1e-9)
    assert grouped <= 0.0
    assert leaked > 0.9


def test_permutation_moves_whole_groups():
    groups = np.repeat(np.arange(6), [2, 2, 2, 3, 3, 1])
    y = groups.astype(float) * 10 + np.tile([0.0, 1.0, 2.0], 6)[: groups.size]
    blocks = P._exchangeable_blocks(groups)
    # sizes 2 (groups 0, 1, 2) and 3 (groups 3, 4) can be exchanged; group 5 cannot
    assert sorted(len(b) for b in blocks) == [2, 3]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        yp = P._permute_across_groups(y, blocks, rng)
        for g in range(6):
            tens = set((yp[groups == g] // 10).tolist())
            assert len(tens) == 1  # a block stays whole
            src = tens.pop()
            assert (groups == src).sum() == (groups == g).sum()  # from a same-size group
            assert yp[groups == g].tolist() == y[groups == src].tolist()  # order kept
        seen.add(tuple(yp))
    assert len(seen) > 1
    assert yp[groups == 5].tolist() == y[groups == 5].tolist()


def test_categorical_feature_is_one_hot():
    rng = np.random.default_rng(9)
    cats = np.array(["narrative", "code", "lists"])[rng.integers(0, 3, 150)]
    shift = pd.Series(cats).map({"narrative": 1.0, "code": -1.0, "lists": 0.0}).to_numpy()
    frame = pd.DataFrame({"category": cats, "effect": shift + rng.normal(0, 0.5, 150),
                          "prompt_id": np.arange(150)})
    res = P.predict_effect(frame, "effect", ["category"], n_permutations=0)
    # population R² = Var(shift)/(Var(shift) + 0.25) = (2/3)/(2/3 + 1/4) = 0.727
    assert res.summary["cv_r2"] == pytest.approx(0.727, abs=0.1)
    assert res.settings["design_columns"] == ["category=code", "category=lists",
                                              "category=narrative"]


def test_clear_errors():
    frame = linear_frame(1, n=40)
    with pytest.raises(KeyError, match=r"\['nope', 'gone'\]"):
        P.predict_effect(frame, "effect", ["f0", "nope", "gone"])
    with pytest.raises(KeyError, match="missing_target"):
        P.predict_effect(frame, "missing_target", ["f0"])
    few = frame.assign(prompt_id=np.repeat(["a", "b", "c", "d"], 10))
    with pytest.raises(ValueError, match="too few groups: 4"):
        P.predict_effect(few, "effect", ["f0"], n_splits=5)
    with pytest.raises(ValueError, match="constant"):
        P.predict_effect(frame.assign(effect=2.5), "effect", ["f0"])
    with pytest.raises(ValueError, match="at least one feature"):
        P.predict_effect(frame, "effect", [])
    with pytest.raises(ValueError, match="n_splits must be ≥ 2"):
        P.predict_effect(frame, "effect", ["f0"], n_splits=1)
    # missing targets are dropped and counted; missing features imputed in-fold
    holes = frame.copy()
    holes.loc[:4, "effect"] = np.nan
    holes.loc[5:9, "f0"] = np.nan
    s = P.predict_effect(holes, "effect", ["f0", "f1"], n_permutations=0).summary
    assert (s["n"], s["n_dropped"]) == (35, 5) and np.isfinite(s["cv_r2"])


# ---- features ---------------------------------------------------------------------------------
def _tree(steps):
    """steps: list of (entropy, [(token_id, probability, is_eos), ...])."""
    return tree_from_dict({"prompt": [1, 40, 41, 42, 43], "steps": [
        {"entropy": e, "members": [
            {"token_id": t, "probability": p, "rank": r, "is_eos": eos, "slot": None}
            for r, (t, p, eos) in enumerate(ms)]}
        for e, ms in steps]})


def test_prompt_features_by_hand():
    tree = _tree([
        (0.5, [(7, 0.9, False)]),
        (2.0, [(8, 0.4, False), (9, 0.3, False), (2, 0.2, True)]),
        (1.5, [(10, 0.6, False), (11, 0.25, False)]),
        (0.1, [(12, 0.97, False)]),
    ])
    run = SimpleNamespace(tree=tree, prompt_text="The capital of France is Paris.",
                          model={"bos_id": 1}, options={"threshold": 0.2})
    prompt = Prompt(id="x", text=run.prompt_text, category="factual", structure="complete")
    f = P.prompt_features(run, first_steps=3, prompt=prompt)
    assert list(f) == list(P.FEATURE_DOCS)
    assert f["prompt_tokens"] == 4  # BOS not counted
    assert f["prompt_chars"] == 31
    assert (f["ends_sentence"], f["ends_punct"], f["ends_newline"]) == (1.0, 1.0, 0.0)
    assert (f["category"], f["structure"], f["threshold"]) == ("factual", "complete", 0.2)
    # first 3 steps: widths 1, 3, 2 → parallel share 2/3, mean width 2, max 3
    assert f["early_steps"] == 3
    assert f["early_parallel_share"] == pytest.approx(2 / 3)
    assert (f["early_mean_width"], f["early_max_width"]) == (pytest.approx(2.0), 3.0)
    assert f["early_mean_entropy"] == pytest.approx((0.5 + 2.0 + 1.5) / 3)
    assert f["early_top_prob"] == pytest.approx((0.9 + 0.4 + 0.6) / 3)
    assert f["early_set_mass"] == pytest.approx((0.9 + 0.9 + 0.85) / 3)
    assert f["early_eos"] == 1.0
    # one step only; no Prompt → category and structure unknown; a mid-sentence ending
    run2 = SimpleNamespace(tree=tree, prompt_text="Once upon a time, the",
                           model={"bos_id": None}, options={})
    g = P.prompt_features(run2, first_steps=1)
    assert g["prompt_tokens"] == 5 and g["category"] is None and g["structure"] is None
    assert (g["ends_sentence"], g["ends_punct"]) == (0.0, 0.0)
    assert np.isnan(g["threshold"])
    assert (g["early_steps"], g["early_parallel_share"], g["early_eos"]) == (1.0, 0.0, 0.0)
    assert g["early_top_prob"] == pytest.approx(0.9)
    colon = SimpleNamespace(tree=tree, prompt_text="Three tips:\n", model={}, options={})
    h = P.prompt_features(colon)
    assert (h["ends_sentence"], h["ends_punct"], h["ends_newline"]) == (0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="first_steps"):
        P.prompt_features(run, first_steps=0)


def test_prompt_features_of_a_tiny_generated_run():
    pytest.importorskip("transformers")
    import torch
    from tiny_models import attnvar_model, tiny_hf_model

    import attnvar  # noqa: F401  (loads torch before the extension)
    from attnvar.model import Model

    model = Model(attnvar_model(tiny_hf_model("llama", seed=11)), None, {"note": "tiny"},
                  [2], "tiny", torch.float32)
    run = model.generate([1, 17, 42, 9, 33], threshold=0.04, max_steps=6)
    f = P.prompt_features(run, first_steps=4)
    # by hand from the run's slot table (one row per fed member) and entropies; this model
    # has no tokenizer, hence no BOS id: all 5 prompt ids count
    slots = run.slots
    gen = slots[~slots["is_prompt"] & (slots["step"] < 4)]
    widths = gen.groupby("step")["set_width"].first()
    top = gen[gen["rank"] == 0]["probability"]
    assert f["prompt_tokens"] == 5 and f["early_steps"] == 4
    assert f["early_parallel_share"] == pytest.approx((widths >= 2).mean())
    assert f["early_mean_width"] == pytest.approx(widths.mean())
    assert f["early_max_width"] == widths.max()
    assert f["early_mean_entropy"] == pytest.approx(np.mean(run.entropies[:4]))
    assert f["early_top_prob"] == pytest.approx(top.mean())
    assert f["early_set_mass"] == pytest.approx(gen.groupby("step")["probability"].sum().mean())
    assert f["early_eos"] == 0.0  # no step < 4 holds an EOS (the tree would show it)
    assert not any(m.is_eos for s in run.tree.steps[:4] for m in s.members)
    assert f["threshold"] == 0.04
    print("tiny run features:", {k: v for k, v in f.items() if k.startswith("early")})


@pytest.mark.slow
def test_null_permutation_p_is_calibrated():
    # docs/statistics.md, "no signal": 80 prompts, 8 noise features, 60 data sets, 49
    # permutations each. With exchangeable rows P(p ≤ .05) = 2/50 = 4 %; over 60 data sets
    # the count is Binomial(60, 0.04) (mean 2.4, P(count ≥ 7) ≈ 0.01).
    r2, hits_r2, hits_sign = [], 0, 0
    for s in range(60):
        frame = linear_frame(500 + s, n=80, beta=(0.0,) * 8)
        res = P.predict_effect(frame, "effect", [f"f{i}" for i in range(8)],
                               n_permutations=49).summary
        r2.append(res["cv_r2"])
        hits_r2 += res["p_r2"] <= 0.05
        hits_sign += res["p_sign"] <= 0.05
    print(f"\nnull: CV R² {np.mean(r2):.4f} ± {np.std(r2, ddof=1):.4f}; p_r2 ≤ .05 in "
          f"{hits_r2}/60, p_sign ≤ .05 in {hits_sign}/60")
    assert hits_r2 <= 6 and hits_sign <= 6
    assert np.mean(r2) < 0.005
