"""attnvar.degeneracy: each metric on a hand case, hand-written loops flagged, ordinary
generations of the bundled model mostly not."""

from __future__ import annotations

import pytest
from attnvar import degeneracy as D

# ---- metrics on hand cases --------------------------------------------------------------------


def test_seq_rep_and_distinct_by_hand():
    # 4-grams of 1 2 3 4 1 2 3 4: 1234 2341 3412 4123 1234 → 4 distinct of 5 → 0.2
    assert D.seq_rep_n([1, 2, 3, 4, 1, 2, 3, 4], 4) == pytest.approx(0.2)
    assert D.seq_rep_n([1, 2, 3], 4) != D.seq_rep_n([1, 2, 3], 4)  # NaN: no 4-gram
    assert D.distinct_n([1, 1, 2, 3], 1) == pytest.approx(3 / 4)
    assert D.distinct_n([1, 1, 2, 3], 2) == pytest.approx(1.0)  # (1,1) (1,2) (2,3)
    assert D.distinct_n([1, 2, 1, 2], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)


def test_zlib_ratio_by_hand():
    # zlib level 9: 100 × "a" → 12 bytes; "abcdefghij" → 18 bytes
    assert D.zlib_ratio("a" * 100) == pytest.approx(100 / 12)
    assert D.zlib_ratio("abcdefghij") == pytest.approx(10 / 18)


def test_tail_loop_by_hand():
    assert D.tail_loop("a b c a b c a b".split()) == (3, pytest.approx(8 / 3))
    assert D.tail_loop([7, 7, 7, 7, 7]) == (1, 5.0)
    assert D.tail_loop([1, 2, 3, 4]) == (0, 1.0)
    # a doubled final token is period 1 with 2 repeats, below the flag's 3
    assert D.tail_loop([1, 2, 3, 9, 9]) == (1, 2.0)


def test_entropy_tail_by_hand():
    assert D.tail_entropy([3.0, 2.0, 1.0, 0.5], tail_steps=2) == pytest.approx(0.75)
    assert D.low_entropy_tail([1.0, 0.05, 0.01], floor=0.1) == 2
    assert D.low_entropy_tail([0.01, 0.05, 1.0], floor=0.1) == 0


def test_metrics_of_a_word_text():
    m = D.metrics("the cat sat on the mat .")
    assert m["unit"] == "words" and m["n_tokens"] == 7
    assert m["distinct_1"] == pytest.approx(6 / 7)
    assert m["seq_rep_4"] == 0.0


# ---- flags ---------------------------------------------------------------------------
LOOPS = {
    "zeros": "The answer is " + "0 " * 25,
    "one_dot": "Steps: " + "1. " * 20,
    "phrase": "I think that " + "I don't know what to do. " * 5,
}


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_hand_loops_flagged_and_excluded(name):
    f = D.flags(LOOPS[name])
    assert f["tail_loop"], (name, D.metrics(LOOPS[name]))
    assert f["seq_rep_4"] and f["distinct_2"], f
    assert D.ExclusionRule().excludes(f)
    # without the structural flag the n-gram flags still exclude it (≥ 2 of 5)
    assert D.ExclusionRule(always=()).excludes(f)


def test_id_loop_and_entropy_collapse_flagged():
    ids = [5, 17, 99, 4, 8, 23, 61] + [42] * 23
    run = {"ids": ids, "text": "", "entropies": [2.0] * 10 + [0.01] * 20}
    f = D.flags(run)
    assert f["tail_loop"] and f["entropy_collapse"] and f["seq_rep_4"]


def test_ordinary_sentence_not_flagged():
    text = ("The river ran high after three days of rain, and the ferry waited on the far "
            "bank while the farmers counted what the water had taken.")
    assert not any(D.flags(text).values())


def test_flat_thresholds_and_rule():
    f = D.flags([1, 2, 3, 4, 1, 2, 3, 4], thresholds={"seq_rep_4": 0.1})
    assert f["seq_rep_4"] and not f["distinct_1"]
    rule = D.ExclusionRule(always=("entropy_collapse",), any_k_of=("seq_rep_4", "zlib_ratio"),
                           k=2)
    base = dict.fromkeys(D.FLAG_NAMES, False)
    assert not rule.excludes({**base, "seq_rep_4": True})
    assert rule.excludes({**base, "seq_rep_4": True, "zlib_ratio": True})
    assert rule.excludes({**base, "entropy_collapse": True})
    assert not rule.excludes({**base, "tail_loop": True})  # not part of this rule
    with pytest.raises(ValueError, match="unknown flags"):
        D.ExclusionRule(always=("loopy",))


def test_describe_records_rule_and_calibration():
    d = D.ExclusionRule().describe()
    assert d["rule"].startswith("exclude a run if tail_loop or ≥ 2 of (")
    cal = d["calibration"]
    assert len(cal["model_sha256"]) == 64 and cal["n_runs"] >= 3
    assert cal["generation"]["threshold"] == 1.0 and cal["generation"]["max_steps"] == 30
    assert set(d["thresholds"]) == {"ids", "words"}
    assert set(d["thresholds"]["ids"]) == {"seq_rep_4", "zlib_ratio", "distinct_1",
                                           "distinct_2", "tail_entropy"}


def test_calibrate_threshold_rule():
    runs = [{"ids": list(range(i, i + 25)) + [i] * 5, "text": "x y z " * (i + 1),
             "entropies": [1.0 + 0.1 * i] * 30} for i in range(5)]
    rec = D.calibrate(runs)
    # 5 runs < 20: the extremes are used, so no reference run is flagged
    assert rec["thresholds"]["ids"]["tail_entropy"] == pytest.approx(1.0)
    assert rec["in_sample_flag_rates"]["ids"]["excluded"] == 0.0
    many = [{**runs[i % 5], "entropies": [0.5 + 0.05 * i] * 30} for i in range(40)]
    rec40 = D.calibrate(many)
    # 5th percentile (linear) of 0.5 + 0.05 i, i = 0..39 → 0.5 + 0.05 · 1.95
    assert rec40["thresholds"]["ids"]["tail_entropy"] == pytest.approx(0.5975)


# ---- the bundled model ---------------------------------------------------------------
ORDINARY = [
    "My grandmother kept a garden behind the house, and every summer she",
    "Photosynthesis is the process by which plants",
    "Here are three tips for writing a good cover letter:",
]


def _rate(model, prompts):
    rep = D.report([model.generate(p, threshold=1.0, max_steps=30) for p in prompts])
    print(f"\nordinary bundled-model generations excluded: {rep['excluded'].sum()}/{len(rep)};"
          f" with any flag: {rep.filter(like='flag_').any(axis=1).sum()}")
    return rep["excluded"].mean()


def test_bundled_model_loop_flagged_ordinary_not(bundled_path):
    import attnvar

    model = attnvar.load_model(bundled_path)
    assert _rate(model, ORDINARY[:1]) == 0.0
    loop = model.generate("0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0", threshold=1.0, max_steps=12)
    m = D.metrics(loop)  # a Run: token ids of the top path, EOS stripped, entropies
    print("zeros prompt continuation:", repr(loop.text[-30:]), m["tail_loop_period"],
          m["tail_loop_repeats"])
    assert m["unit"] == "ids" and m["n_tokens"] == len(loop.tree.steps)
    assert D.ExclusionRule().excludes(loop)


@pytest.mark.slow
def test_bundled_model_ordinary_rate(bundled_path):
    import attnvar

    assert _rate(attnvar.load_model(bundled_path), ORDINARY) <= 1 / 3
