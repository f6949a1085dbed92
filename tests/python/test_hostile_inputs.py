"""Hostile inputs found by fuzzing: each test reproduces one defect and checks its fix.

- A 100,000-character GGUF tensor name (or layer number) overflowed the stack inside
  std::regex: names over 256 bytes are now a FormatError naming the tensor index and offset.
- A huge block_count / num_hidden_layers built the full expected-tensor list (GBs) before
  comparing it with the file: counts are now capped (4096 layers) and checked against the
  file's tensor count first.
- ``Capture(layers=[])``/``heads=[]`` was estimated at 0 bytes but captured everything, a NaN
  or infinite memory_budget disabled the check, and duplicate indices were captured twice.
- Invalid UTF-8 quoted in an error message turned a FormatError into a UnicodeDecodeError.
- Errors of the wrong type: a run.json missing a field raised KeyError, a corrupted capture
  file safetensors' own error without the path, a missing file a bare FileNotFoundError;
  now FormatError / MissingError, both AttnvarError and the builtin (ValueError,
  FileNotFoundError). The CLI printed tracebacks for a full or read-only disk: one line.
- Unnoticed corruption: flipped bytes in capture data (now checksums, test_run_storage.py),
  a run.json whose capture.layers or pass sizes disagree with the pass files (FormatError
  naming the file); a failed write leaves no temporary file and the old file intact.
- Study files: an unknown capture key raised a bare TypeError, YAML errors lacked the file
  name, a non-UTF-8 file a UnicodeDecodeError: every mistake is a FormatError that starts
  with the file's path and names the field.
- Replaying a run made by another model succeeded whenever its ids fit the vocabulary:
  refused now, unless the caller passes ``other_model=True``.
- A GGUF not named .gguf loaded its weights by magic but its tokenizer from whatever
  tokenizer.json lay beside it; no vocabulary check; load_model on a FIFO blocked.
- A prompt plus steps beyond the model's context just ran (issue 23): refused with the
  numbers unless ``beyond_context=True`` (generate, generate_many, replay).
- Out-of-range seeds reached pybind11 ("incompatible function arguments"), and
  ``new_cache(2**40)`` / negative visibility sizes reached torch's allocator and shape
  checks: ValueError / ConfigError naming the argument.

The crash and allocation reproducers run in a child interpreter under a timeout and a
2 GiB address-space limit, so a regression fails the test instead of taking down (or
swapping out) the test run. GGUF and safetensors files are written byte by byte here: the
``gguf`` writer refuses most of these files.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import attnvar
from attnvar import Capture, _core

# ---- files written byte by byte -------------------------------------------------------------

U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10
HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 8, 12, 2, 1, 4, 10


def _str(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


class Gguf:
    """A little-endian GGUF v3 file; keys, strings and names are raw bytes."""

    def __init__(self) -> None:
        self.kv: list[bytes] = []
        self.tensors: list[tuple[bytes, list[int], bytes]] = []  # F32 only

    def u32(self, key: str, v: int) -> Gguf:
        self.kv.append(_str(key.encode()) + struct.pack("<II", U32, v))
        return self

    def u64(self, key: str, v: int) -> Gguf:
        self.kv.append(_str(key.encode()) + struct.pack("<IQ", U64, v))
        return self

    def f32(self, key: str, v: float) -> Gguf:
        self.kv.append(_str(key.encode()) + struct.pack("<If", F32, v))
        return self

    def string(self, key: bytes, v: bytes) -> Gguf:
        self.kv.append(_str(key) + struct.pack("<I", STRING) + _str(v))
        return self

    def strings(self, key: str, vs: list[bytes]) -> Gguf:
        body = struct.pack("<IIQ", ARRAY, STRING, len(vs)) + b"".join(_str(v) for v in vs)
        self.kv.append(_str(key.encode()) + body)
        return self

    def tensor(self, name: bytes, ne: list[int]) -> Gguf:
        n = 1
        for x in ne:
            n *= x
        self.tensors.append((name, ne, struct.pack(f"<{n}f", *(0.01 * (i % 7) for i in range(n)))))
        return self

    def write(self, path: Path) -> Path:
        out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv)))
        out += b"".join(self.kv)
        offset = 0
        for name, ne, data in self.tensors:
            out += _str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
            out += struct.pack("<IQ", 0, offset)
            offset += (len(data) + 31) // 32 * 32
        for _, _, data in self.tensors:
            out += bytes(-len(out) % 32) + data
        path.write_bytes(bytes(out))
        return path


def tiny_llama(block_count: int | None = 1, arch: bytes = b"llama") -> Gguf:
    """One-layer llama (tied embeddings); block_count=None leaves the key for the caller."""
    g = Gguf().string(b"general.architecture", arch)
    if block_count is not None:
        g.u32("llama.block_count", block_count)
    g.u32("llama.embedding_length", HIDDEN).u32("llama.feed_forward_length", FFN)
    g.u32("llama.attention.head_count", HEADS).u32("llama.attention.head_count_kv", KV_HEADS)
    g.u32("llama.context_length", 64).f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    g.strings("tokenizer.ggml.tokens", [f"t{i}".encode() for i in range(VOCAB)])
    g.tensor(b"token_embd.weight", [HIDDEN, VOCAB])
    for name, ne in [("attn_norm", [HIDDEN]), ("attn_q", [HIDDEN, HEADS * HEAD_DIM]),
                     ("attn_k", [HIDDEN, KV_HEADS * HEAD_DIM]),
                     ("attn_v", [HIDDEN, KV_HEADS * HEAD_DIM]),
                     ("attn_output", [HEADS * HEAD_DIM, HIDDEN]), ("ffn_norm", [HIDDEN]),
                     ("ffn_gate", [HIDDEN, FFN]), ("ffn_up", [HIDDEN, FFN]),
                     ("ffn_down", [FFN, HIDDEN])]:
        g.tensor(f"blk.0.{name}.weight".encode(), ne)
    g.tensor(b"output_norm.weight", [HIDDEN])
    return g


def hf_dir(path: Path, num_hidden_layers: int) -> Path:
    """config.json plus a one-tensor model.safetensors: enough to reach the layer checks."""
    path.mkdir()
    config = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": HIDDEN,
              "intermediate_size": FFN, "num_hidden_layers": num_hidden_layers,
              "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS}
    (path / "config.json").write_text(json.dumps(config))
    header = json.dumps({"model.norm.weight": {"dtype": "F32", "shape": [HIDDEN],
                                               "data_offsets": [0, 4 * HIDDEN]}}).encode()
    (path / "model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + bytes(4 * HIDDEN))
    return path


# ---- a child interpreter for reproducers that crash or allocate -----------------------------

CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    if "asan" not in os.environ.get("LD_PRELOAD", ""):  # ASan reserves terabytes
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    from attnvar import _core
    fn, args = sys.argv[1], json.loads(sys.argv[2])
    start = time.perf_counter()
    try:
        getattr(_core, fn)(*args)
        out = {"raised": None}
    except BaseException as e:
        out = {"raised": type(e).__name__, "value_error": isinstance(e, ValueError),
               "format_error": isinstance(e, _core.FormatError),
               "config_error": isinstance(e, _core.ConfigError), "message": str(e)[:4000]}
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out))
""")


