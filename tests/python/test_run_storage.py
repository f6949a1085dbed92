"""Runs on disk store what cannot be recomputed, and nothing is lost.

- attention that is exactly the softmax of the stored scores is left out of the pass
  files and recomputed on load, bit for bit (generation, replay, a replay with a key
  bias); attention that is not (f16 storage, or edited after the softmax) is stored;
- masked pairs (−∞ in every layer and head) are not stored: each layer keeps the
  entries outside the pass's mask, and loading restores −∞ / 0 bit for bit — with a −∞
  key bias in some layers only, NaN scores, f16 captures, and α that is not 0 (or is
  −0.0) where the scores are masked;
- pass files written before these rules (attention stored, no metadata) still load;
- a replay with ``logits=False`` has the same captures and no distributions to store.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import attnvar
from attnvar.engine import load_run
from attnvar.engine.records import (
    ATTENTION_FROM_SCORES,
    SPARSE_TENSORS,
    STORED_ENTRIES,
    PassRecord,
)
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


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (NaN and −0.0 included)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def _roundtrip(rec: PassRecord, path) -> PassRecord:
    rec.write(path)
    return PassRecord(rec.step, rec.first_slot, rec.num_queries, source=path)


def test_masked_pairs_are_not_stored_and_come_back_bit_for_bit(model, tmp_path):
    capture = attnvar.Capture(scores=True)
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=8, capture=capture)
    serial = model.replay(run, "serial", capture=capture)
    parallel = [int(i) for i in run.slots["is_parallel"].to_numpy().nonzero()[0]]
    assert parallel, "the test needs a parallel step"
    # A knockout (−∞ bias) in layers 2–3 only: those −∞ are not masked in the other layers.
    knocked = model.replay(run, "shared_isolated", capture=capture,
                           interventions=[{"layer_begin": 2, "layer_end": 4,
                                           "key_slots": parallel, "delta": float("-inf")}])
    for name, r in (("generate", run), ("serial", serial), ("knocked", knocked)):
        r.save(tmp_path / name)
        back = load_run(tmp_path / name)
        assert _same_bits(back.scores, r.scores) and _same_bits(back.attention, r.attention)
    with safe_open(str(pass_file(tmp_path / "serial", 0)), "pt") as f:
        meta = f.metadata()
        keep = f.get_tensor(STORED_ENTRIES)
        stored = f.get_tensor("layer000.scores")
    full = serial.passes[0].scores[0]
    masked = torch.isneginf(full).all(0)
    assert torch.equal(keep, ~masked) and masked.sum() > 0.4 * masked.numel()  # causal
    assert stored.shape == (full.shape[0], int((~masked).sum()))
    assert meta[SPARSE_TENSORS].split(",") == [f"layer{i:03d}.scores" for i in range(30)]
    # In the knockout the biased keys are −∞ in layers 2–3 only, so they are stored.
    kept = load_run(tmp_path / "knocked").passes[0]
    with safe_open(str(pass_file(tmp_path / "knocked", 0)), "pt") as f:
        keep = f.get_tensor(STORED_ENTRIES)
    q = parallel[-1] + 1 if parallel[-1] + 1 < keep.shape[0] else parallel[-1]
    assert bool(keep[q, parallel[0]]) and torch.isneginf(kept.scores[2][:, q, parallel[0]]).all()
    # Serial replay: scores at the sparse size, about 60 % of a dense f32 file.
    dense = sum(t.numel() * 4 for t in serial.passes[0].scores)
    assert os.path.getsize(pass_file(tmp_path / "serial", 0)) < 0.65 * dense


def test_sparse_storage_keeps_odd_values_and_stored_attention(model, tmp_path):
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=4,
                         capture=attnvar.Capture(scores=True, dtype="float16"))
    rec = run.passes[0]  # the prefill: causal, so half its pairs are masked
    assert torch.isneginf(rec.scores[0]).any()
    back = _roundtrip(rec, tmp_path / "half.safetensors")
    with safe_open(str(back.source), "pt") as f:
        names = f.metadata()[SPARSE_TENSORS].split(",")
    assert "layer000.attention" in names and "layer000.scores" in names  # f16 α stored sparse
    for i in range(len(rec.scores)):
        assert _same_bits(back.scores[i], rec.scores[i])
        assert _same_bits(back.attention[i], rec.attention[i])
    # NaN scores are values; α that is not +0.0 where the scores are masked stays dense.
    scores = [t.clone() for t in rec.scores]
    attention = [t.clone() for t in rec.attention]
    scores[1][0, 1, 0] = float("nan")
    masked = torch.isneginf(scores[4][0])
    qi, ki = masked.nonzero()[0].tolist()
    attention[4][0, qi, ki] = 1e-3
    attention[5][0, qi, ki] = -0.0
    odd = PassRecord(rec.step, rec.first_slot, rec.num_queries,
                     {"attention": attention, "scores": scores, "value_norms": []})
    back = _roundtrip(odd, tmp_path / "odd.safetensors")
    with safe_open(str(back.source), "pt") as f:
        names = f.metadata()[SPARSE_TENSORS].split(",")
    assert "layer004.attention" not in names and "layer005.attention" not in names
    assert "layer006.attention" in names
    for i in range(len(scores)):
        assert _same_bits(back.scores[i], scores[i]), i
        assert _same_bits(back.attention[i], attention[i]), i
    assert torch.signbit(back.attention[5][0, qi, ki])


def test_pass_files_that_store_attention_still_load(model, tmp_path):
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=4,
                         capture=attnvar.Capture(scores=True))
    run.save(tmp_path / "run")
    # Rewrite every pass file the way attnvar wrote them before: both fields, no metadata,
    # and no checksums in run.json.
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    for entry in meta["capture"]["passes"]:
        del entry["sha256"]
    meta.pop("extras_sha256", None)
    (tmp_path / "run" / "run.json").write_text(json.dumps(meta))
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


def test_every_tensor_file_is_checksummed_and_a_changed_byte_is_caught(model, tmp_path,
                                                                      monkeypatch):
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=4,
                         capture=attnvar.Capture(scores=True), keep_distributions=True)
    run.save(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert all(len(p["sha256"]) == 64 for p in meta["capture"]["passes"])
    assert len(meta["extras_sha256"]) == 64
    assert torch.equal(load_run(tmp_path / "run").scores, run.scores)  # verified, intact
    # One flipped bit in a stored score: still valid safetensors, caught by the checksum.
    target = pass_file(tmp_path / "run", 2)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10  # the middle of the data section: layer scores
    target.write_bytes(bytes(data))
    with pytest.raises(attnvar.FormatError, match="pass_00002.safetensors: checksum mismatch"):
        load_run(tmp_path / "run").scores  # noqa: B018
    # The documented opt-out reads it unchecked (and so differently).
    monkeypatch.setenv("ATTNVAR_VERIFY_CHECKSUMS", "0")
    assert not torch.equal(load_run(tmp_path / "run").scores, run.scores)
    assert not torch.equal(load_run(tmp_path / "run", verify=False).scores, run.scores)
    monkeypatch.delenv("ATTNVAR_VERIFY_CHECKSUMS")
    # A changed extras file, and a deleted one that run.json still records.
    extras = tmp_path / "run" / "extras.safetensors"
    data = bytearray(extras.read_bytes())
    data[-1] ^= 0x01
    extras.write_bytes(bytes(data))
    with pytest.raises(attnvar.FormatError, match="extras.safetensors: checksum mismatch"):
        load_run(tmp_path / "run", verify=True)
    extras.unlink()
    with pytest.raises(attnvar.FormatError, match="extras.safetensors is missing"):
        load_run(tmp_path / "run")


def _reference_file(rec: PassRecord) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What a pass file holds under the storage rules, decided one layer and one tensor at
    a time (as attnvar first wrote them): attention left out where ``torch.equal`` to the
    softmax of its scores; the mask where a score is −∞ in every layer and head; each
    3-D score (and α that is +0.0 at every masked entry) cut to its stored entries."""
    flat = {f"layer{i:03d}.{n}": t for n in ("attention", "scores", "value_norms")
            for i, t in enumerate(getattr(rec, n))}
    derived = [i for i, (a, s) in enumerate(zip(rec.attention, rec.scores, strict=False))
               if a.dtype == s.dtype == torch.float32 and a.shape == s.shape
               and torch.equal(torch.softmax(s, dim=-1, dtype=torch.float32), a)]
    for i in derived:
        del flat[f"layer{i:03d}.attention"]
    meta = {ATTENTION_FROM_SCORES: ",".join(map(str, derived))} if derived else {}
    masked = torch.ones(rec.scores[0].shape[1:], dtype=torch.bool)
    for s in rec.scores:
        masked &= torch.isneginf(s).all(0)
    sparse = []
    for name in sorted(flat):
        t, field = flat[name], name.rsplit(".", 1)[1]
        if not masked.any() or field not in ("scores", "attention") or t.dim() != 3:
            continue
        if field == "attention" and not ((t[:, masked] == 0) & ~torch.signbit(t[:, masked])).all():
            continue
        flat[name] = t[:, ~masked]
        sparse.append(name)
    if sparse:
        flat[STORED_ENTRIES] = ~masked
        meta[SPARSE_TENSORS] = ",".join(sparse)
    return flat, meta


