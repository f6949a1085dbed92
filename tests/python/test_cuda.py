"""The engine on a CUDA device, against the same engine on the CPU and against HF
transformers eager attention on the same GPU: logits, attention, generated trees, replays,
interventions, value norms and the compat preset, on tiny random models of each family.

Without a CUDA device (CI, the CPU build of torch) only the refusal tests run; the rest are
skipped. `scripts/cuda_check.sh` builds attnvar on a GPU machine and runs this module.
ATTNVAR_TEST_DEVICE=cpu runs the device tests with the CPU standing in for the GPU (a dry
run of the tests themselves).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import attnvar
from attnvar import _core

transformers = pytest.importorskip("transformers")

from tiny_models import FAMILIES, attnvar_model, hf_forward, tiny_hf_model  # noqa: E402
from tiny_models import report as parity_report  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = os.environ.get("ATTNVAR_TEST_DEVICE", "cuda")
NAME = "cpu" if DEVICE == "cpu" else "cuda:0"  # what the engine calls it
needs_cuda = pytest.mark.skipif(DEVICE != "cpu" and not CUDA, reason="no CUDA device")
ENCODINGS = ["shared_isolated", "shared_visible", "shared_causal", "serial", "fractional",
             "top_only"]
PROMPT = [1, 17, 42, 9, 33, 61, 5]
TOL_LOGITS = 2e-4  # f32 on two devices: different kernels and summation orders
TOL_ATTN = 2e-5


def report(label: str, a: torch.Tensor, b: torch.Tensor) -> float:
    return parity_report(label, a, b, tag="cuda parity")


# ---- refusals (run everywhere) ----------------------------------------------------------
def test_unusable_devices_are_refused_by_name(tmp_path):
    hf = tiny_hf_model("llama")
    hf.save_pretrained(tmp_path)
    beyond = f"cuda:{torch.cuda.device_count() + 3}"
    for bad, words in [("gpu", "'gpu' is not a device name"), ("nonsense", "not a device name"),
                       ("mps", "only cpu and cuda"), ("meta", "only cpu and cuda"),
                       (beyond, f"'{beyond}': this (torch build|machine) has")]:
        with pytest.raises(attnvar.ConfigError, match=words):
            attnvar.load_model(tmp_path, device=bad)
        with pytest.raises(attnvar.ConfigError, match=words):
            _core.Model.from_tensors(json.dumps(hf.config.to_dict()), hf.state_dict(),
                                     device=bad)
    if not CUDA:
        with pytest.raises(ValueError, match="no CUDA device available"):
            attnvar.load_model(tmp_path, device="cuda")
    model = attnvar.load_model(tmp_path, device="cpu")
    assert model.device == torch.device("cpu") and model.info()["device"] == "cpu"


# ---- the engine on CUDA ------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_llama():
    return tiny_hf_model("llama", seed=11)


@pytest.fixture(scope="module")
def pair(hf_llama):
    """The same tiny model on the CPU and on the GPU."""
    return attnvar_model(hf_llama), attnvar_model(hf_llama, device=DEVICE)


@needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["isolated", "visible", "causal"])
def test_parallel_set_on_cuda_matches_cpu_engine_and_hf_on_cuda(family, mode):
    hf = tiny_hf_model(family).to(DEVICE)
    gpu, cpu = attnvar_model(hf, device=DEVICE), attnvar_model(hf)
    assert gpu.device == NAME and cpu.device == "cpu"
    P, k = 6, 3
    ids = torch.randint(3, 97, (P + k + 1,), generator=torch.Generator().manual_seed(3))
    positions = torch.tensor([float(i) for i in range(P)] + [float(P)] * k + [P + 1.0])
    visible = torch.ones(P + k + 1, P + k + 1, dtype=torch.bool).tril()
    if mode == "isolated":
        visible[P:P + k, P:P + k] = torch.eye(k, dtype=torch.bool)
    elif mode == "visible":
        visible[P:P + k, P:P + k] = True
    hf_logits, hf_attn = hf_forward(hf, ids, positions, visible)

    def online(model):
        cache = model.new_cache(initial_capacity=4)  # growth on the device
        spans = [(0, P, _core.causal_visibility(P, 0)),
                 (P, P + k, _core.set_visibility(k, P, mode)),
                 (P + k, P + k + 1, _core.causal_visibility(1, P + k))]
        return [model.forward(cache, ids[a:b], positions[a:b], vis, capture=True, scores=True)
                for a, b, vis in spans]

    got, ref = online(gpu), online(cpu)
    for p in got:
        assert p["logits"].device == torch.device(NAME)
        assert all(t.device.type == "cpu" for t in p["attention"] + p["scores"])
    logits = torch.cat([p["logits"].cpu() for p in got])
    assert report(f"{family}/{mode} logits vs CPU engine", logits,
                  torch.cat([p["logits"] for p in ref])) < TOL_LOGITS
    assert report(f"{family}/{mode} logits vs HF cuda", logits, hf_logits) < TOL_LOGITS
    for layer in range(hf.config.num_hidden_layers):
        for p, q in zip(got, ref, strict=True):
            assert report(f"{family}/{mode} L{layer} attention vs CPU engine",
                          p["attention"][layer], q["attention"][layer]) < TOL_ATTN
            assert report(f"{family}/{mode} L{layer} scores vs CPU engine",
                          p["scores"][layer], q["scores"][layer]) < TOL_LOGITS
        row, worst = 0, 0.0
        for p in got:
            a = p["attention"][layer]
            worst = max(worst, (a - hf_attn[layer][:, row:row + a.shape[1], :a.shape[2]])
                        .abs().max().item())
            row += a.shape[1]
        print(f"[cuda parity] {family}/{mode} L{layer} attention vs HF cuda: {worst:.3e}")
        assert worst < TOL_ATTN


def _members(res):
    return [[(m.token_id, m.slot) for m in s.members] for s in res.tree.steps]


@needs_cuda
@pytest.mark.parametrize("mode", ["isolated", "visible", "causal"])
def test_generation_on_cuda_builds_the_cpu_tree_with_host_captures(pair, mode):
    cpu, gpu = pair
    kw = dict(threshold=0.04, max_steps=10, mode=mode, capture=True, scores=True,
              value_norms=True, keep_distributions=True)
    a, b = _core.generate(cpu, PROMPT, **kw), _core.generate(gpu, PROMPT, **kw)
    assert any(len(s.members) >= 2 for s in a.tree.steps), "threshold too high for the test"
    assert _members(b) == _members(a) and b.stop_reason == a.stop_reason
    assert b.distributions.device.type == "cpu"
    assert report(f"generate/{mode} q_t", b.distributions, a.distributions) < 1e-5
    for field in ("probabilities", "scores"):
        da, db = a.dense(field), b.dense(field)
        assert db.device.type == "cpu"
        assert report(f"generate/{mode} dense {field}", db, da) < (
            TOL_ATTN if field == "probabilities" else TOL_LOGITS)
    assert report(f"generate/{mode} value norms", b.value_norms(), a.value_norms()) < 1e-4


@needs_cuda
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_replay_on_cuda_matches_cpu_under_every_encoding(pair, encoding):
    cpu, gpu = pair
    tree = _core.generate(cpu, PROMPT, threshold=0.04, max_steps=8).tree
    a = _core.replay(cpu, tree, encoding, capture=True, scores=True)
    b = _core.replay(gpu, tree, encoding, capture=True, scores=True, chunk_size=3)
    assert b.logits.device.type == "cpu" and b.distributions.device.type == "cpu"
    assert report(f"replay/{encoding} logits", b.logits, a.logits) < TOL_LOGITS
    assert report(f"replay/{encoding} q_t", b.distributions, a.distributions) < 1e-5
    assert report(f"replay/{encoding} attention", b.dense(), a.dense()) < TOL_ATTN


@needs_cuda
def test_knockout_intervention_on_cuda_matches_cpu(pair):
    cpu, gpu = pair
    tree = _core.generate(cpu, PROMPT, threshold=0.04, max_steps=8).tree
    knock = [{"layer_begin": 1, "layer_end": 3, "key_slots": [7, 8], "heads": [0, 2]}]
    a = _core.replay(cpu, tree, "shared_isolated", interventions=knock, capture=True)
    b = _core.replay(gpu, tree, "shared_isolated", interventions=knock, capture=True)
    assert report("knockout logits", b.logits, a.logits) < TOL_LOGITS
    assert report("knockout attention", b.dense(), a.dense()) < TOL_ATTN
    plain = _core.replay(gpu, tree, "shared_isolated")
    assert (plain.logits - b.logits).abs().max().item() > 1e-3, "the knockout did nothing"


@needs_cuda
@pytest.mark.parametrize("bug", [False, True])
def test_compat_preset_on_cuda_matches_cpu(pair, bug):
    cpu, gpu = pair
    kw = dict(threshold=0.05, max_steps=8, emulate_isolation_bug=bug, eos_ids=[2],
              capture=True)
    a, b = _core.generate_tempo2025(cpu, PROMPT, **kw), _core.generate_tempo2025(gpu, PROMPT, **kw)
    assert _members(b) == _members(a)
    assert report(f"tempo2025 bug={bug} attention", b.dense(), a.dense()) < TOL_ATTN


@needs_cuda
def test_bfloat16_on_cuda_stays_close_to_f32(hf_llama):
    ref = attnvar_model(hf_llama)
    bf = attnvar_model(hf_llama, dtype=torch.bfloat16, device=DEVICE)
    ids = torch.tensor(PROMPT)
    vis = _core.causal_visibility(len(PROMPT), 0)
    a = ref.forward(ref.new_cache(), ids, torch.arange(float(len(PROMPT))), vis, capture=True)
    b = bf.forward(bf.new_cache(), ids, torch.arange(float(len(PROMPT))), vis, capture=True)
    assert b["logits"].dtype == torch.float32
    d = report("bf16 cuda vs f32 cpu logits", b["logits"], a["logits"])
    assert d < 0.05 * a["logits"].abs().max().item()
    assert report("bf16 cuda vs f32 cpu attention", b["attention"][-1], a["attention"][-1]) < 0.02


@needs_cuda
def test_load_model_on_cuda_runs_generate_save_and_metrics(tmp_path, hf_llama):
    hf_llama.save_pretrained(tmp_path / "model")
    cpu = attnvar.load_model(tmp_path / "model")
    gpu = attnvar.load_model(tmp_path / "model", device=DEVICE)
    assert gpu.device == torch.device(NAME) and gpu.info()["device"] == NAME
    cap = attnvar.Capture(scores=True)
    a = cpu.generate(PROMPT, threshold=0.04, max_steps=10, capture=cap)
    b = gpu.generate(PROMPT, threshold=0.04, max_steps=10, capture=cap)
    assert b.tree.steps and [[m.token_id for m in s.members] for s in b.tree.steps] == [
        [m.token_id for m in s.members] for s in a.tree.steps]
    b.save(tmp_path / "run")
    loaded = attnvar.load_run(tmp_path / "run")
    assert report("saved cuda run attention", loaded.attention, a.attention) < TOL_ATTN
    from attnvar.metrics import analyze

    ma, mb = analyze(a), analyze(loaded)
    assert list(ma.columns) == list(mb.columns) and len(ma) == len(mb)
    num = ma.select_dtypes("number").columns
    x, y = mb[num].to_numpy(float), ma[num].to_numpy(float)
    assert (np.isnan(x) == np.isnan(y)).all()
    # Columns span p-values to counts in the thousands: compare relative to each value.
    rel = np.nan_to_num(np.abs(x - y) / (np.abs(y) + 1e-6))
    worst = np.unravel_index(rel.argmax(), rel.shape)
    print(f"[cuda parity] metrics table (M0-M2, {x.shape[0]} rows): max relative diff "
          f"{rel.max():.3e} (column {num[worst[1]]})")
    assert rel.max() < 1e-3
