"""Writes the fuzzers' fixed inputs: the seed corpora, the regression corpus and the two
tokenizers the `tokenizer` target loads, all under tests/data/fuzz/.

Deterministic (fixed seeds, fixed training texts), so rerunning it rewrites the same files;
run it after changing what a seed should cover, and commit the result. It uses the
independent writers (gguf, safetensors, HF tokenizers) and the tokenizer tests' vocabulary
trainers, never attnvar itself.

    python3 fuzz/make_seeds.py
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save as save_safetensors
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from tokenizer_oracles import (  # noqa: E402
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    USER_DEFINED,
    corpus_samples,
    random_texts,
    train_byte_level_vocab,
    train_sentencepiece_vocab,
    write_gguf,
)

OUT = ROOT / "tests" / "data" / "fuzz"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_level_json(vocab: dict[str, int], merges: list[tuple[str, str]]) -> str:
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False)])
    return tok.to_str()


def sentencepiece_json(tokens: list[str], merges: list[tuple[str, str]]) -> str:
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok.to_str()


def sentencepiece_meta(tokens: list[str]) -> dict:
    types = [UNKNOWN, CONTROL, CONTROL, *([BYTE] * 256), *([NORMAL] * (len(tokens) - 259))]
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return {"model": "llama", "tokens": [*tokens, "<tool>"], "token_type": [*types, USER_DEFINED],
            "scores": [*scores, 0.0], "bos_token_id": 1, "eos_token_id": 2,
            "unknown_token_id": 0, "add_space_prefix": True}


def byte_level_meta(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict:
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [CONTROL if t.startswith("<|") else NORMAL for t in tokens]
    return {"model": "gpt2", "pre": "smollm", "tokens": tokens, "token_type": types,
            "merges": [f"{a} {b}" for a, b in merges],
            "bos_token_id": tokens.index("<|im_start|>"),
            "eos_token_id": tokens.index("<|endoftext|>"), "add_bos_token": False}


def gguf_bytes(write) -> bytes:
    """A GGUF made by gguf.GGUFWriter, configured by `write(writer)`, as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        write(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def gguf_meta_bytes(meta: dict) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.gguf"
        write_gguf(str(path), meta)
        return path.read_bytes()


def tensors_gguf(writer: gguf.GGUFWriter) -> None:
    """Every metadata value type and a small tensor of each type attnvar dequantizes."""
    rng = np.random.default_rng(7)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_uint8("test.u8", 200)
    writer.add_int8("test.i8", -5)
    writer.add_uint16("test.u16", 60000)
    writer.add_int16("test.i16", -300)
    writer.add_uint32("test.u32", 4_000_000_000)
    writer.add_int32("test.i32", -70000)
    writer.add_uint64("test.u64", 2**40)
    writer.add_int64("test.i64", -(2**40))
    writer.add_float32("test.f32", 1e-5)
    writer.add_float64("test.f64", 3.25)
    writer.add_bool("test.bool", True)
    writer.add_string("test.string", "caf\u00e9")
    writer.add_array("test.ints", [1, 2, 3])
    writer.add_array("test.floats", [0.5, -1.5])
    writer.add_array("test.strings", ["a", "\u6771\u4eac"])
    values = rng.standard_normal((2, 256)).astype(np.float32)
    writer.add_tensor("f32.weight", values)
    writer.add_tensor("f16.weight", values.astype(np.float16))
    for qtype in (Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0):
        data = gguf.quants.quantize(values, qtype)
        writer.add_tensor(f"{qtype.name.lower()}.weight", data, raw_dtype=qtype)
    # gguf's Python code does not quantize to K types: blocks of random bytes, whose f16
    # scales are kept finite (exponent bits cleared) so the values are ordinary numbers.
    for qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
        shape = gguf.quants.quant_shape_to_byte_shape(values.shape, qtype)
        data = rng.integers(0, 256, size=shape, dtype=np.uint8) & 0xBF
        writer.add_tensor(f"{qtype.name.lower()}.weight", data, raw_dtype=qtype)


def safetensors_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    several = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f16": rng.standard_normal((5,)).astype(np.float16),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "u8": np.arange(7, dtype=np.uint8),
        "bool": np.array([True, False]),
        "scalar": np.array(1.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    return {
        "several_dtypes.safetensors": save_safetensors(several, metadata={"format": "pt"}),
        "one_tensor.safetensors": save_safetensors({"w": np.ones((2, 2), np.float32)}),
    }


def config_seeds() -> dict[str, str]:
    base = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "bos_token_id": 1, "eos_token_id": [2, 3], "tie_word_embeddings": True}
    return {
        "llama.json": json.dumps({**base, "model_type": "llama", "architectures":
                                  ["LlamaForCausalLM"], "rope_scaling": {
                                      "rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 128}}),
        "qwen2.json": json.dumps({**base, "model_type": "qwen2", "eos_token_id": 2}),
        "qwen3.json": json.dumps({**base, "model_type": "qwen3", "head_dim": 32,
                                  "attention_bias": False}),
        "mistral.json": json.dumps({**base, "model_type": "mistral", "sliding_window": 128,
                                    "rope_scaling": {"type": "linear", "factor": 2.0}}),
        "gemma2.json": json.dumps({**base, "model_type": "gemma2", "sliding_window": 64,
                                   "hidden_activation": "gelu_pytorch_tanh",
                                   "query_pre_attn_scalar": 24, "attn_logit_softcapping": 50.0,
                                   "final_logit_softcapping": None,
                                   "layer_types": ["sliding_attention", "full_attention"]}),
        "gemma3_text.json": json.dumps({**base, "model_type": "gemma3_text",
                                        "sliding_window": 64, "sliding_window_pattern": 6,
                                        "rope_parameters": {
                                            "full_attention": {"rope_type": "linear",
                                                               "factor": 8.0,
                                                               "rope_theta": 1e6},
                                            "sliding_attention": {"rope_type": "default",
                                                                  "rope_theta": 1e4}}}),
        "qwen2_window.json": json.dumps({**base, "model_type": "qwen2",
                                         "use_sliding_window": True, "sliding_window": 32,
                                         "max_window_layers": 1}),
    }


def regressions(seed_gguf: bytes, tokenizer_json: str) -> dict[str, dict[str, bytes]]:
    """Inputs that once crashed or misbehaved (the fault campaign of 2026-12-06), kept so
    that every CI run replays them."""
    long_name = gguf_bytes(lambda w: w.add_tensor("x" * 100_000, np.zeros(4, np.float32)))
    huge_layers = gguf_bytes(lambda w: (w.add_block_count(2**32 - 1),
                                        w.add_tensor("blk.0.attn_q.weight",
                                                     np.zeros(4, np.float32))))
    # A metadata string and a token with ill-formed UTF-8: GGUFWriter writes str only, so
    # the bytes are patched in place (same length).
    bad_utf8 = bytearray(gguf_meta_bytes({"model": "gpt2", "pre": "smollm",
                                          "tokens": ["a", "b", "ab", "QQQQ"],
                                          "merges": ["a b"]}))
    at = bad_utf8.index(b"QQQQ")
    bad_utf8[at:at + 4] = b"\xff\xfe\xc3("
    # The same as a SentencePiece vocabulary's control token (shown by piece() as text).
    bad_sp = bytearray(gguf_meta_bytes({"model": "llama", "tokens": ["<unk>", "<s>", "</s>",
                                                                     "a", "QQQQ"],
                                        "token_type": [UNKNOWN, CONTROL, CONTROL, NORMAL,
                                                       CONTROL],
                                        "scores": [0.0] * 5, "bos_token_id": 1,
                                        "eos_token_id": 2}))
    at = bad_sp.index(b"QQQQ")
    bad_sp[at:at + 4] = b"\xff\xfe\xc3("
    cut = tokenizer_json.encode()
    at = cut.index("\u0120".encode())  # a two-byte character of the byte alphabet
    return {
        "gguf": {"tensor_name_100k.gguf": long_name,
                 "block_count_2p32.gguf": huge_layers,
                 "token_invalid_utf8.gguf": bytes(bad_utf8),
                 "control_token_invalid_utf8.gguf": bytes(bad_sp),
                 "truncated_in_tensor_infos.gguf": seed_gguf[:200]},
        "tokenizer_json": {"cut_inside_a_character.json": cut[:at + 1],
                           "utf16.json": tokenizer_json[:400].encode("utf-16")},
        "config_json": {"utf16.json": json.dumps({"model_type": "llama"}).encode("utf-16"),
                        "layers_2p32.json": json.dumps({"model_type": "llama",
                                                        "num_hidden_layers": 2**32}).encode(),
                        "nan.json": b'{"model_type": "llama", "rms_norm_eps": NaN}'},
        "safetensors": {"header_length_2p60.safetensors": struct.pack("<Q", 2**60) + b"{}",
                        "offsets_past_end.safetensors": struct.pack("<Q", 60) + json.dumps(
                            {"w": {"dtype": "F32", "shape": [4],
                                   "data_offsets": [0, 16]}}).encode().ljust(60) + b"\0" * 8},
        "tokenizer": {"invalid_utf8.txt": b"abc \xff\xfe \xe2\x82 \xed\xa0\x80 <|im_start|>x"},
    }


def write_dir(directory: Path, files: dict[str, bytes | str], keep_others: bool = False) -> None:
    """Writes `files` into `directory`; other files there are removed unless `keep_others`
    (the regression corpus also holds inputs the fuzzers found, committed as they were)."""
    if directory.exists() and not keep_others:
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (directory / name).write_bytes(data)


def main() -> None:
    bl_vocab, bl_merges = train_byte_level_vocab(400, SPECIALS)
    sp_tokens, sp_merges = train_sentencepiece_vocab(400, limit_alphabet=100)
    bl_json = byte_level_json(bl_vocab, bl_merges)
    sp_json = sentencepiece_json(sp_tokens, sp_merges)
    sp_gguf = gguf_meta_bytes(sentencepiece_meta(sp_tokens))
    bl_gguf = gguf_meta_bytes(byte_level_meta(bl_vocab, bl_merges))
    t_gguf = gguf_bytes(tensors_gguf)

    write_dir(OUT / "tokenizers", {"byte_level.json": bl_json, "sentencepiece.gguf": sp_gguf})
    seeds = OUT / "seeds"
    write_dir(seeds / "gguf", {"tensors.gguf": t_gguf, "sentencepiece.gguf": sp_gguf,
                               "byte_level.gguf": bl_gguf})
    write_dir(seeds / "safetensors", safetensors_seeds())
    write_dir(seeds / "tokenizer_json", {"byte_level.json": bl_json,
                                         "sentencepiece.json": sp_json})
    write_dir(seeds / "config_json", config_seeds())
    texts = [*corpus_samples(), *random_texts(40, seed=11)]
    write_dir(seeds / "tokenizer", {f"text_{i:03d}.txt": t for i, t in enumerate(texts)})
    for target, files in regressions(t_gguf, bl_json).items():
        write_dir(OUT / "regressions" / target, files, keep_others=True)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {sum(1 for p in OUT.rglob('*') if p.is_file())} files, {total} bytes, "
          f"under {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
