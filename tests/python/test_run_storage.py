"""Runs on disk store what cannot be recomputed, and nothing is lost.

- attention that is exactly the softmax of the stored scores is left out of the pass
  files and recomputed on load, bit for bit (generation, replay, a replay with a key
  bias); attention that is not (f16 storage, or edited after the softmax) is stored;
- pass files written before this rule (attention stored, no metadata) still load;
- a replay with ``logits=False`` has the same captures and no distributions to store.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import attnvar
from attnvar.engine import load_run
from attnvar.engine.records import ATTENTION_FROM_SCORES, PassRecord
from attnvar.engine.run_store import pass_file


@pytest.fixture(scope="module")
def model(bundled_path):
    return attnvar.load_model(bundled_path)


def _bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _stored_keys(run_dir, index=0):
    with safe_open(str(pass_file(run_dir, index)), "pt") as f:
        return list(f.keys()), (f.metadata() or {})


def test_attention_is_recomputed_from_scores_bit_for_bit(model, tmp_path):
    capture = attnvar.Capture(scores=True)
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=8, capture=capture)
    serial = model.replay(run, "serial", capture=capture)
    parallel = [int(i) for i in run.slots["is_parallel"].to_numpy().nonzero()[0]]
    biased = model.replay(run, "shared_isolated", capture=capture,
                          interventions=[{"layer_begin": 2, "layer_end": 4,
                                          "key_slots": parallel, "delta": -0.7}])
    for name, r in (("generate", run), ("serial", serial), ("biased", biased)):
        r.save(tmp_path / name)
        keys, meta = _stored_keys(tmp_path / name)
        assert not any(k.endswith(".attention") for k in keys), name
        assert meta[ATTENTION_FROM_SCORES].split(",") == [str(i) for i in range(30)]
        back = load_run(tmp_path / name)
        assert torch.equal(back.attention, r.attention), name
        assert torch.equal(back.scores, r.scores), name
    # Half the capture bytes of storing both (the same run written the old way).
    old = tmp_path / "old"
    old.mkdir()
    rec = serial.passes[0]
    flat = {f"layer{i:03d}.{n}": t.contiguous() for n, ts in
            (("attention", rec.attention), ("scores", rec.scores)) for i, t in enumerate(ts)}
    save_file(flat, str(old / "pass.safetensors"))
    new = os.path.getsize(pass_file(tmp_path / "serial", 0))
    print(f"pass file: {new} bytes with attention recomputed, "
          f"{os.path.getsize(old / 'pass.safetensors')} storing both")
    assert new < 0.55 * os.path.getsize(old / "pass.safetensors")


def test_attention_that_is_not_the_softmax_is_stored(model, tmp_path):
    half = model.generate("The cat sat on the", threshold=0.1, max_steps=4,
                          capture=attnvar.Capture(scores=True, dtype="float16"))
    half.save(tmp_path / "half")
    keys, meta = _stored_keys(tmp_path / "half", 1)
    assert any(k.endswith(".attention") for k in keys) and ATTENTION_FROM_SCORES not in meta
    assert torch.equal(load_run(tmp_path / "half").attention, half.attention)
    # A record whose attention was edited after the softmax keeps it.
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=4,
                         capture=attnvar.Capture(scores=True))
    rec = run.passes[1]
    edited = [a.clone() for a in rec.attention]
    edited[3][0, 0, 0] += 1e-3
    path = tmp_path / "edited.safetensors"
    PassRecord(rec.step, rec.first_slot, rec.num_queries,
               {"attention": edited, "scores": list(rec.scores), "value_norms": []}).write(path)
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata() or {}
    assert "layer003.attention" in keys and "layer002.attention" not in keys
    assert "3" not in meta[ATTENTION_FROM_SCORES].split(",")
    back = PassRecord(rec.step, rec.first_slot, rec.num_queries, source=path)
    assert torch.equal(back.attention[3], edited[3]) and torch.equal(back.attention[2],
                                                                     rec.attention[2])


def test_pass_files_that_store_attention_still_load(model, tmp_path):
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=4,
                         capture=attnvar.Capture(scores=True))
    run.save(tmp_path / "run")
    # Rewrite every pass file the way attnvar wrote them before: both fields, no metadata.
    for i, rec in enumerate(run.passes):
        flat = {f"layer{j:03d}.{n}": t.contiguous() for n, ts in
                (("attention", rec.attention), ("scores", rec.scores)) for j, t in enumerate(ts)}
        save_file(flat, str(pass_file(tmp_path / "run", i)))
    back = load_run(tmp_path / "run")
    assert torch.equal(back.attention, run.attention)


def test_replay_without_logits_keeps_its_captures_and_stores_no_distributions(model, tmp_path):
    run = model.generate("Once upon a time", threshold=0.1, max_steps=8)
    capture = attnvar.Capture(scores=True)
    full = model.replay(run, "serial", capture=capture)
    lean = model.replay(run, "serial", capture=capture, logits=False)
    assert full.distributions is not None and lean.distributions is None
    assert torch.equal(full.scores, lean.scores) and torch.equal(full.attention, lean.attention)
    full.save(tmp_path / "full")
    lean.save(tmp_path / "lean")
    print(f"serial replay on disk: {_bytes(tmp_path / 'full')} bytes with distributions, "
          f"{_bytes(tmp_path / 'lean')} without")
    assert _bytes(tmp_path / "lean") < _bytes(tmp_path / "full")
    assert load_run(tmp_path / "lean").distributions is None
