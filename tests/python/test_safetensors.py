"""safetensors reading and HF-directory loading against `safetensors` and `transformers`.

Tiny random transformers models are saved with `save_pretrained` (single file, sharded,
bf16); attnvar must load exactly the tensors the `safetensors` package reads, under the
same names, with the config and a verifiable identity. Bad files raise Python exceptions
that name the file and the tensor or field.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

from attnvar import _core

safetensors_torch = pytest.importorskip("safetensors.torch")
transformers = pytest.importorskip("transformers")


def save_tiny(out_dir: Path, model_type: str = "llama", dtype=torch.float32, **save_kwargs):
    torch.manual_seed(0)
    cfg_cls, model_cls = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    }[model_type]
    config = getattr(transformers, cfg_cls)(
        vocab_size=80,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=model_type == "qwen2",
        bos_token_id=1,
        eos_token_id=2,
    )
    model = getattr(transformers, model_cls)(config).to(dtype)
    model.save_pretrained(out_dir, **save_kwargs)
    return config


def reference_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(safetensors_torch.load_file(str(f)))
    return out


def sha256_of(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_hf_directory_loads_the_saved_tensors_exactly(tmp_path, model_type):
    config = save_tiny(tmp_path, model_type)
    cfg, tensors, identity = _core.load_weights(str(tmp_path))
    ref = reference_tensors(tmp_path)
    if config.tie_word_embeddings:
        ref.pop("lm_head.weight", None)
    assert set(tensors) == set(ref)
    worst = max((tensors[k] - v).abs().max().item() for k, v in ref.items())
    print(f"[parity] {model_type} safetensors f32: max |diff| = {worst}")
    assert worst == 0.0
    assert all(tensors[k].dtype == torch.float32 for k in ref)
    assert cfg["model_type"] == model_type
    assert cfg["num_key_value_heads"] == 2 and cfg["head_dim"] == 8
    assert cfg["tie_word_embeddings"] is config.tie_word_embeddings
    assert cfg["rms_norm_eps"] == 1e-6
    assert identity == {
        "path": str(tmp_path),
        "format": "safetensors",
        "sha256": sha256_of([tmp_path / "model.safetensors"]),
        "quantization": "F32",
        "note": "",
    }


def test_bf16_checkpoint_loads_as_f32_or_bf16(tmp_path):
    save_tiny(tmp_path, dtype=torch.bfloat16)
    ref = reference_tensors(tmp_path)
    assert ref["model.norm.weight"].dtype == torch.bfloat16
    _, f32, identity = _core.load_weights(str(tmp_path))
    assert all(torch.equal(f32[k], v.float()) for k, v in ref.items())
    assert identity["quantization"] == "BF16"
    assert identity["note"] == "converted from BF16 to f32"
    _, bf16, _ = _core.load_weights(str(tmp_path), dtype=torch.bfloat16)
    assert all(bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], v) for k, v in ref.items())


def test_sharded_checkpoint_loads_through_the_index(tmp_path):
    save_tiny(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    _, tensors, identity = _core.load_weights(str(tmp_path))
    ref = reference_tensors(tmp_path)
    assert set(tensors) == set(ref)
    assert all(torch.equal(tensors[k], v) for k, v in ref.items())
    assert identity["sha256"] == sha256_of(shards)  # shards concatenated in name order


def test_safetensors_read_keeps_every_dtype(tmp_path):
    torch.manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 4),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "i64": torch.arange(6).reshape(2, 3),
        "u8": torch.arange(4, dtype=torch.uint8),
        "flag": torch.tensor([True, False]),
        "f64": torch.randn(2, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "mixed.safetensors"
    safetensors_torch.save_file(tensors, str(path), metadata={"k": "v"})
    got = _core.safetensors_read(str(path))
    assert set(got) == set(tensors)
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


# ---- bad files ---------------------------------------------------------------------------------


def raw_file(path: Path, header: dict | str, data: bytes) -> Path:
    text = header if isinstance(header, str) else json.dumps(header)
    path.write_bytes(struct.pack("<Q", len(text)) + text.encode() + data)
    return path


def test_truncated_and_malformed_files_name_file_and_field(tmp_path):
    good = tmp_path / "good.safetensors"
    safetensors_torch.save_file({"w": torch.ones(4, 4)}, str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(_core.FormatError, match=r"cut\.safetensors: tensor 'w': data_offsets"):
        _core.safetensors_read(str(cut))
    cut.write_bytes(good.read_bytes()[:20])
    with pytest.raises(ValueError, match=r"cut\.safetensors: header length"):
        _core.safetensors_read(str(cut))
    bad = raw_file(
        tmp_path / "dtype.safetensors",
        {"w": {"dtype": "Q4_0", "shape": [4], "data_offsets": [0, 4]}},
        bytes(4),
    )
    with pytest.raises(
        _core.FormatError, match=r"dtype\.safetensors: tensor 'w': unknown dtype 'Q4_0'"
    ):
        _core.safetensors_read(str(bad))
    bad = raw_file(
        tmp_path / "span.safetensors",
        {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}},
        bytes(16),
    )
    with pytest.raises(_core.FormatError, match=r"span\.safetensors: tensor 'w': shape \[2,3\]"):
        _core.safetensors_read(str(bad))
    bad = raw_file(tmp_path / "json.safetensors", "{oops", bytes(8))
    with pytest.raises(_core.FormatError, match=r"json\.safetensors: header: invalid JSON"):
        _core.safetensors_read(str(bad))
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        _core.safetensors_read(str(tmp_path / "absent.safetensors"))


def test_hf_directory_with_a_missing_or_misshapen_tensor(tmp_path):
    save_tiny(tmp_path)
    ref = reference_tensors(tmp_path)
    missing = dict(ref)
    del missing["model.layers.1.mlp.up_proj.weight"]
    safetensors_torch.save_file(missing, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        FileNotFoundError, match=r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight' not found"
    ):
        _core.load_weights(str(tmp_path))
    wrong = dict(ref)
    wrong["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(32, 32)
    safetensors_torch.save_file(wrong, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        _core.FormatError,
        match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj\.weight'.*"
        r"\(32, 32\) does not match the config's \(16, 32\)",
    ):
        _core.load_weights(str(tmp_path))
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        _core.load_weights(str(tmp_path))