def test_pass_files_hold_what_the_rules_decided_layer_by_layer(model, tmp_path):
    """The writer decides for all layers at once (one softmax, one gather per field); its
    files hold exactly what the per-layer rules give: the same tensors bit for bit, the
    same metadata, for generation, replays, a knockout in some layers, f16 captures and
    edited records (NaN, α ≠ 0 or −0.0 under the mask, one layer's α perturbed, a pair −∞
    in every layer and head but one)."""
    capture = attnvar.Capture(scores=True)
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=6, capture=capture)
    parallel = [int(i) for i in run.slots["is_parallel"].to_numpy().nonzero()[0]]
    knocked = model.replay(run, "shared_isolated", capture=capture,
                           interventions=[{"layer_begin": 2, "layer_end": 4,
                                           "key_slots": parallel, "delta": float("-inf")}])
    half = model.generate("Once upon a time", threshold=0.1, max_steps=3,
                          capture=attnvar.Capture(scores=True, dtype="float16"))
    records = [*run.passes, model.replay(run, "serial", capture=capture).passes[0],
               knocked.passes[0], *half.passes]
    base = records[-len(half.passes) - 2]  # the serial replay: causal, half masked
    scores = [t.clone() for t in base.scores]
    attention = [t.clone() for t in base.attention]
    scores[1][0, 1, 0] = float("nan")
    qi, ki = torch.isneginf(scores[4][0]).nonzero()[0].tolist()
    attention[4][0, qi, ki] = 1e-3
    attention[5][0, qi, ki] = -0.0
    attention[7][2, 3, 1] = torch.nextafter(attention[7][2, 3, 1], torch.tensor(2.0))
    # −∞ in every layer and head but the first head of the first layer: not masked.
    qf, kf = (~torch.isneginf(scores[0][0])).nonzero()[-1].tolist()
    for i, t in enumerate(scores):
        t[(1 if i == 0 else 0):, qf, kf] = float("-inf")
    records.append(PassRecord(base.step, base.first_slot, base.num_queries,
                              {"attention": attention, "scores": scores, "value_norms": []}))
    seen_derived = seen_stored_attention = 0
    for n, rec in enumerate(records):
        path = tmp_path / f"{n}.safetensors"
        rec.write(path)
        want, want_meta = _reference_file(rec)
        with safe_open(str(path), "pt") as f:
            got = {k: f.get_tensor(k) for k in f.keys()}
            got_meta = f.metadata() or {}
        assert got_meta == want_meta, n
        assert sorted(got) == sorted(want), n
        for k, t in want.items():
            assert _same_bits(got[k], t.contiguous()), (n, k)
        seen_derived += ATTENTION_FROM_SCORES in got_meta
        seen_stored_attention += any(k.endswith(".attention") for k in got)
    assert seen_derived and seen_stored_attention  # both rules were exercised
