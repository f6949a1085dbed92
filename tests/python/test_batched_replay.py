"""Several replays in one forward pass (Model.replay_many, _core.replay_batch) give each
tree bit for bit its solo ``replay()``: the slots, every captured field and hook point, the
logits' next-step distributions — in every encoding, with key biases and hook edits, for
ragged batches of 1–16 trees, on a tiny f32 model and on the bundled quantized one (whose
matrices a batch decodes once for all its trees: the same values, so the same products).
A study's replays run this way, so a resumed study never mixes numbers of two kinds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnvar
from attnvar.engine import ENCODINGS

pytest.importorskip("transformers")

from run_compare import same_captures  # noqa: E402
from tiny_models import tiny_llama_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama_model(seed=5, eos_ids=(2, 7))


@pytest.fixture(scope="module")
def tiny_trees(tiny):
    """16 generated trees of several lengths and set widths (one with no step at all)."""
    rng = np.random.default_rng(4)
    trees = []
    for i in range(16):
        prompt = [int(x) for x in rng.integers(3, 60, size=int(rng.integers(1, 9)))]
        run = tiny.generate(prompt, threshold=float(rng.choice([0.02, 0.05, 0.2])),
                            max_steps=0 if i == 3 else int(rng.integers(1, 10)),
                            mode=["isolated", "visible", "causal"][i % 3])
        trees.append(run)
    assert len({len(r.tree.steps) for r in trees}) > 3
    return trees


def _same(a, b) -> bool:
    """Equal bit for bit: slots, visibility, every pass's captured fields and hook points,
    the distributions."""
    return (a.slot_records == b.slot_records and torch.equal(a.visibility, b.visibility)
            and same_captures(a, b, hooks=True))


def _requests(trees) -> list[dict]:
    """Every encoding in turn; every third request with a knockout of the first
    generated slot in layer 1, every fourth with a hook edit."""
    out = []
    for i, run in enumerate(trees):
        req = dict(tree=run, encoding=ENCODINGS[i % len(ENCODINGS)])
        ivs = []
        if i % 3 == 0 and run.tree.steps:
            ivs.append(attnvar.KeyBias(1, 2, [run.tree.prompt_length]))
        if i % 4 == 1:
            ivs.append(attnvar.ZeroAblate("blocks.0.hook_resid_pre", slots=[0]))
        if ivs:
            req["interventions"] = ivs
        out.append(req)
    return out


@pytest.mark.parametrize("max_batch", [1, 3, 16])
def test_each_replay_is_its_solo_replay_bit_for_bit(tiny, tiny_trees, max_batch):
    reqs = _requests(tiny_trees)
    capture = attnvar.Capture(scores=True, value_norms=True,
                              names=["blocks.1.hook_resid_post", "blocks.0.attn.hook_z"])
    solo = [tiny.replay(r["tree"], r["encoding"], capture=capture,
                        interventions=r.get("interventions", ())) for r in reqs]
    many = tiny.replay_many(reqs, capture=capture, max_batch=max_batch)
    bad = [i for i, (a, b) in enumerate(zip(solo, many, strict=True)) if not _same(a, b)]
    assert not bad, f"replays {bad} differ from their solo replays (max_batch {max_batch})"
    assert {r.encoding for r in many} == set(ENCODINGS)
    assert all(a.options == b.options for a, b in zip(solo, many, strict=True))
    assert many[3].distributions is not None and len(many[3].tree.steps) == 0


def test_ragged_batches_of_every_size_with_logits_and_without(tiny, tiny_trees):
    reqs = _requests(tiny_trees)
    for n in range(1, 17):
        for logits in (True, False):
            solo = [tiny.replay(r["tree"], r["encoding"], logits=logits,
                                interventions=r.get("interventions", ())) for r in reqs[:n]]
            many = tiny.replay_many(reqs[:n], logits=logits, max_batch=n)
            assert all(_same(a, b) for a, b in zip(solo, many, strict=True)), (n, logits)


def test_a_study_group_of_replays_on_the_bundled_quantized_model(bundled_path):
    from attnvar.study import prompts
    from attnvar.study.runner import GENERATION_BATCH

    model = attnvar.load_model(bundled_path)
    texts = [p.text for p in prompts.suite("core")][:GENERATION_BATCH // 2 + 1]
    # Long trees (more rows than the gemv kernels take: one decoded matrix for them all)
    # and trees of a few slots (the gemv kernels' rows) in one batch.
    runs = [model.generate(t, threshold=0.1, max_steps=2 if i % 2 else 8, min_new_steps=1)
            for i, t in enumerate(texts)]
    reqs = [(r, e) for r in runs for e in ("serial", "top_only")]
    assert min(len(r.tree.prompt) for r in runs) + 2 <= 16 < max(
        len(r.tree.prompt) + sum(len(s.members) for s in r.tree.steps) for r in runs)
    capture = attnvar.Capture(scores=True)
    for logits in (False, True):
        solo = [model.replay(r, e, capture=capture, logits=logits) for r, e in reqs]
        many = model.replay_many(reqs, capture=capture, logits=logits,
                                 max_batch=GENERATION_BATCH)
        assert all(_same(a, b) for a, b in zip(solo, many, strict=True)), logits


def test_bad_requests_are_refused_by_name_before_any_pass(tiny, tiny_trees):
    run = tiny_trees[0]
    assert tiny.replay_many([]) == []
    with pytest.raises(ValueError, match="max_batch"):
        tiny.replay_many([(run, "serial")], max_batch=0)
    with pytest.raises(ValueError, match="request 1: a request has 'tree'"):
        tiny.replay_many([(run, "serial"), {"tree": run, "encodng": "serial"}])
    with pytest.raises(ValueError, match="request 0: a dict or a"):
        tiny.replay_many([run])
    with pytest.raises(ValueError, match="encoding"):
        tiny.replay_many([(run, "sideways")])
    with pytest.raises(TypeError, match="request 1: tree must be a Run or an attnvar Tree"):
        tiny.replay_many([(run, "serial"), ([1, 2, 3], "serial")])
    with pytest.raises(ValueError, match="requests must be a list"):
        tiny.replay_many({"tree": run})
    with pytest.raises(ValueError, match="policy"):
        tiny.replay_many([(run, "serial")], policy="loudest")
    with pytest.raises(attnvar.ConfigError, match="1 trees, 2 encodings"):
        attnvar._core.replay_batch(tiny.core, [run.tree], ["serial", "serial"], [[]], [[]])
    with pytest.raises(attnvar.ConfigError, match="intervention key slot"):
        tiny.replay_many([(run, "serial"), dict(tree=run, encoding="serial",
                                                interventions=[attnvar.KeyBias(0, 1, [999])])])