def run_isolated(fn: str, *args: str, timeout: float = 60) -> dict:
    """`_core.<fn>(*args)` in a fresh interpreter (2 GiB address space, `timeout` seconds):
    what it raised, or a failed assertion naming the crash, kill or timeout."""
    pkg_root = str(Path(attnvar.__file__).parent.parent)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([pkg_root, os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, fn, json.dumps(list(args))],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"_core.{fn} ran past {timeout} s (unbounded work on a hostile file?)")
    assert proc.returncode == 0, (
        f"_core.{fn} killed the interpreter (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- 1. unbounded tensor names ----------------------------------------------------------------


def test_gguf_tensor_name_of_100k_characters_is_a_format_error(tmp_path):
    path = tiny_llama().tensor(b"a" * 100_000, [4]).write(tmp_path / "long_name.gguf")
    out = run_isolated("load_weights", str(path))
    msg = out.get("message", "")
    assert out["format_error"] and out["value_error"], msg[:300]
    assert "long_name.gguf" in msg and "tensor info #11 name" in msg, msg[:300]
    assert "length 100000 at offset" in msg and "256-byte limit" in msg, msg[:300]
    assert len(msg) < 1000  # the name is quoted by its first bytes only


def test_gguf_layer_number_of_100k_digits_is_a_format_error(tmp_path):
    name = b"blk." + b"9" * 100_000 + b".attn_q.weight"
    path = tiny_llama().tensor(name, [4]).write(tmp_path / "long_layer.gguf")
    out = run_isolated("load_weights", str(path))
    msg = out.get("message", "")
    assert out["format_error"], msg[:300]
    assert "long_layer.gguf" in msg and "256-byte limit" in msg, msg[:300]


def test_gguf_layer_number_too_long_for_an_integer_is_a_format_error(tmp_path):
    """Under the name cap but past int64: the tensor is reported as unexpected, by index."""
    name = b"blk." + b"9" * 40 + b".attn_q.weight"
    path = tiny_llama().tensor(name, [4]).write(tmp_path / "big_layer.gguf")
    with pytest.raises(attnvar.FormatError, match=r"big_layer\.gguf: tensor #11 'blk\.9{40}\."):
        _core.load_weights(str(path))


# ---- 2. unbounded layer counts ----------------------------------------------------------------


@pytest.mark.parametrize("count", [10**7, 2**32])
def test_gguf_huge_block_count_fails_fast_naming_the_key(tmp_path, count):
    g = tiny_llama(block_count=None).u64("llama.block_count", count)
    out = run_isolated("load_weights", str(g.write(tmp_path / "blocks.gguf")))
    assert out["config_error"] and out["value_error"], out
    assert "blocks.gguf: metadata key 'llama.block_count'" in out["message"]
    assert f"{count} exceeds the supported maximum of 4096 layers" in out["message"]
    assert out["seconds"] < 5


def test_gguf_block_count_beyond_the_files_tensors_is_a_format_error(tmp_path):
    path = tiny_llama(block_count=4000).write(tmp_path / "blocks.gguf")
    with pytest.raises(attnvar.FormatError,
                       match=r"blocks\.gguf: metadata key 'llama\.block_count': 4000 layers, "
                             r"but the file has only 11 tensors"):
        _core.load_weights(str(path))


@pytest.mark.parametrize("count", [10**7, 2**32])
def test_config_json_huge_num_hidden_layers_fails_fast_naming_the_field(tmp_path, count):
    out = run_isolated("load_weights", str(hf_dir(tmp_path / "hf", count)))
    assert out["config_error"], out
    assert "config.json: config field 'num_hidden_layers'" in out["message"]
    assert "maximum of 4096" in out["message"]
    assert out["seconds"] < 5


def test_config_json_layers_beyond_the_files_tensors_is_a_format_error(tmp_path):
    with pytest.raises(attnvar.FormatError,
                       match=r"config field 'num_hidden_layers': 4000 layers, but .* has only 1 "
                             r"tensors"):
        _core.load_weights(str(hf_dir(tmp_path / "hf", 4000)))


# ---- 3. capture budget bypass -----------------------------------------------------------------


@pytest.mark.parametrize("field", ["layers", "heads"])
def test_capture_refuses_empty_index_lists(field):
    with pytest.raises(ValueError, match=rf"Capture\.{field} is empty"):
        Capture(**{field: []})
    with pytest.raises(ValueError, match=rf"Capture\.{field} is empty"):
        Capture(**{field: ()})


@pytest.mark.parametrize("field", ["layers", "heads"])
def test_capture_refuses_repeated_and_non_integer_indices(field):
    with pytest.raises(ValueError, match=rf"Capture\.{field} repeats \[1\]"):
        Capture(**{field: [1, 0, 1]})
    with pytest.raises(ValueError, match=rf"Capture\.{field} must hold integers"):
        Capture(**{field: [0, 1.5]})
    with pytest.raises(ValueError, match=rf"Capture\.{field} must be 'all' or non-negative"):
        Capture(**{field: [-1]})
    with pytest.raises(ValueError, match=rf"Capture\.{field} must be 'all' or a sequence"):
        Capture(**{field: "some"})
    with pytest.raises(ValueError, match=rf"Capture\.{field} must be 'all' or a sequence"):
        Capture(**{field: iter([0, 1])})  # would be consumed by the check


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), -float("inf"), -1, 1.5, "4e9",
                                    None, True])
