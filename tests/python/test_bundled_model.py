"""The bundled SmolLM2-135M-Instruct Q4_1 GGUF against transformers loading the same file
(gguf_file=): logits, greedy decoding, generated parallel trees and the compat preset."""

from __future__ import annotations

import pytest
import torch

from attnvar import _core

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from test_generate import tempo_reference  # noqa: E402
from tiny_models import additive_mask  # noqa: E402

PROMPTS = [
    "The cat sat on the",
    "Once upon a time in a distant galaxy",
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Photosynthesis is the process by which",
    "Despite the significant challenges, researchers in quantum computing",
]


@pytest.fixture(scope="module")
def ours(bundled_path):
    return _core.load_model(str(bundled_path))


@pytest.fixture(scope="module")
def hf(bundled_path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(bundled_path.parent), gguf_file=bundled_path.name, dtype=torch.float32,
        attn_implementation="eager",
    ).eval()


def test_identity_is_recorded(ours):
    ident = ours["identity"]
    assert ident["format"] == "gguf" and ident["quantization"] == "Q4_1"
    # Quantized weights stay in their blocks by default (211: every 2-D weight of this file);
    # norms are decoded.
    assert ident["note"] == "211 weights kept quantized, the rest dequantized to f32"
    assert len(ident["sha256"]) == 64
    assert 2 in ours["eos_ids"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers_on_the_same_gguf(ours, hf, prompt):
    ids = ours["tokenizer"].encode(prompt)
    model = ours["model"]
    out = model.forward(model.new_cache(), torch.tensor(ids), torch.arange(float(len(ids))),
                        _core.causal_visibility(len(ids), 0))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([ids])).logits[0]
    d = (out["logits"] - ref).abs().max().item()
    print(f"[parity] bundled model logits, {prompt!r}: max |diff| = {d:.3e}")
    assert d < 1e-3


def test_greedy_decoding_of_20_tokens_matches(ours, hf):
    for prompt in PROMPTS[:3]:
        ids = ours["tokenizer"].encode(prompt)
        run = _core.generate(ours["model"], ids, threshold=1.0, max_steps=20, eos_ids=[10**0])
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        got = [s.members[0].token_id for s in run.tree.steps]
        print(f"[parity] greedy {prompt!r}: {ours['tokenizer'].decode(got)!r}")
        assert got == ref


@pytest.mark.parametrize("mode", ["isolated", "visible"])
def test_generated_tree_capture_equals_hf_eager(ours, hf, mode):
    ids = ours["tokenizer"].encode("The cat sat on the")
    run = _core.generate(ours["model"], ids, threshold=0.1, max_steps=6, mode=mode,
                         capture=True)
    assert any(len(s.members) > 1 for s in run.tree.steps)
    layout = _core.encode(run.tree, "shared_" + mode)
    with torch.no_grad():
        out = hf(input_ids=layout.token_ids[None], position_ids=layout.positions.float()[None],
                 attention_mask=additive_mask(layout.visibility), output_attentions=True)
    dense = run.dense()
    worst = max((dense[i] - out.attentions[i][0]).abs().max().item() for i in range(30))
    print(f"[parity] bundled {mode} tree capture vs HF eager: max |diff| = {worst:.3e}")
    assert worst < 1e-4


def test_compat_preset_matches_independent_implementation(ours, hf):
    tok = ours["tokenizer"]
    ids = [1] + tok.encode("The cat sat on the")  # the prototype adds BOS
    run = _core.generate_tempo2025(ours["model"], ids, threshold=0.1, max_steps=6,
                                   emulate_isolation_bug=True)
    fed, sets = tempo_reference(hf, ids, 0.1, 6, True)
    assert [s.token_id for s in run.slots] == fed
    assert [[m.token_id for m in s.members] for s in run.tree.steps] == sets
