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
    assert len(cal["model_sha256"]) == 64 and cal["n_runs"] >= 40
    assert cal["generation"]["threshold"] == 1.0 and cal["generation"]["max_steps"] == 30
    assert cal["generation"]["lengths"] == [20, 30] and cal["default_length"] == 30
    assert set(d["thresholds"]) == {"ids", "words"}
    assert set(d["thresholds"]["ids"]) == {"seq_rep_4", "zlib_ratio", "distinct_1",
                                           "distinct_2", "tail_entropy"}
    assert set(d["thresholds_by_length"]) == {"20", "30"}
    assert d["thresholds_by_length"]["30"] == d["thresholds"]


def test_packaged_calibration_uses_percentiles_at_both_lengths():
    rec = D.load_thresholds()
    for length in ("20", "30"):
        entry = rec["by_length"][length]
        assert entry["n_runs"] >= 40 and entry["threshold_source"] == "percentile"
        assert entry["min_tokens"] == {"20": 14, "30": 20}[length]
    assert rec["prefix_check"]["all_equal"]


def test_thresholds_for_picks_the_generation_length():
    def entry(v):
        return {"thresholds": {"ids": {"seq_rep_4": v}, "words": {"seq_rep_4": v + 1}}}

    rec = {"thresholds": entry(0.3)["thresholds"], "default_length": 30,
           "by_length": {"20": entry(0.2), "30": entry(0.3)}}
    assert D.thresholds_for(rec, "ids", length=20) == ({"seq_rep_4": 0.2}, 20)
    assert D.thresholds_for(rec, "ids", length=25) == ({"seq_rep_4": 0.3}, 30)
    assert D.thresholds_for(rec, "ids", length=50) == ({"seq_rep_4": 0.3}, 30)  # largest
    assert D.thresholds_for(rec, "ids", n_tokens=12) == ({"seq_rep_4": 0.2}, 20)
    assert D.thresholds_for(rec, "words") == ({"seq_rep_4": 1.3}, 30)  # default length
    assert D.thresholds_for({"seq_rep_4": 0.5}, "ids") == ({"seq_rep_4": 0.5}, None)
    # flags read a dict's max_steps (a Run's options["max_steps"]) to choose the set:
    # 1 2 3 4 1 2 3 4 then 22 distinct ids: 27 4-grams, (1 2 3 4) twice → seq_rep_4 =
    # 1/27 = 0.037, above 0.03 and below 0.05
    ids = [1, 2, 3, 4, 1, 2, 3, 4, *range(10, 32)]
    assert D.seq_rep_n(ids, 4) == pytest.approx(1 / 27)
    low = {**rec, "by_length": {"20": entry(0.03), "30": entry(0.05)}}
    assert D.flags({"ids": ids, "max_steps": 20}, low)["seq_rep_4"]
    assert not D.flags({"ids": ids, "max_steps": 30}, low)["seq_rep_4"]
    assert D.flags({"ids": ids}, low, length=20)["seq_rep_4"]
    assert D.report([{"ids": ids, "max_steps": 20}], D.ExclusionRule())[
        "threshold_length"].tolist() == [20]


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


def test_calibrate_by_length_uses_prefixes():
    # 45 runs of 30 tokens: the first 20 tokens distinct, the last 10 repeat token 0, so
    # seq_rep_4 is 0 on every 20-token prefix and 6/27 on the whole run.
    runs = []
    for i in range(45):
        ids = [100 * i + t for t in range(20)] + [0] * 10
        pieces = [f" w{t}" for t in ids]
        runs.append({"ids": ids, "pieces": pieces, "text": "".join(pieces),
                     "entropies": [1.0 + 0.01 * i] * 30})
    runs.append({"ids": [1] * 12, "pieces": [" a"] * 12, "text": " a" * 12,
                 "entropies": [1.0] * 12})  # early EOS: < 14 tokens, left out of both
    rec = D.calibrate(runs, lengths=[20, 30])
    assert rec["default_length"] == 30 and rec["thresholds"] == rec["by_length"]["30"][
        "thresholds"]
    assert rec["by_length"]["20"]["n_runs"] == rec["by_length"]["30"]["n_runs"] == 45
    assert rec["by_length"]["20"]["thresholds"]["ids"]["seq_rep_4"] == 0.0
    assert rec["by_length"]["30"]["thresholds"]["ids"]["seq_rep_4"] == pytest.approx(6 / 27)
    assert rec["by_length"]["20"]["threshold_source"] == "percentile"
    assert "split_half_flag_rates" in rec["by_length"]["20"]
    with pytest.raises(ValueError, match="pieces"):
        D.calibrate([{k: v for k, v in r.items() if k != "pieces"} for r in runs],
                    lengths=[20])


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


@pytest.mark.parametrize("name", ["one_dot", "phrase"])
def test_hand_loops_as_bundled_model_tokens_flagged_at_both_lengths(bundled_path, name):
    # "1. 1. 1. …" and a repeated phrase, tokenized by the bundled model and cut to a
    # study's 20 or 30 generated tokens, against the token-id thresholds of that length.
    # The n-gram flags exclude both at both lengths; the structural tail_loop needs ≥ 3
    # repeats, which the 8-token phrase reaches only in 30 tokens (20 hold 2.5 repeats).
    import attnvar

    model = attnvar.load_model(bundled_path)
    ids = model.encode(LOOPS[name].rstrip(), add_bos=False)  # no lone trailing " " token
    for length in (20, 30):
        cut = ids[-length:]
        run = {"ids": cut, "text": "".join(model.tokenizer.piece(i) for i in cut),
               "max_steps": length}
        f = D.flags(run)
        m = D.metrics(run)
        assert f["seq_rep_4"] and f["distinct_2"], (name, length, f)
        assert D.ExclusionRule(always=()).excludes(f) and D.ExclusionRule().excludes(f)
        assert f["tail_loop"] == (m["tail_loop_repeats"] >= 3), (name, length, m)
        if name == "one_dot" or length == 30:
            assert f["tail_loop"], (name, length, m)


@pytest.mark.slow
def test_bundled_model_ordinary_rate(bundled_path):
    import attnvar

    assert _rate(attnvar.load_model(bundled_path), ORDINARY) <= 1 / 3