def test_capture_refuses_invalid_memory_budgets(budget):
    with pytest.raises(ValueError, match=r"Capture\.memory_budget"):
        Capture(memory_budget=budget)


def test_capture_valid_specs_keep_working():
    assert Capture(memory_budget=8e9).memory_budget == 8_000_000_000
    assert type(Capture(memory_budget=8e9).memory_budget) is int
    assert Capture(memory_budget=0).memory_budget == 0
    spec = Capture()
    assert spec.kwargs()["layers"] is None and spec.kwargs()["heads"] is None
    assert spec.estimate_bytes(30, 9, 10) == 30 * 9 * 100 * 4 + 30 * 9 * 10 * 4
    spec = Capture(layers=(2, 0), heads=range(3))
    assert spec.kwargs()["layers"] == [0, 2] and spec.kwargs()["heads"] == [0, 1, 2]
    assert spec.estimate_bytes(30, 9, 10) == 2 * 3 * 100 * 4 + 2 * 3 * 10 * 4
    Capture(memory_budget=10**12).check_budget(30, 9, 1000)
    with pytest.raises(ValueError, match="over the memory budget"):
        Capture(memory_budget=1000).check_budget(30, 9, 1000)
    with pytest.raises(ValueError, match="over the memory budget"):  # one layer still counts
        Capture(layers=[0], memory_budget=1000).check_budget(30, 9, 1000)


