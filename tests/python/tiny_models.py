"""Tiny random-initialised HF models of each family, built in the tests (no downloads)."""

from __future__ import annotations

import json

import torch

FAMILIES = ["llama", "llama3_scaled", "smollm2_tied", "mistral", "qwen2", "qwen3", "phi3",
            "olmo2", "gemma", "gemma2", "gemma3"]


def tiny_config(family: str):
    import transformers

    common = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
    )
    if family == "llama":
        return transformers.LlamaConfig(**common, rope_theta=10000.0)
    if family == "llama3_scaled":
        return transformers.LlamaConfig(
            **common,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    if family == "smollm2_tied":
        return transformers.LlamaConfig(
            **{**common, "num_key_value_heads": 1}, rope_theta=100000.0, tie_word_embeddings=True
        )
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=False)
    if family == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=16, tie_word_embeddings=False)
    if family == "phi3":  # fused qkv_proj and gate_up_proj; GQA 4:2
        return transformers.Phi3Config(**common, pad_token_id=0, tie_word_embeddings=False,
                                       sliding_window=None)
    if family == "olmo2":  # post-norms, q/k norms over the whole projection; GQA 4:2
        return transformers.Olmo2Config(**common, pad_token_id=0, tie_word_embeddings=False)
    # Gemma: embeddings × √hidden, (1 + w) norms, GeGLU, tied embeddings.
    if family == "gemma":
        return transformers.GemmaConfig(**common, head_dim=16, pad_token_id=0)
    # Gemma 2: norms around attention and MLP, a query scale that is not head_dim's, and
    # caps low enough that tanh bends the scores and logits of these weights. Layers
    # alternate sliding and full; the window here is longer than any run (windows shorter
    # than the run: test_sliding_window.py).
    if family == "gemma2":
        return transformers.Gemma2Config(**common, head_dim=16, pad_token_id=0,
                                         query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                                         final_logit_softcapping=3.0, sliding_window=128)
    # Gemma 3: per-head q/k norms, and local layers (here two of three) with their own RoPE
    # base; the global layers' RoPE is linearly scaled.
    if family == "gemma3":
        return transformers.Gemma3TextConfig(
            **common, head_dim=16, pad_token_id=0, query_pre_attn_scalar=16,
            sliding_window=128, sliding_window_pattern=2,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            })
    raise ValueError(family)


# Attention shapes beyond the default (4 heads, 2 kv heads, head_dim 16): multi-query,
# plain multi-head, and a head_dim that is not hidden_size / heads.
SHAPES = {
    "mqa_8x8": dict(num_attention_heads=8, num_key_value_heads=1, head_dim=8),
    "mha_2x32": dict(num_attention_heads=2, num_key_value_heads=2, head_dim=32),
    "wide_4x24": dict(num_attention_heads=4, num_key_value_heads=4, head_dim=24),
}


def tiny_hf_model(family: str, seed: int = 0, shape: dict | None = None):
    """An eager-attention HF model with weights large enough for non-uniform attention;
    ``shape`` overrides config attributes (the head counts and head_dim of SHAPES, a
    sliding_window)."""
    import transformers

    torch.manual_seed(seed)
    cfg = tiny_config(family)
    for key, value in (shape or {}).items():
        setattr(cfg, key, value)
    cfg._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    offset = 0.0 if cfg.model_type.startswith("gemma") else 1.0  # Gemma applies 1 + w
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(offset + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model.eval()


def attnvar_model(hf_model, dtype=torch.float32, device="cpu"):
    from attnvar import _core

    cfg = hf_model.config.to_dict()
    tensors = {k: v.detach().cpu().clone() for k, v in hf_model.state_dict().items()}
    return _core.Model.from_tensors(json.dumps(cfg), tensors, dtype=dtype, origin="tiny",
                                    device=device)


def tiny_llama_model(seed: int = 11, eos_ids=(2,)):
    """A tokenizer-less attnvar Model over a tiny random Llama (prompts as ids)."""
    from attnvar.engine import Model

    core = attnvar_model(tiny_hf_model("llama", seed=seed))
    return Model(core, None, {"note": "tiny"}, list(eos_ids), "tiny", torch.float32)


def additive_mask(visible: torch.Tensor) -> torch.Tensor:
    """(N, N) bool visibility -> HF's explicit 4-D additive mask (1, 1, N, N)."""
    mask = torch.zeros(visible.shape, dtype=torch.float32)
    mask.masked_fill_(~visible, float("-inf"))
    return mask[None, None]


def hf_forward(model, ids, positions=None, visible=None):
    """One HF eager pass over ``ids`` on the model's device, with explicit ``position_ids``
    and the 4-D mask of ``visible`` when given: (logits, [attention per layer]) on the host."""
    dev = model.device
    kwargs = {}
    if positions is not None:
        kwargs["position_ids"] = positions[None].to(dev)
    if visible is not None:
        kwargs["attention_mask"] = additive_mask(visible).to(dev)
    with torch.no_grad():
        out = model(input_ids=ids[None].to(dev), output_attentions=True, use_cache=False,
                    **kwargs)
    return out.logits[0].cpu(), [a[0].cpu() for a in out.attentions]


def report(label: str, a: torch.Tensor, b: torch.Tensor, tag: str = "parity") -> float:
    """Prints and returns max |a - b| over finite entries; the −inf entries (masked scores)
    must sit in the same places."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    assert torch.equal(torch.isfinite(a), torch.isfinite(b)), f"{label}: -inf pattern differs"
    finite = torch.isfinite(a)
    d = (a[finite] - b[finite]).abs().max().item() if finite.any() else 0.0
    print(f"[{tag}] {label}: max |diff| = {d:.3e}")
    return d



def save_tiny_hf_dir(out, family: str = "llama", seed: int = 3):
    """A tiny random HF model directory with a byte-level BPE tokenizer trained here
    (config.json, model.safetensors, tokenizer.json; ids 0 pad, 1 BOS, 2 EOS): text
    prompts work. Returns ``out``."""
    from pathlib import Path

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["the cat sat on the mat and the dog ran to the park"] * 20,
        trainers.BpeTrainer(vocab_size=300, show_progress=False,
                            special_tokens=["<pad>", "<s>", "</s>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = tiny_hf_model(family, seed=seed, shape={"vocab_size": tok.get_vocab_size()})
    hf.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    return out
