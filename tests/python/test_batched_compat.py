"""Compat runs in batches (Model.tempo2025_many, _core.generate_tempo2025_batch) are each
bit for bit their solo ``tempo2025`` run, whatever the batch; leaking runs are refused.

As for the mechanism's batches (test_batched_generation.py), "close" is not enough: a
compat run explains a prototype's numbers only if it is the same run, so trees, slot
records, every captured tensor, the applied visibility and the recorded options must be
equal exactly, in both modes, for ragged batches of 1–16 runs, repeated prompts (whose
prefill the batch shares), max_steps 0 and EOS stops.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnvar
from attnvar import _core
from attnvar.engine import MaskLeak, Model
from attnvar.engine.records import tree_to_dict

pytest.importorskip("transformers")

from tiny_models import tiny_llama_model  # noqa: E402

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_k"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama_model(seed=11, eos_ids=(2, 7))


def _requests(n: int, seed: int = 0) -> list[dict]:
    """Ragged compat requests: prompts of 1–8 ids, some repeated, both modes, θ from wide to
    narrow sets, max_steps 0–12, the model's EOS ids, none, or many (early stops)."""
    rng = np.random.default_rng(seed)
    prompts = [[int(x) for x in rng.integers(3, 60, size=int(rng.integers(1, 9)))]
               for _ in range(max(1, n // 2))]
    eos_choices = [None, [], [int(x) for x in rng.integers(3, 60, size=6)]]
    out = []
    for i in range(n):
        req = dict(prompt=prompts[int(rng.integers(0, len(prompts)))],
                   threshold=float(rng.choice([0.02, 0.05, 0.1, 0.3])),
                   max_steps=int(rng.integers(0, 13)), emulate_isolation_bug=bool(i % 2))
        eos = eos_choices[i % 3]
        if eos is not None:
            req["eos_ids"] = eos
        out.append(req)
    return out


def _differences(a, b) -> list[str]:
    """The fields in which two runs differ (none: the same run, bit for bit)."""
    bad = []
    for name in ("kind", "encoding", "slot_records", "options", "model", "pieces",
                 "capture_layers", "capture_heads", "capture_hooks", "stop_reason"):
        if getattr(a, name) != getattr(b, name):
            bad.append(name)
    if tree_to_dict(a.tree) != tree_to_dict(b.tree):
        bad.append("tree")
    if not torch.equal(a.visibility, b.visibility):
        bad.append("visibility")
    if (a.distributions is None) != (b.distributions is None):
        bad.append("distributions")
    if len(a.passes) != len(b.passes):
        return [*bad, "passes"]
    for p, (pa, pb) in enumerate(zip(a.passes, b.passes, strict=True)):
        if (pa.step, pa.first_slot, pa.num_queries) != (pb.step, pb.first_slot, pb.num_queries):
            bad.append(f"pass {p} slots")
        for name in ("scores", "attention", "value_norms"):
            xs, ys = getattr(pa, name), getattr(pb, name)
            if len(xs) != len(ys) or not all(torch.equal(x, y)
                                             for x, y in zip(xs, ys, strict=True)):
                bad.append(f"pass {p} {name}")
    for name in a.capture_hooks:
        if not torch.equal(a.hooks[name], b.hooks[name]):
            bad.append(f"hook {name}")
    return bad


def _solo(model, req: dict, capture=None):
    req = dict(req)
    return model.tempo2025(req.pop("prompt"), capture=capture, **req)


@pytest.mark.parametrize("max_batch", [1, 2, 5, 16])
def test_each_compat_run_is_its_solo_run_bit_for_bit(tiny, max_batch):
    reqs = _requests(16)
    capture = attnvar.Capture(scores=True, value_norms=True, names=HOOKS)
    solo = [_solo(tiny, r, capture) for r in reqs]
    many = tiny.tempo2025_many(reqs, capture=capture, max_batch=max_batch)
    assert len(many) == len(reqs)
    bad = {i: d for i, (a, b) in enumerate(zip(solo, many, strict=True))
           if (d := _differences(a, b))}
    assert not bad, f"runs differ from their solo runs (max_batch {max_batch}): {bad}"
    # The batch mixed what it must: both modes, a prompt run several times, runs of 0 and
    # of many steps, EOS stops and parallel sets.
    assert {r.options["emulate_isolation_bug"] for r in many} == {False, True}
    assert len({tuple(r["prompt"]) for r in reqs}) < len(reqs)
    assert min(len(r.tree.steps) for r in many) == 0
    assert len({len(r.tree.steps) for r in many}) > 3
    assert "eos" in {r.stop_reason for r in many}
    assert any(len(s.members) > 1 for r in many for s in r.tree.steps)


def test_ragged_batches_of_every_size_without_capture(tiny):
    for n in range(1, 17):
        reqs = _requests(n, seed=100 + n)
        solo = [_solo(tiny, r) for r in reqs]
        many = tiny.tempo2025_many(reqs, max_batch=n)
        bad = [i for i, (a, b) in enumerate(zip(solo, many, strict=True)) if _differences(a, b)]
        assert not bad, (n, bad)


def test_runs_of_one_prompt_share_its_prefill_and_own_their_tensors(tiny):
    prompt = [5, 9, 14, 3]
    reqs = [dict(prompt=prompt, threshold=t, max_steps=s, emulate_isolation_bug=bug)
            for t in (0.02, 0.2) for s in (0, 7) for bug in (False, True)]
    capture = attnvar.Capture(scores=True, names=HOOKS)
    solo = [_solo(tiny, r, capture) for r in reqs]
    many = tiny.tempo2025_many(reqs, capture=capture, max_batch=3)
    assert all(not _differences(a, b) for a, b in zip(solo, many, strict=True))
    first = many[1].passes[0].scores[0].clone()
    with torch.inference_mode():  # the engine's tensors are inference tensors
        many[0].passes[0].scores[0].add_(1.0)
    assert torch.equal(many[1].passes[0].scores[0], first)


def test_bad_requests_are_refused_by_name(tiny):
    with pytest.raises(ValueError, match="max_batch"):
        tiny.tempo2025_many([[1, 2]], max_batch=0)
    with pytest.raises(ValueError, match=r"request 1: unknown options \['treshold'\]"):
        tiny.tempo2025_many([[1, 2], {"prompt": [3], "treshold": 0.2}])
    with pytest.raises(ValueError, match="request 0 has no 'prompt'"):
        tiny.tempo2025_many([{"threshold": 0.1}])
    with pytest.raises(ValueError, match="request 1: mask_leak: .*one after another"):
        tiny.tempo2025_many([[1, 2], {"prompt": [3], "mask_leak": MaskLeak()}])
    with pytest.raises(ValueError, match="request 1: unknown options \\['mode'\\]"):
        tiny.tempo2025_many([[1, 2], {"prompt": [3], "mode": "isolated"}])
    with pytest.raises(ValueError, match="request 0: threshold"):
        tiny.tempo2025_many([{"prompt": [3], "threshold": 2.0}])
    with pytest.raises(ValueError, match="request 0: max_steps"):
        tiny.tempo2025_many([{"prompt": [3], "max_steps": -1}])
    with pytest.raises(ValueError, match="request 1: eos_ids"):
        tiny.tempo2025_many([[3], {"prompt": [3], "eos_ids": [2.5]}])
    with pytest.raises(ValueError, match="request 0: add_bos"):
        tiny.tempo2025_many([{"prompt": [3], "add_bos": True}])
    with pytest.raises(ValueError, match="request 0: prompt"):
        tiny.tempo2025_many([{"prompt": [3, "x"]}])
    with pytest.raises(attnvar.ConfigError, match="eos id"):
        tiny.tempo2025_many([{"prompt": [3], "eos_ids": [10**6]}])
    assert tiny.tempo2025_many([]) == []
    # The engine's own checks.
    with pytest.raises(attnvar.ConfigError, match="unknown option 'mode'"):
        _core.generate_tempo2025_batch(tiny.core, [[1, 2]], [{"mode": "isolated"}])
    with pytest.raises(attnvar.ConfigError, match="2 prompts for 1 option sets"):
        _core.generate_tempo2025_batch(tiny.core, [[1, 2], [3]], [{}])
    with pytest.raises(attnvar.ConfigError, match="hook edits"):
        _core.generate_tempo2025_batch(tiny.core, [[1, 2]], [{}],
                                       hook_fns={"blocks.0.hook_resid_pre": lambda n, t: t})


def test_a_batch_with_leaked_masks_is_refused(tiny):
    # A leaking run depends on the runs before it: the engine refuses to batch it, naming
    # the sequence and why, before any pass runs.
    leak = MaskLeak()
    leak.record(tiny.tempo2025([1, 5, 9], threshold=0.05, max_steps=4,
                               emulate_isolation_bug=True))
    assert len(leak) == 1
    options = [dict(threshold=0.1, max_steps=3),
               dict(threshold=0.1, max_steps=3, leaked_masks=list(leak.masks))]
    with pytest.raises(attnvar.ConfigError,
                       match="sequence 1 has leaked_masks.*depends on the runs before it"):
        _core.generate_tempo2025_batch(tiny.core, [[1, 2], [1, 3]], options)
    # The same runs one after another are fine.
    _core.generate_tempo2025(tiny.core, [1, 3], threshold=0.1, max_steps=3,
                             leaked_masks=list(leak.masks))


def test_text_prompts_on_the_bundled_model(bundled_path):
    from attnvar.study import prompts

    model = attnvar.load_model(bundled_path)
    texts = [p.text for p in prompts.suite("core")][:5]
    reqs = [dict(prompt=t, threshold=[0.1, 0.2][i % 2], max_steps=4,
                 emulate_isolation_bug=i % 3 != 0, add_bos=[None, True, False][i % 3],
                 **({"eos_ids": []} if i == 4 else {}))
            for i, t in enumerate(texts)]
    reqs.append(dict(reqs[0], emulate_isolation_bug=not reqs[0]["emulate_isolation_bug"]))
    capture = attnvar.Capture(scores=True)
    solo = [_solo(model, r, capture) for r in reqs]
    many = model.tempo2025_many(reqs, capture=capture, max_batch=8)
    bad = {i: d for i, (a, b) in enumerate(zip(solo, many, strict=True))
           if (d := _differences(a, b))}
    assert not bad, bad


def _study_runs(results):
    from attnvar.engine import load_run
    from attnvar.study.store import RUNS, iter_completed

    return {p.name: load_run(p) for p in iter_completed(results / RUNS)}


def test_a_compat_study_gives_the_same_runs_whatever_its_batch(bundled_path, tmp_path,
                                                                monkeypatch):
    from attnvar.study import Study, prompts

    common = dict(prompts=prompts.suite("core")[:4], thresholds=[0.1, 0.2],
                  modes=["isolated", "visible"], max_steps=5, preset="tempo-2025",
                  model_path=str(bundled_path))
    Study(batch=1, **common).run(tmp_path / "solo", progress=False)

    # At batch 8 every compat generation goes through tempo2025_many.
    def no_solo(*args, **kwargs):
        raise AssertionError("a compat cell of a batched study ran alone")

    with monkeypatch.context() as m:
        m.setattr(Model, "tempo2025", no_solo)
        Study(batch=8, **common).run(tmp_path / "batched", progress=False)
    solo, batched = _study_runs(tmp_path / "solo"), _study_runs(tmp_path / "batched")
    assert sorted(solo) == sorted(batched) and len(solo) == 16
    for name, a in solo.items():
        b = batched[name]
        assert tree_to_dict(a.tree) == tree_to_dict(b.tree), name
        assert a.options == b.options and a.slot_records == b.slot_records, name
        assert torch.equal(a.visibility, b.visibility), name
        assert torch.equal(a.scores, b.scores) and torch.equal(a.attention, b.attention), name


def test_a_leaking_compat_study_is_never_batched(bundled_path, tmp_path, monkeypatch):
    from attnvar.study import Study, prompts

    def no_batch(*args, **kwargs):
        raise AssertionError("a leaking compat study ran its cells together")

    monkeypatch.setattr(Model, "tempo2025_many", no_batch)
    Study(prompts=prompts.suite("core")[:3], thresholds=[0.1], modes=["isolated"],
          max_steps=3, preset="tempo-2025", emulate_mask_leak=True, batch=8,
          model_path=str(bundled_path)).run(tmp_path / "leak", progress=False)
    runs = sorted(_study_runs(tmp_path / "leak").values(),
                  key=lambda r: r.options["prompt_id"])
    assert len(runs) == 3 and sorted(r.options["mask_leak"] for r in runs) == [0, 1, 2]