# ---- 4. ill-formed UTF-8 in messages ----------------------------------------------------------


def test_gguf_tensor_name_with_invalid_utf8_gives_a_format_error_naming_the_file(tmp_path):
    path = tiny_llama().tensor(b"blk.0.\xff\xfe_bad.weight", [4]).write(tmp_path / "bad_utf8.gguf")
    with pytest.raises(attnvar.FormatError) as info:
        _core.load_weights(str(path))
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "bad_utf8.gguf" in msg and r"'blk.0.\xff\xfe_bad.weight'" in msg, msg
    # The infos list the name with the same escapes rather than failing to convert it.
    names = [t["name"] for t in _core.gguf_tensor_infos(str(path))]
    assert names[-1] == r"blk.0.\xff\xfe_bad.weight"


def test_gguf_architecture_with_invalid_utf8_gives_a_config_error(tmp_path):
    path = tiny_llama(arch=b"ll\xc3(ma").write(tmp_path / "arch.gguf")
    with pytest.raises(attnvar.ConfigError, match=r"arch\.gguf: .*'ll\\xc3\(ma' is not supported"):
        _core.load_weights(str(path))


def test_gguf_metadata_with_non_utf8_string_value_returns_escapes(tmp_path):
    """Chosen behaviour: gguf_metadata still reads the file and returns keys, string values
    and string-array elements with each ill-formed UTF-8 byte written as the four characters
    ``\\xNN`` (valid strings are unchanged). The GGUF spec says strings are UTF-8, but some
    published vocabularies break it, and an inspection call should not fail on them; the
    loader itself reads the raw bytes, not these strings."""
    g = Gguf().string(b"general.name", b"caf\xc3\xa9 \xe9t\xe9")
    g.string(b"key\x80", b"ok").strings("tokenizer.ggml.tokens", [b"a", b"\xf0\x9f", b"\xc3\xa9"])
    md = _core.gguf_metadata(str(g.write(tmp_path / "meta.gguf")))
    assert md["general.name"] == "café \\xe9t\\xe9"
    assert md["key\\x80"] == "ok"
    assert md["tokenizer.ggml.tokens"] == ["a", "\\xf0\\x9f", "é"]


FUZZ_DATA = Path(__file__).resolve().parents[1] / "data" / "fuzz"


@pytest.mark.parametrize("name", ["token_invalid_utf8.gguf", "control_token_invalid_utf8.gguf"])
def test_gguf_vocabulary_with_non_utf8_token_loads_and_every_text_is_a_str(name):
    """Chosen behaviour, as for gguf_metadata: a vocabulary token whose bytes are not UTF-8
    (the fuzz regression corpus holds one as a normal and one as a control token) does not
    stop the tokenizer from loading; id_to_token writes its bad bytes as \\xNN, piece() as
    <0xNN>, and decode() replaces them with U+FFFD, so no call raises UnicodeDecodeError."""
    tok = _core.Tokenizer.from_gguf(str(FUZZ_DATA / "regressions" / "gguf" / name))
    bad = tok.vocab_size - 1
    assert tok.id_to_token(bad) == "\\xff\\xfe\\xc3("
    assert tok.piece(bad) == "<0xFF><0xFE><0xC3>("
    assert tok.decode([bad]) == "\ufffd\ufffd\ufffd("
    assert all(isinstance(tok.piece(i), str) for i in range(tok.vocab_size))


def test_tokenizer_with_one_huge_id_is_refused_before_allocating():
    """Found by fuzzing (tests/data/fuzz/regressions/tokenizer_json/): one vocabulary id of
    10,000,079 in a 12 KB tokenizer.json made the id-indexed tables take 320 MB. The id space
    may exceed the token count by at most the count plus 65,536 ids."""
    text = (FUZZ_DATA / "regressions" / "tokenizer_json" /
            "found-vocab_id_10M_allocates_320MB.json").read_bytes()
    with pytest.raises(attnvar.FormatError, match=r"token ids reach 10000079 for \d+ tokens"):
        _core.Tokenizer.from_json(text)
    vocab = {"a": 0, "b": 1, "ab": 2, "far": 65536 + 2 * 4 - 1}  # the largest id allowed
    ok = json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]}})
    assert _core.Tokenizer.from_json(ok).vocab_size == 65536 + 2 * 4
    vocab["far"] += 1
    with pytest.raises(attnvar.FormatError, match="at most 65540 ids may be unused"):
        _core.Tokenizer.from_json(json.dumps({"model": {"type": "BPE", "vocab": vocab,
                                                        "merges": ["a b"]}}))


