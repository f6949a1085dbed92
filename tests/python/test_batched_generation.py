"""Several generations in one pass per step (Model.generate_many, _core.generate_batch)
give each sequence bit for bit its solo run, whatever the batch.

A run's parameters key it in a study, and a 1e-6 change in a logit can move a token across
θ and change the tree — so "close" is not enough: trees, slots, every captured field and
the next-step distributions must be equal exactly, in every mode, with sampling, EOS
rules and min_new_steps, for ragged batches of 1–16 sequences.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnvar
from attnvar import _core
from attnvar.engine.records import tree_to_dict

pytest.importorskip("transformers")

from run_compare import same_captures  # noqa: E402
from tiny_models import tiny_llama_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama_model(seed=11, eos_ids=(2, 7))


def _requests(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    modes = ["isolated", "visible", "causal"]
    out = []
    for i in range(n):
        out.append(dict(
            prompt=[int(x) for x in rng.integers(3, 60, size=int(rng.integers(1, 9)))],
            threshold=float(rng.choice([0.02, 0.04, 0.1, 0.3])), mode=modes[i % 3],
            max_steps=int(rng.integers(0, 12)), max_width=int(rng.choice([2, 4, 32])),
            sample=bool(i % 4 == 1), seed=int(rng.integers(0, 1000)),
            stop_on="top_eos" if i % 5 == 2 else "any_eos",
            min_new_steps=int(rng.choice([0, 0, 3])), keep_distributions=True,
            policy=["mixture", "top", "mean_logits"][i % 3]))
    return out


def _same(a, b) -> bool:
    return (tree_to_dict(a.tree) == tree_to_dict(b.tree) and a.slot_records == b.slot_records
            and same_captures(a, b))


@pytest.mark.parametrize("max_batch", [1, 2, 5, 16])
def test_each_sequence_is_its_solo_run_bit_for_bit(tiny, max_batch):
    reqs = _requests(16)
    capture = attnvar.Capture(scores=True, value_norms=True)
    solo = [tiny.generate(capture=capture, **r) for r in reqs]
    many = tiny.generate_many(reqs, capture=capture, max_batch=max_batch)
    assert len(many) == len(reqs)
    bad = [i for i, (a, b) in enumerate(zip(solo, many, strict=True)) if not _same(a, b)]
    assert not bad, f"sequences {bad} differ from their solo runs (max_batch {max_batch})"
    # The batch held sequences of different lengths, modes and set widths at once.
    assert len({len(r.tree.steps) for r in many}) > 3
    assert {r.options["mode"] for r in many} == {"isolated", "visible", "causal"}


def test_ragged_batches_of_every_size_without_capture(tiny):
    for n in range(1, 17):
        reqs = _requests(n, seed=100 + n)
        solo = [tiny.generate(**r) for r in reqs]
        many = tiny.generate_many(reqs, max_batch=n)
        assert all(_same(a, b) for a, b in zip(solo, many, strict=True)), n


def test_the_core_batch_the_runner_forms_on_the_bundled_model(bundled_path):
    from attnvar.study import prompts
    from attnvar.study.runner import GENERATION_BATCH

    model = attnvar.load_model(bundled_path)
    texts = [p.text for p in prompts.suite("core")][: GENERATION_BATCH + 3]
    reqs = [dict(prompt=t, threshold=0.1 if i % 2 else 0.2,
                 mode="visible" if i % 3 == 0 else "isolated", max_steps=6, min_new_steps=4)
            for i, t in enumerate(texts)]
    capture = attnvar.Capture(scores=True)
    solo = [model.generate(capture=capture, **r) for r in reqs]
    many = model.generate_many(reqs, capture=capture, max_batch=GENERATION_BATCH)
    assert all(_same(a, b) for a, b in zip(solo, many, strict=True))


def test_bad_requests_are_refused_by_name(tiny):
    with pytest.raises(ValueError, match="max_batch"):
        tiny.generate_many([[1, 2]], max_batch=0)
    with pytest.raises(ValueError, match="request 1: unknown options"):
        tiny.generate_many([[1, 2], {"prompt": [3], "temprature": 2.0}])
    with pytest.raises(ValueError, match="request 0 has no 'prompt'"):
        tiny.generate_many([{"threshold": 0.1}])
    with pytest.raises(ValueError, match="mode"):
        tiny.generate_many([{"prompt": [3], "mode": "sideways"}])
    with pytest.raises(attnvar.ConfigError, match="threshold"):
        tiny.generate_many([{"prompt": [3], "threshold": 2.0}])
    with pytest.raises(attnvar.ConfigError, match="unknown option"):
        _core.generate_batch(tiny.core, [[1, 2]], [{"thresh": 0.1}])
    assert tiny.generate_many([]) == []


def test_a_study_gives_the_same_runs_whatever_its_batch(bundled_path, tmp_path):
    from attnvar.engine import load_run
    from attnvar.study import Study, prompts
    from attnvar.study.store import RUNS, iter_completed

    items = prompts.suite("core")[:5]
    common = dict(prompts=items, thresholds=[0.1], modes=["isolated", "visible"],
                  replays=["serial"], max_steps=5, model_path=str(bundled_path))
    Study(batch=1, **common).run(tmp_path / "solo", progress=False)
    Study(batch=8, **common).run(tmp_path / "batched", progress=False)
    solo = sorted(p.name for p in iter_completed(tmp_path / "solo" / RUNS))
    batched = sorted(p.name for p in iter_completed(tmp_path / "batched" / RUNS))
    assert solo == batched and len(solo) == 20
    for name in solo:
        a = load_run(tmp_path / "solo" / RUNS / name)
        b = load_run(tmp_path / "batched" / RUNS / name)
        assert tree_to_dict(a.tree) == tree_to_dict(b.tree), name
        assert torch.equal(a.scores, b.scores) and torch.equal(a.attention, b.attention), name


def test_sequences_of_one_prompt_share_its_prefill_and_stay_their_solo_runs(tiny):
    # generate_batch runs a prompt's prefill once for every sequence of that prompt (a
    # study batches each prompt's conditions together) and copies its output and cache
    # rows: each run must still be its solo run exactly, own its captured tensors, and
    # runs whose hook edits act on the prefill must get their own pass.
    prompts = [[5, 9, 14, 3], [22, 8], [5, 9, 14, 3, 40]]
    reqs = []
    for i in range(12):
        reqs.append(dict(prompt=prompts[i % 3] if i < 9 else prompts[0],
                         threshold=[0.02, 0.1, 0.3][i % 3], mode=["isolated", "visible"][i % 2],
                         max_steps=[6, 0, 9, 4][i % 4], temperature=[1.0, 0.7][i // 6],
                         keep_distributions=True, seed=i, sample=i % 5 == 0))
    capture = attnvar.Capture(scores=True, value_norms=True,
                              names=["blocks.0.hook_resid_pre", "blocks.1.attn.hook_k"])
    solo = [tiny.generate(capture=capture, **r) for r in reqs]
    for max_batch in (2, 5, 12):
        many = tiny.generate_many(reqs, capture=capture, max_batch=max_batch)
        bad = [i for i, (a, b) in enumerate(zip(solo, many, strict=True)) if not _same(a, b)]
        assert not bad, f"sequences {bad} differ from their solo runs (max_batch {max_batch})"
        for a, b in zip(solo, many, strict=True):
            for name in ("blocks.0.hook_resid_pre", "blocks.1.attn.hook_k"):
                assert torch.equal(a.hooks[name], b.hooks[name]), name
    # Each run owns its prefill's tensors: changing one run's leaves its siblings alone.
    many = tiny.generate_many(reqs[:4], capture=capture, max_batch=4)
    first = many[3].passes[0].scores[0].clone()
    with torch.inference_mode():  # the engine's tensors are inference tensors
        many[0].passes[0].scores[0].add_(1.0)
    assert torch.equal(many[3].passes[0].scores[0], first)
    # Hook functions or edits act on the prompt: every sequence's prefill is its own pass
    # (a function is called for each, as in the solo runs).
    rows = []

    def record(name, t):
        rows.append(t.shape[0])

    fns = {"blocks.0.hook_resid_pre": record}
    for r in reqs[:6]:
        tiny.generate(hook_fns=fns, **r)
    solo_rows, rows[:] = list(rows), []
    tiny.generate_many(reqs[:6], hook_fns=fns, max_batch=1)  # one pass at a time
    assert rows == solo_rows
    edit = attnvar.ZeroAblate("blocks.0.hook_resid_pre", slots=[1])
    solo = [tiny.generate(interventions=[edit], **r) for r in reqs[:6]]
    many = tiny.generate_many(reqs[:6], interventions=[edit], max_batch=6)
    assert all(_same(a, b) for a, b in zip(solo, many, strict=True))


def test_the_automatic_batch_follows_threads_and_memory(bundled_path, monkeypatch):
    from attnvar.engine.model import max_set_width
    from attnvar.study import Study, prompts, runner

    model = attnvar.load_model(bundled_path)
    items = prompts.suite("core")[:6]

    def study(**kw):
        return Study(prompts=items, thresholds=[0.1, 0.2], modes=["isolated"],
                     max_steps=20, model_path=str(bundled_path), **kw)

    assert study().batch is None
    assert runner.batch_size(study(), model, threads=1) == 8
    assert runner.batch_size(study(), model, threads=2) == 16
    assert runner.batch_size(study(batch=5), model, threads=2) == 5
    # A run's share: its most slots' capture and KV cache, as generate_many bounds them.
    slots = max(len(model.encode(p.text)) for p in items) + 1 + 20 * max_set_width(0.1, 32)
    dims = model.dims
    capture = attnvar.Capture(scores=True)
    per_run = (capture.estimate_bytes(model.num_layers, model.num_heads, slots, dims)
               + 2 * model.num_layers * dims["kv_heads"] * dims["head_dim"] * 4 * slots)
    tight = attnvar.Capture(scores=True, memory_budget=3 * per_run + 1)
    assert runner.batch_size(study(capture=tight), model, threads=2) == 3
    tighter = attnvar.Capture(scores=True, memory_budget=per_run // 2)
    assert runner.batch_size(study(capture=tighter), model, threads=1) == 1  # never 0
    # Half the machine's memory, shared by the workers, bounds it too.
    monkeypatch.setattr(runner, "physical_memory", lambda: 2 * 4 * (5 * per_run + 1))
    assert runner.batch_size(study(), model, threads=2, workers=4) == 5
    monkeypatch.undo()
    # The KV cache is counted in the model's dtype: at 2 bytes a value, more runs fit.
    half_kv = per_run - model.num_layers * dims["kv_heads"] * dims["head_dim"] * 4 * slots
    monkeypatch.setattr(model, "dtype", torch.bfloat16)
    roomy = attnvar.Capture(scores=True, memory_budget=4 * half_kv + 1)
    assert runner.batch_size(study(capture=roomy), model, threads=2) == 4
    with pytest.raises(ValueError, match="batch"):
        study(batch=0)
