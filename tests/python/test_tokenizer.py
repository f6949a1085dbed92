"""attnvar.Tokenizer from tokenizer.json against HF tokenizers, on small synthetic tokenizers of
each family (trained here, written as tokenizer.json), plus invalid UTF-8 and API behaviour.

Each configuration mirrors a real model family's tokenizer.json layout: GPT-2, SmolLM2
(digits split one by one), Llama 3 (Split regex + ignore_merges + BOS template), Qwen2, and
SentencePiece-style Llama 2 files in their legacy (normalizer) and Metaspace layouts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizer_oracles import (
    LLAMA3_SPLIT,
    QWEN2_SPLIT,
    SPACE_MARKER,
    corpus_samples,
    corpus_text,
    count_mismatches,
    expected_piece,
    random_texts,
    train_byte_level_vocab,
    train_sentencepiece_vocab,
)
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from attnvar import ConfigError, FormatError
from attnvar._core import Tokenizer

BYTE_LEVEL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]


@pytest.fixture(scope="module")
def byte_level_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    return train_byte_level_vocab(800, BYTE_LEVEL_SPECIALS)


@pytest.fixture(scope="module")
def sentencepiece_vocab() -> tuple[list[str], list[tuple[str, str]]]:
    return train_sentencepiece_vocab(700, limit_alphabet=150)


# Whole-word tokens no merge produces: only ignore_merges (Llama 3) emits them.
WORD_TOKENS = ["Ġpotato", "Ġlighthouse", "committee"]


def byte_level_tokenizer(
    vocab, merges, pre, *, ignore_merges=False, bos=False, normalizer=None
) -> HFTokenizer:
    if ignore_merges:
        vocab = dict(vocab)
        for word in WORD_TOKENS:
            vocab.setdefault(word, len(vocab))
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in BYTE_LEVEL_SPECIALS]
    )
    # A non-special added token that is normalized like text, as user-added tokens default to.
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=True)])
    if bos:
        bos_id = vocab["<|begin_of_text|>"]
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single="<|begin_of_text|> $A",
                    special_tokens=[("<|begin_of_text|>", bos_id)],
                ),
            ]
        )
    return tok


def byte_level_split(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


BYTE_LEVEL_CONFIGS: dict[str, Callable[[dict, list], HFTokenizer]] = {
    "gpt2": lambda v, m: byte_level_tokenizer(
        v, m, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ),
    "gpt2_prefix_space": lambda v, m: byte_level_tokenizer(
        v, m, pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    ),
    "smollm2": lambda v, m: byte_level_tokenizer(
        v,
        m,
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        ),
    ),
    "llama3": lambda v, m: byte_level_tokenizer(
        v, m, byte_level_split(LLAMA3_SPLIT), ignore_merges=True, bos=True
    ),
    "qwen2": lambda v, m: byte_level_tokenizer(
        v, m, byte_level_split(QWEN2_SPLIT), normalizer=normalizers.NFC()
    ),
    # Split behaviours other than "isolated", and digit runs kept together.
    "split_behaviours": lambda v, m: byte_level_tokenizer(
        v,
        m,
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"[.,;]"), behavior="merged_with_previous"),
                pre_tokenizers.Split(" ", behavior="merged_with_next"),
                pre_tokenizers.Split(Regex(r"[!?]+"), behavior="contiguous"),
                pre_tokenizers.Split(Regex(r"\t"), behavior="removed"),
                pre_tokenizers.Split(Regex(r"\w+"), behavior="isolated", invert=True),
                pre_tokenizers.Digits(individual_digits=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
    ),
}


def sentencepiece_tokenizer(tokens, merges, layout: str) -> HFTokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = HFTokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    fallback = [decoders.Replace(SPACE_MARKER, " "), decoders.ByteFallback(), decoders.Fuse()]
    if layout == "legacy":  # Llama 2 / TinyLlama / Mistral v0.1 / Phi-3 tokenizer.json
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend(SPACE_MARKER), normalizers.Replace(" ", SPACE_MARKER)]
        )
        tok.decoder = decoders.Sequence([*fallback, decoders.Strip(" ", 1, 0)])
    elif layout == "gemma":  # Gemma 1/2/3: spaces become ▁, no dummy prefix, no Strip
        tok.normalizer = normalizers.Replace(" ", SPACE_MARKER)
        tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        tok.decoder = decoders.Sequence(fallback)
    elif layout == "metaspace_first":  # transformers' LlamaTokenizer (legacy=False)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            SPACE_MARKER, prepend_scheme="first", split=False
        )
        tok.decoder = decoders.Sequence([*fallback, decoders.Strip(" ", 1, 0)])
    elif layout == "metaspace_split":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            SPACE_MARKER, prepend_scheme="always", split=True
        )
        tok.decoder = decoders.Sequence(
            [decoders.ByteFallback(), decoders.Metaspace(SPACE_MARKER, prepend_scheme="always")]
        )
    elif layout == "no_byte_fallback":
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            SPACE_MARKER, prepend_scheme="never", split=True
        )
        tok.decoder = decoders.Metaspace(SPACE_MARKER, prepend_scheme="never")
    else:
        raise ValueError(layout)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens[:3]])
    # Added tokens of every kind: normalized (matched after the normalizer, content normalized
    # too), stripping whitespace on either side, and whole-word only.
    tok.add_tokens(
        [
            AddedToken("<tool>", special=False, normalized=True),
            AddedToken("cat", special=False, normalized=False, single_word=True),
        ]
    )
    tok.add_special_tokens(
        [AddedToken("<mask>", special=True, normalized=False, lstrip=True, rstrip=True)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


SENTENCEPIECE_LAYOUTS = ["legacy", "gemma", "metaspace_first", "metaspace_split",
                         "no_byte_fallback"]


def save(tok: HFTokenizer, directory: Path, *, legacy_merges: bool = False) -> Path:
    path = directory / "tokenizer.json"
    data = json.loads(tok.to_str())
    if legacy_merges:  # the older "left right" string form of merges
        data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


SAMPLES_EXTRA = [
    "a <tool> b<tool>c",
    "<|im_start|>x",
    "  <|im_end|>  ",
    "hello world",
    "a potato lighthouse committee",
    "cat concatenate cat, the cat's bobcat _cat",
    "fill  <mask>  here<mask>and   <mask>",
]


def check_against_oracle(ours: Tokenizer, oracle: HFTokenizer, name: str) -> None:
    samples = [*corpus_samples(), corpus_text(), *SAMPLES_EXTRA]
    for add_special in (False, True):
        bad = count_mismatches(ours, oracle, samples, add_special=add_special)
        counts = f"{len(bad)}/{len(samples)}"
        print(f"[oracle] {name} encode add_special={add_special}: {counts} mismatches")
        assert not bad, bad[:2]
    decode_bad = 0
    for text in samples:
        ids = ours.encode(text, True)
        for skip in (False, True):
            decode_bad += ours.decode(ids, skip) != oracle.decode(ids, skip_special_tokens=skip)
    rng = random.Random(11)
    for _ in range(200):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 10))]
        decode_bad += ours.decode(ids) != oracle.decode(ids, skip_special_tokens=False)
    print(f"[oracle] {name} decode: {decode_bad} mismatches")
    assert decode_bad == 0
    assert ours.vocab_size == oracle.get_vocab_size(with_added_tokens=True)
    for token, token_id in oracle.get_vocab(with_added_tokens=True).items():
        assert ours.token_to_id(token) == token_id
        assert ours.id_to_token(token_id) == token


@pytest.mark.parametrize("name", sorted(BYTE_LEVEL_CONFIGS))
def test_byte_level_tokenizer_json_matches_oracle(tmp_path: Path, byte_level_vocab, name):
    vocab, merges = byte_level_vocab
    oracle = BYTE_LEVEL_CONFIGS[name](vocab, merges)
    ours = Tokenizer.from_file(str(save(oracle, tmp_path)))
    assert ours.family == "byte_level_bpe"
    check_against_oracle(ours, oracle, name)
    added = {
        i
        for i in range(ours.vocab_size)
        if oracle.id_to_token(i) in [*BYTE_LEVEL_SPECIALS, "<tool>"]
    }
    for i in range(ours.vocab_size):
        assert ours.piece(i) == expected_piece(
            oracle.id_to_token(i), family="byte_level_bpe", added=i in added
        )
    if name in ("gpt2", "smollm2", "llama3"):  # lossless layouts (qwen2 normalizes to NFC)
        for text in corpus_samples():
            assert ours.decode(ours.encode(text, False)) == text


def test_nfc_normalizer_matches_hf_on_random_combining_sequences(byte_level_vocab):
    """Qwen2 declares NFC: canonical reordering, composition, exclusions, Hangul, singletons."""
    vocab, merges = byte_level_vocab
    oracle = BYTE_LEVEL_CONFIGS["qwen2"](vocab, merges)
    ours = Tokenizer.from_json(oracle.to_str())
    pool = [
        *"aeiouAEOUnczsgkyw",
        *"\u0300\u0301\u0302\u0303\u0308\u030a\u030c\u0323\u0327\u0328\u031b\u0345",
        *"\u05b0\u05b8\u05bc\u0651\u064e\u093c\u0915\u0958\u0f71\u0f72\u0f80",
        *"\u1100\u1161\u11a8\u1173\uac00\uac01\ud55c\u3131",
        *"\u2126\u212b\u1e9b\u0344\u0385\u1fee\u00c5\u00e9\u01d5\u0f73\u2add",
        *"\U0001d15e\U0001d165\U000110ab\U000110ba\U00011131\U00011127",
    ]
    rng = random.Random(9)
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    bad = [
        t for t in texts if ours.decode(ours.encode(t, False)) != oracle.normalizer.normalize_str(t)
    ]
    print(f"[oracle] NFC on {len(texts)} random combining sequences: {len(bad)} mismatches")
    assert not bad, [ascii(t) for t in bad[:5]]
    assert all(ours.encode(t, False) == oracle.encode(t).ids for t in texts[:500])


def test_random_strings_match_oracle_in_every_layout(byte_level_vocab, sentencepiece_vocab):
    vocab, merges = byte_level_vocab
    tokens, sp_merges = sentencepiece_vocab
    oracles = {name: make(vocab, merges) for name, make in BYTE_LEVEL_CONFIGS.items()}
    for layout in SENTENCEPIECE_LAYOUTS:
        oracles[f"sentencepiece {layout}"] = sentencepiece_tokenizer(tokens, sp_merges, layout)
    texts = random_texts(1000, seed=21)
    failures = {}
    for name, oracle in oracles.items():
        ours = Tokenizer.from_json(oracle.to_str())
        bad = count_mismatches(ours, oracle, texts, add_special=True)
        bad_decode = [
            t
            for t in texts
            if ours.decode(ids := ours.encode(t, True))
            != oracle.decode(ids, skip_special_tokens=False)
        ]
        print(
            f"[oracle] {name} on {len(texts)} random strings: {len(bad)} encode, "
            f"{len(bad_decode)} decode mismatches"
        )
        if bad or bad_decode:
            failures[name] = [ascii(t) for t, _, _ in bad[:2]] + [ascii(t) for t in bad_decode[:2]]
    assert not failures, failures


def test_legacy_string_merges_load_the_same(tmp_path: Path, byte_level_vocab):
    vocab, merges = byte_level_vocab
    oracle = BYTE_LEVEL_CONFIGS["gpt2"](vocab, merges)
    ours = Tokenizer.from_file(str(save(oracle, tmp_path, legacy_merges=True)))
    text = corpus_text()
    assert ours.encode(text, False) == oracle.encode(text, add_special_tokens=False).ids


def test_llama3_template_gives_bos_and_override_removes_it(tmp_path: Path, byte_level_vocab):
    vocab, merges = byte_level_vocab
    oracle = BYTE_LEVEL_CONFIGS["llama3"](vocab, merges)
    ours = Tokenizer.from_file(str(save(oracle, tmp_path)))
    bos = vocab["<|begin_of_text|>"]
    assert ours.bos_id == bos and ours.add_bos
    assert ours.encode("hi", True)[0] == bos
    ours.add_bos = False
    assert ours.encode("hi", True) == ours.encode("hi", False)


@pytest.mark.parametrize("layout", SENTENCEPIECE_LAYOUTS)
def test_sentencepiece_tokenizer_json_matches_oracle(tmp_path: Path, sentencepiece_vocab, layout):
    tokens, merges = sentencepiece_vocab
    oracle = sentencepiece_tokenizer(tokens, merges, layout)
    ours = Tokenizer.from_file(str(save(oracle, tmp_path)))
    assert ours.family == "sentencepiece_bpe"
    assert ours.bos_id == 1 and ours.add_bos
    check_against_oracle(ours, oracle, f"sentencepiece {layout}")
    for i, token in enumerate(tokens):
        assert ours.piece(i) == expected_piece(token, family="sentencepiece_bpe", added=i < 3)
    assert ours.piece(ours.token_to_id("<mask>")) == "<mask>"
    # A normalized added token shows its normalized form, the dummy-prefix space included.
    tool = ours.piece(ours.token_to_id("<tool>"))
    assert tool == (" <tool>" if layout == "legacy" else "<tool>")
    if layout in ("legacy", "gemma"):  # lossless on text without special tokens
        for text in corpus_samples():
            if "<" not in text:
                assert ours.decode(ours.encode(text, False)) == text


def test_post_processor_absent_reads_tokenizer_config_then_family_default(
    tmp_path: Path, sentencepiece_vocab
):
    tokens, merges = sentencepiece_vocab
    oracle = sentencepiece_tokenizer(tokens, merges, "legacy")
    oracle.post_processor = None
    path = save(oracle, tmp_path)
    # Nothing said: SentencePiece gets BOS (docs/tokenizers.md, "BOS and EOS").
    assert Tokenizer.from_file(str(path)).add_bos
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"add_bos_token": False, "add_eos_token": True, "eos_token": "</s>"})
    )
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    ours = Tokenizer.from_file(str(path))
    assert not ours.add_bos
    assert ours.encode("hi", True) == [*ours.encode("hi", False), 2]
    assert ours.eos_ids == [2, 0]


def test_invalid_utf8_is_replaced_like_python_and_never_crashes(
    byte_level_vocab, sentencepiece_vocab
):
    vocab, merges = byte_level_vocab
    tokens, sp_merges = sentencepiece_vocab
    tokenizers = [
        Tokenizer.from_json(BYTE_LEVEL_CONFIGS["smollm2"](vocab, merges).to_str()),
        Tokenizer.from_json(sentencepiece_tokenizer(tokens, sp_merges, "legacy").to_str()),
    ]
    rng = random.Random(5)
    pieces = [
        b"\xff",
        b"\xc3",
        b"\xe6\x97",
        b"\xf0\x9f\x98",
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"ok ",
        b"\x00",
    ]
    inputs = [b"abc\xffdef", b"\xe6\x97\xa5\xe6\x97", b"\xf4\x90\x80\x80", b"\xf0\x9f\x98\x80\x80"]
    inputs += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    inputs += [b"".join(rng.choice(pieces) for _ in range(20)) for _ in range(100)]
    for tok in tokenizers:
        for data in inputs:
            got = tok.encode(data, False)
            assert got == tok.encode(data.decode("utf-8", errors="replace"), False), data
            tok.decode(got)


def test_encode_time_grows_roughly_linearly(byte_level_vocab):
    import time

    vocab, merges = byte_level_vocab
    tok = Tokenizer.from_json(BYTE_LEVEL_CONFIGS["smollm2"](vocab, merges).to_str())
    base = corpus_text()
    small = (base * (256 * 1024 // len(base) + 1))[: 256 * 1024]
    large = (base * (1024 * 1024 // len(base) + 1))[: 1024 * 1024]

    def best_of(text: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            tok.encode(text, False)
            times.append(time.perf_counter() - start)
        return min(times)

    t_small, t_large = best_of(small), best_of(large)
    print(f"[perf] 256 KiB: {t_small * 1e3:.1f} ms, 1 MiB: {t_large * 1e3:.1f} ms")
    # 4x the input; a quadratic algorithm would take 16x. Generous bound for noisy machines.
    assert t_large < 10 * t_small + 0.05


def test_errors_name_file_and_field(tmp_path: Path, byte_level_vocab):
    vocab, merges = byte_level_vocab
    data = json.loads(BYTE_LEVEL_CONFIGS["gpt2"](vocab, merges).to_str())
    cases = [
        (
            {**data, "model": {**data["model"], "type": "Unigram"}},
            ConfigError,
            r"model\.type.*Unigram",
        ),
        (
            {**data, "pre_tokenizer": {"type": "Whitespace"}},
            ConfigError,
            r"pre_tokenizer.*Whitespace",
        ),
        (
            {**data, "model": {**data["model"], "merges": [["Ġ", "no-such-token"]]}},
            FormatError,
            r"model\.merges\[0\]",
        ),
        ({**data, "normalizer": {"type": "NFKD"}}, ConfigError, r"normalizer.*NFKD"),
    ]
    for i, (content, error, pattern) in enumerate(cases):
        path = tmp_path / f"case{i}" / "tokenizer.json"
        path.parent.mkdir()
        path.write_text(json.dumps(content))
        with pytest.raises(error, match=pattern):
            Tokenizer.from_file(str(path))
        assert str(path) in str(pytest.raises(error, Tokenizer.from_file, str(path)).value)
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_file(str(tmp_path / "none.json"))
    with pytest.raises(FormatError, match="not valid JSON"):
        Tokenizer.from_json("{", "broken.json")
    tok = Tokenizer.from_json(json.dumps(data), "t.json")
    with pytest.raises(ConfigError, match="id 99999"):
        tok.decode([99999])