def test_tokenizer_json_with_a_number_beyond_double_is_a_format_error(tmp_path):
    """Found by fuzzing: a number such as 1.1E1010 made the JSON parser throw its
    out-of-range exception, which escaped as a bare RuntimeError."""
    text = (FUZZ_DATA / "regressions" / "tokenizer_json" /
            "found-number_overflow_1e1010_escapes_as_json_out_of_range.json").read_bytes()
    with pytest.raises(attnvar.FormatError, match="not valid JSON: .*number overflow"):
        _core.Tokenizer.from_json(text)
    path = tmp_path / "tokenizer.json"
    path.write_bytes(text)
    with pytest.raises(attnvar.FormatError, match=r"tokenizer\.json: not valid JSON"):
        _core.Tokenizer.from_file(str(path))


def test_json_files_with_invalid_utf8_give_format_errors_with_decodable_messages(tmp_path):
    hf = hf_dir(tmp_path / "hf", 1)
    (hf / "config.json").write_bytes(b'{"model_type": "ll\xff\xfeama"}')
    with pytest.raises(attnvar.FormatError, match=r"config\.json: not valid JSON: .*\\xff"):
        _core.load_weights(str(hf))
    tok = tmp_path / "tokenizer.json"
    tok.write_bytes(b'{"model": {"type": "BPE", "vocab": {"\xc0\xaf": 0}}}')
    with pytest.raises(attnvar.FormatError, match=r"tokenizer\.json: not valid JSON: .*\\xc0"):
        _core.Tokenizer.from_file(str(tok))
    with pytest.raises(attnvar.FormatError, match=r"<string>: not valid JSON"):
        _core.Tokenizer.from_json(b'{"model": "\xff"}')


# ---- one writer per results directory --------------------------------------------------------
def test_a_second_writer_on_a_results_directory_is_refused(bundled_path, tmp_path):
    """Two studies (or a study and an analysis) on one directory used to race: each
    cleared the other's staging directories at start. Now the second is refused at once,
    naming the directory and the process that holds it; the lock goes with its holder."""
    import os

    from attnvar.analysis import analyze_study
    from attnvar.study import Study
    from attnvar.util.lock import DirectoryBusyError, directory_lock

    study = Study(prompts=["The cat sat on the"], max_steps=2, model_path=str(bundled_path),
                  replays=["serial"])
    with directory_lock(tmp_path / "results"):
        with pytest.raises(DirectoryBusyError, match=rf"results: another attnvar process "
                                                     rf"\(pid {os.getpid()}\)"):
            study.run(tmp_path / "results", progress=False)
        assert not (tmp_path / "results" / "runs").exists()  # refused before writing
    study.run(tmp_path / "results", progress=False)  # released: the study runs
    with directory_lock(tmp_path / "results"):
        with pytest.raises(DirectoryBusyError, match="an analysis"):
            analyze_study(tmp_path / "results", progress=False)
    assert issubclass(DirectoryBusyError, ValueError)  # the CLI's one-line error path


# ---- silent misreadings (issue 27, item 6) -----------------------------------------------------
@pytest.mark.parametrize("field,value,needle", [
    ("sample", "no", "sample must be true or false"),
    ("thresholds", "0.1", "thresholds must be a list"),
    ("modes", "isolated", "modes must be a list"),
    ("thresholds", [True], "thresholds: True is not a number"),
    ("seeds", [1.5], "seeds: 1.5 is not a int"),
    ("max_steps", 3.0, "max_steps must be an integer"),
])
def test_study_fields_of_the_wrong_type_are_refused(tmp_path, field, value, needle):
    from attnvar.study import Study

    with pytest.raises(ValueError, match=needle):
        Study(prompts=["a b"], **{field: value})
    # The same from a TOML file, where these mistakes are made.
    import json

    cfg = tmp_path / "s.toml"
    cfg.write_text(f'prompts = ["a b"]\n{field} = {json.dumps(value)}\n')
    with pytest.raises(ValueError, match=needle):
        Study.from_file(cfg)


