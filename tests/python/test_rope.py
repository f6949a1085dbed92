"""RoPE through attnvar._core on torch tensors, against the closed form and HF."""

import math

import pytest
import torch

import attnvar
from attnvar import _core


def closed_form(x: torch.Tensor, positions: list[float], theta: float) -> torch.Tensor:
    d = x.shape[-1]
    h = d // 2
    out = torch.empty_like(x, dtype=torch.float64)
    xd = x.double()
    for t, p in enumerate(positions):
        for i in range(h):
            a = p * theta ** (-2.0 * i / d)
            c, s = math.cos(a), math.sin(a)
            out[..., t, i] = xd[..., t, i] * c - xd[..., t, i + h] * s
            out[..., t, i + h] = xd[..., t, i + h] * c + xd[..., t, i] * s
    return out


def test_rope_matches_closed_form_with_repeated_and_fractional_positions():
    torch.manual_seed(0)
    positions = [0.0, 1.0, 2.0, 2.0, 2.0, 2.5, 3.25, 4.0]
    x = torch.randn(3, len(positions), 16)  # (heads, T, head_dim)
    got = _core.rope_apply(x, torch.tensor(positions), theta=10000.0)
    assert got.shape == x.shape and got.dtype == torch.float32
    diff = (got.double() - closed_form(x, positions, 10000.0)).abs().max().item()
    print(f"[parity] rope vs closed form: max |diff| = {diff:.3e}")
    assert diff < 5e-6
    # Tokens sharing a position get the same rotation.
    same = _core.rope_apply(x[:, 2:3].expand(3, 3, 16).contiguous(), torch.tensor([2.0] * 3))
    assert torch.equal(same[:, 0], got[:, 2]) and torch.equal(same[:, 2], got[:, 2])


def test_rope_matches_transformers_apply_rotary_pos_emb():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as ml

    cfg = transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=2, num_key_value_heads=2, rope_theta=100000.0
    )
    rotary = ml.LlamaRotaryEmbedding(cfg)
    torch.manual_seed(1)
    positions = torch.tensor([[0.0, 3.0, 3.0, 3.0, 4.0, 7.5]])
    q = torch.randn(1, 2, 6, 32)
    cos, sin = rotary(q, positions)
    expected, _ = ml.apply_rotary_pos_emb(q, q, cos, sin)
    inv = _core.rope_inv_freq(32, theta=100000.0)
    diff_inv = (inv - rotary.inv_freq).abs().max().item()
    got = _core.rope_apply(q, positions[0], theta=100000.0)
    diff = (got - expected).abs().max().item()
    print(f"[parity] inv_freq vs HF: {diff_inv:.3e}; rope vs HF: max |diff| = {diff:.3e}")
    assert diff_inv == 0.0
    assert diff <= 1e-6


def test_rope_errors_are_python_exceptions():
    with pytest.raises(attnvar.ConfigError, match="head_dim"):
        _core.rope_apply(torch.zeros(2, 7), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="positions"):
        _core.rope_apply(torch.zeros(2, 8), torch.zeros(2, 2))
    with pytest.raises(attnvar.ConfigError, match="yarn"):
        _core.rope_apply(torch.zeros(2, 8), torch.tensor([0.0, 1.0]), scaling="yarn")
