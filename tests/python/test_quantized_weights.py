"""GGUF weights kept in their quantized blocks (load_model(weights="quantized"), the default
on the CPU): the same numbers as decoding them to float32 at load, bit for bit, for every
supported type and for the bundled model, at a fraction of the memory."""

from __future__ import annotations

import pytest
import torch

gguf = pytest.importorskip("gguf")

from test_gguf import K_TYPES, Q, tiny_hf_model, write_gguf  # noqa: E402

from attnvar import _core  # noqa: E402

TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, *K_TYPES]


def both(path):
    """The model loaded both ways (quantized first)."""
    return [_core.load_model(str(path), torch.float32, "cpu", w)["model"]
            for w in ("quantized", "float32")]


def passes(model, ids, positions, visible):
    """A prefill of all but the last three tokens, a 2-member set at one position, one more
    token: logits and attention of every pass."""
    cache = model.new_cache()
    n = ids.shape[0]
    out = [model.forward(cache, ids[:n - 3], positions[:n - 3], visible[:n - 3, :n - 3],
                         capture=True)]
    out.append(model.forward(cache, ids[n - 3:n - 1], positions[n - 3:n - 1],
                             visible[n - 3:n - 1, :n - 1], capture=True))
    out.append(model.forward(cache, ids[n - 1:], positions[n - 1:], visible[n - 1:],
                             capture=True))
    return out


@pytest.mark.parametrize("qtype", TYPES, ids=[q.name for q in TYPES])
def test_every_type_runs_quantized_exactly_as_decoded(tmp_path, qtype):
    # K types need rows of 256 elements: hidden 256, intermediate 512.
    hf_dir = tmp_path / "hf"
    config = tiny_hf_model("llama", hf_dir, hidden_size=256, intermediate_size=512,
                           num_attention_heads=4, num_key_value_heads=2,
                           tie_word_embeddings=qtype in (Q.Q8_0, Q.Q6_K))
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    write_gguf(hf_dir, config, path, qtype)
    quantized, decoded = both(path)
    assert (quantized.weights, decoded.weights) == ("quantized", "float32")
    # Every 2-D weight stays in its blocks: ~bits/32 of the f32 bytes (norms stay f32).
    ratio = quantized.weight_bytes / decoded.weight_bytes
    print(f"[quantized] {qtype.name}: weights {quantized.weight_bytes} B vs "
          f"{decoded.weight_bytes} B in f32 ({ratio:.3f})")
    assert ratio < 0.3
    # A 7-row prefill goes through the quantized gemv kernels; a 37-row one multiplies each
    # matrix decoded into the reused per-thread buffer with BLAS (matrices of several
    # shapes, one after another, in the same buffer).
    for n in (10, 40):
        ids = torch.randint(3, 96, (n,), generator=torch.Generator().manual_seed(n))
        positions = torch.tensor([float(i) for i in range(n - 3)] + [n - 3.0] * 2 + [n - 2.0])
        visible = torch.ones(n, n, dtype=torch.bool).tril()
        visible[n - 2, n - 3] = False  # the set's members are isolated
        got = passes(quantized, ids, positions, visible)
        expected = passes(decoded, ids, positions, visible)
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a["logits"], b["logits"])
            for x, y in zip(a["attention"], b["attention"], strict=True):
                assert torch.equal(x, y)
        assert torch.isfinite(got[0]["logits"]).all()


def members(tree) -> list[list[tuple[int, float]]]:
    """Each set's (token id, probability) pairs in rank order."""
    return [[(m.token_id, m.probability) for m in step.members] for step in tree.steps]


def test_bundled_model_quantized_generates_what_float32_generates(bundled_path):
    """The default (quantized) and the decoded model give the same logits and the same
    greedy tokens and parallel sets on the bundled model: the weight mode never changes a
    result, only memory and speed."""
    from attnvar import Capture, load_model

    q = load_model(bundled_path)
    f = load_model(bundled_path, weights="float32")
    assert q.core.weights == "quantized" and f.core.weights == "float32"
    print(f"[quantized] bundled model weights: {q.core.weight_bytes / 1e6:.1f} MB quantized, "
          f"{f.core.weight_bytes / 1e6:.1f} MB in f32")
    assert q.core.weight_bytes < 0.2 * f.core.weight_bytes
    for prompt in ["The capital of France is", "Once upon a time"]:
        a = q.generate(prompt, max_steps=12, threshold=0.05)
        b = f.generate(prompt, max_steps=12, threshold=0.05)
        assert list(a.tree.prompt) == list(b.tree.prompt)
        assert members(a.tree) == members(b.tree), prompt
        assert a.tree.num_steps == 12
        # A replay is one pass over every slot (> 16 rows: the BLAS path), twice in a row.
        for _ in range(2):
            ra = q.replay(a.tree, "serial", capture=Capture(scores=True))
            rb = f.replay(b.tree, "serial", capture=Capture(scores=True))
            assert ra.num_slots > 16
            assert torch.equal(ra.scores, rb.scores) and torch.equal(ra.attention, rb.attention)
            assert torch.equal(ra.distributions, rb.distributions)
    assert q.identity["weights"] == "quantized" and f.identity["weights"] == "float32"