def test_duplicate_prompt_ids_in_a_study_are_refused():
    from attnvar.study import Study, prompts

    p = prompts.suite("core")[0]
    with pytest.raises(ValueError, match=f"the id '{p.id}' appears twice"):
        Study(prompts=[p, p])


def test_bytes_prompts_and_bad_interventions_are_refused(bundled_path):
    model = attnvar.load_model(bundled_path)
    with pytest.raises(ValueError, match="got bytes"):
        model.generate(b"The cat", max_steps=1)
    with pytest.raises(ValueError, match="prompt ids must be integers"):
        model.generate([1, 2.5], max_steps=1)
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=3)
    for iv, needle in (({"layer_begin": 0, "layer_end": 1, "key_slots": [5], "delta": math.nan},
                        "delta must be a finite number or -inf"),
                       ({"layer_begin": 0, "layer_end": 1, "key_slots": [5], "delta": math.inf},
                        "delta must be"),
                       ({"layer_begin": 0, "layer_end": 1, "key_slot": [5]},
                        r"unknown keys \['key_slot'\]")):
        with pytest.raises(ValueError, match=needle):
            model.replay(run, "serial", interventions=[iv])
    with pytest.raises(ValueError, match="chunk_size must be an integer ≥ 0"):
        model.replay(run, "serial", chunk_size=-1)


# ---- error types (item 7) and corrupted runs ---------------------------------------------------


def test_error_types_subclass_attnvar_error_and_the_builtin_a_caller_would_catch(tmp_path):
    assert issubclass(attnvar.FormatError, attnvar.AttnvarError)
    assert issubclass(attnvar.FormatError, ValueError)
    assert issubclass(attnvar.ConfigError, attnvar.AttnvarError)
    assert issubclass(attnvar.ConfigError, ValueError)
    assert issubclass(attnvar.MissingError, attnvar.AttnvarError)
    assert issubclass(attnvar.MissingError, FileNotFoundError)
    # Raised from C++ (a missing weights file) and from Python (a missing run) alike.
    with pytest.raises(attnvar.MissingError, match="nowhere"):
        _core.load_model(str(tmp_path / "nowhere" / "model.gguf"))
    with pytest.raises(attnvar.MissingError, match="model path does not exist"):
        attnvar.load_model(str(tmp_path / "absent.gguf"))
    with pytest.raises(attnvar.MissingError, match="not a saved run"):
        attnvar.load_run(tmp_path)


@pytest.fixture(scope="module")
def saved_run(bundled_path, tmp_path_factory):
    model = attnvar.load_model(bundled_path)
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=3,
                         capture=Capture(scores=True))
    path = tmp_path_factory.mktemp("run") / "run"
    run.save(path)
    return path


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.pop("tree"), "field 'tree' is missing"),
    (lambda d: d["capture"].pop("passes"), "field 'passes' is missing"),
    (lambda d: d.update(slots=5), "wrong type"),
    (lambda d: d["capture"]["passes"][0].update(step="x"), "wrong type"),
    (lambda d: d.update(schema_version=99), "schema version 99"),
])
def test_run_json_missing_or_malformed_fields_are_format_errors(saved_run, tmp_path, edit,
                                                                needle):
    path = _copy_run(saved_run, tmp_path / "r")
    d = json.loads((path / "run.json").read_text())
    edit(d)
    (path / "run.json").write_text(json.dumps(d))
    with pytest.raises(attnvar.FormatError, match=needle) as err:
        attnvar.load_run(path)
    assert "run.json" in str(err.value)


def test_run_json_not_utf8_or_not_an_object_is_a_format_error(saved_run, tmp_path):
    path = _copy_run(saved_run, tmp_path / "r")
    (path / "run.json").write_bytes(b'{"kind": "gen\xff\xfe"}')
    with pytest.raises(attnvar.FormatError, match="not UTF-8"):
        attnvar.load_run(path)
    (path / "run.json").write_text("[1, 2]")
    with pytest.raises(attnvar.FormatError, match="JSON object"):
        attnvar.load_run(path)


def test_corrupt_or_missing_capture_files_are_format_errors_naming_the_file(saved_run,
                                                                          tmp_path):
    from attnvar.engine.run_store import pass_file

    path = _copy_run(saved_run, tmp_path / "r")
    target = pass_file(path, 1)
    target.write_bytes(target.read_bytes()[:40])  # truncated mid-header
    run = attnvar.load_run(path)  # captures load lazily
    with pytest.raises(attnvar.FormatError, match="pass_00001.safetensors: checksum mismatch"):
        run.scores  # noqa: B018
    run = attnvar.load_run(path, verify=False)  # unchecked: the parser names the file
    with pytest.raises(attnvar.FormatError, match="pass_00001.safetensors") as err:
        run.scores  # noqa: B018
    assert "not a valid safetensors file" in str(err.value)
    pass_file(path, 2).unlink()
    with pytest.raises(attnvar.FormatError, match="pass_00002.safetensors is missing"):
        attnvar.load_run(path)


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_cli_reports_a_full_or_read_only_disk_in_one_line(monkeypatch, capsys, code):
    import errno

    from attnvar import cli

    def fail(_args):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)),
                      "/results/runs/abc/run.json")

    monkeypatch.setattr(cli, "_cmd_inspect", fail)
    assert cli.main(["inspect", "/results/runs/abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("attnvar: error: ")
    assert os.strerror(getattr(errno, code)) in err and "/results/runs/abc/run.json" in err
    # Other OS errors are not user errors: they keep their traceback.
    monkeypatch.setattr(cli, "_cmd_inspect", lambda _a: (_ for _ in ()).throw(
        OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        cli.main(["inspect", "/results/runs/abc"])


def test_replaying_a_run_of_another_model_is_refused_unless_asked(bundled_path):
    model = attnvar.load_model(bundled_path)
    run = model.generate("The cat sat on the", threshold=0.1, max_steps=2)
    assert model.replay(run, "serial", logits=False).num_slots == run.num_slots  # same model
    own = run.model["sha256"]
    run.model = {**run.model, "sha256": "0" * 64, "path": "/elsewhere/other.gguf"}
    with pytest.raises(ValueError, match="made by another model.*other_model=True") as err:
        model.replay(run, "serial")
    assert "/elsewhere/other.gguf" in str(err.value) and own[:12] in str(err.value)
    again = model.replay(run, "serial", logits=False, other_model=True)
    assert again.num_slots == run.num_slots
    model.replay(run.tree, "serial", logits=False)  # a bare tree carries no model


def test_out_of_range_seeds_and_sizes_are_value_errors_naming_the_argument(bundled_path):
    model = attnvar.load_model(bundled_path)
    for seed in (-1, 2**64, 2**70, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be an integer in"):
            model.generate("The cat", max_steps=1, sample=True, seed=seed)
    with pytest.raises(ValueError, match="request 1: seed"):
        model.generate_many(["The cat", {"prompt": "A dog", "seed": -4}], max_steps=1)
    assert model.generate("The cat", max_steps=1, sample=True, seed=2**64 - 1).tree.steps
    # Sizes that used to reach torch's allocator or shape checks.
    with pytest.raises(attnvar.ConfigError, match="initial_capacity must be in"):
        model.core.new_cache(initial_capacity=2**40)
    with pytest.raises(attnvar.ConfigError, match="initial_capacity must be in"):
        model.core.new_cache(initial_capacity=-1)
    with pytest.raises(attnvar.ConfigError, match="causal_visibility: slot counts"):
        _core.causal_visibility(-5, 0)
    with pytest.raises(attnvar.ConfigError, match="causal_visibility: slot counts"):
        _core.causal_visibility(3, -2)
    with pytest.raises(attnvar.ConfigError, match="set_visibility: slot counts"):
        _core.set_visibility(-1, 3, "isolated")


# ---- model files by content, one source, vocabulary (item 5) -----------------------------------


def test_a_gguf_not_named_gguf_takes_its_tokenizer_from_itself(bundled_path, tmp_path):
    # A GGUF under another name, beside a tokenizer.json of another model: weights and
    # tokenizer both come from the GGUF (its magic), never the file that happens to sit there.
    (tmp_path / "model.bin").symlink_to(bundled_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {}}}')
    model = attnvar.load_model(tmp_path / "model.bin")
    reference = attnvar.load_model(bundled_path)
    assert model.encode("The cat sat on the") == reference.encode("The cat sat on the")
    assert model.core.vocab_size == reference.core.vocab_size


def test_a_fifo_is_refused_at_once_not_read(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    code = textwrap.dedent(f"""
        import attnvar
        try:
            attnvar.load_model({str(fifo)!r})
        except attnvar.FormatError as e:
            print("FORMAT-ERROR:", e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=os.environ.copy())
    assert "FORMAT-ERROR:" in proc.stdout and "not a regular file" in proc.stdout, \
        proc.stdout + proc.stderr


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(tmp_path):
    from tiny_models import tiny_hf_model
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = tiny_hf_model("llama")  # 97 embedding rows
    hf.save_pretrained(tmp_path, safe_serialization=True)
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the cat sat on the mat"] * 20,
                            trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel
                                                .alphabet()))
    assert tok.get_vocab_size() > 97
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(attnvar.ConfigError, match=r"tokenizer has \d+ tokens but the model's "
                                                 r"embedding has 97 rows"):
        attnvar.load_model(tmp_path)


def test_run_json_disagreeing_with_its_pass_files_is_a_format_error(saved_run, tmp_path):
    path = _copy_run(saved_run, tmp_path / "r")
    meta = json.loads((path / "run.json").read_text())
    meta["capture"]["layers"] = meta["capture"]["layers"][:5]
    (path / "run.json").write_text(json.dumps(meta))
    with pytest.raises(attnvar.FormatError, match=r"pass_00000.safetensors: scores of 30 "
                                                 r"layers, but the run captured 5"):
        attnvar.load_run(path).scores  # noqa: B018
    meta["capture"]["layers"] = list(range(30))
    meta["capture"]["passes"][1]["num_queries"] += 3
    (path / "run.json").write_text(json.dumps(meta))
    with pytest.raises(attnvar.FormatError, match="pass_00001.safetensors: layer 0 scores has "
                                                 "shape"):
        attnvar.load_run(path).scores  # noqa: B018


def test_a_failed_write_leaves_no_temporary_file_and_the_old_file_intact(tmp_path):
    import errno

    from attnvar.util.atomic import atomic_path, write_atomic

    target = tmp_path / "tables" / "runs.parquet"
    target.parent.mkdir()
    target.write_bytes(b"old")

    def disk_full(name):
        with open(name, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)

    with pytest.raises(OSError, match="No space left"), atomic_path(target) as tmp:
        disk_full(str(tmp))
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["runs.parquet"]
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["runs.parquet"]


@pytest.mark.parametrize("name, text, needle", [
    ("a.toml", 'suite = "core"\nbogus = 3\n', r"unknown study keys \['bogus'\]"),
    ("b.toml", 'suite = "core"\n[capture]\nscores = true\nfoo = 1\n',
     r"capture: unknown keys \['foo'\]"),
    ("c.toml", 'suite = "core"\ncapture = 5\n', "capture: a table"),
    ("d.toml", 'suite = 7\n', "suite: a suite name or file"),
    ("e.toml", 'suite = "core"\npreregistration = "M1"\n', "preregistration: a table"),
    ("f.toml", 'prompts = 5\n', "prompts must be a list"),
    ("g.yaml", 'suite: core\nthresholds: [0.1\n', "invalid YAML"),
    ("h.yaml", '- 1\n- 2\n', "a table of keys, not list"),
])
def test_study_file_mistakes_are_format_errors_naming_the_file(tmp_path, name, text, needle):
    pytest.importorskip("yaml")
    from attnvar.study import Study

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(attnvar.FormatError, match=needle) as err:
        Study.from_file(path)
    assert str(err.value).startswith(str(path))
    path.write_bytes(b"\xff\xfe" + text.encode())
    with pytest.raises(attnvar.FormatError, match="not UTF-8"):
        Study.from_file(path)


def test_runs_beyond_the_models_context_are_refused_with_the_numbers():
    pytest.importorskip("transformers")
    from tiny_models import tiny_llama_model

    model = tiny_llama_model()  # max_position_embeddings 256
    assert model.core.context_length == 256
    prompt = [5 + (i % 80) for i in range(250)]
    with pytest.raises(ValueError, match=r"250-token prompt \+ max_steps 10 needs 260 "
                                         r"positions, beyond the model's context of 256"):
        model.generate(prompt, threshold=0.2, max_steps=10)
    with pytest.raises(ValueError, match="request 1.*beyond the model's context of 256"):
        model.generate_many([prompt[:10], prompt], threshold=0.2, max_steps=10)
    run = model.generate(prompt, threshold=0.2, max_steps=10, beyond_context=True)
    assert len(run.tree.steps) == 10
    ok = model.generate(prompt[:240], threshold=0.05, max_steps=12, max_width=4)
    assert ok.num_slots > 256  # sets share positions: 252 positions hold more slots
    model.replay(ok, "shared_isolated", logits=False)  # 252 positions: fine
    with pytest.raises(ValueError, match=rf"{ok.num_slots} slots under serial"):
        model.replay(ok, "serial", logits=False)  # one position per slot
    model.replay(ok, "serial", logits=False, beyond_context=True)
