"""attnvar's safetensors writer (``attnvar.engine.tensor_file``) against the safetensors
library: the same bytes for every dtype the format names (metadata of none or one key; with
more keys the library's order is its hash order, ours sorted), files the library reads back
bit for bit, the SHA-256 of what was written, typed errors, and the in-staging mode that
writes in place."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from attnvar.engine.tensor_file import DTYPE_NAMES, write_tensor_file


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    out = {}
    for i, dtype in enumerate(DTYPE_NAMES):
        if dtype == torch.bool:
            t = torch.rand(5, generator=g) > 0.5
        elif dtype.is_floating_point or dtype.is_complex:
            t = torch.randn(3, 4, generator=g).to(dtype)
        else:
            t = torch.randint(0, 100, (2, 3), generator=g).to(dtype)
        out[f"t{i:02d}"] = t
    block = torch.randn(6, 5, generator=g)
    out.update({"empty": torch.zeros(0, 7), "scalar": torch.tensor(3.5),
                "transposed": torch.randn(4, 5, generator=g).t(),
                "rows.a": block[:2], "rows.b": block[2:],  # one storage
                "naïve": torch.ones(2)})
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("metadata", [None, {}, {"sparse_tensors": "layer000.scores,x"}])
def test_same_bytes_as_the_library(tmp_path, metadata):
    tensors = _tensors()
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    sha = write_tensor_file(ours, tensors, metadata)
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(theirs),
              metadata=metadata)
    data = ours.read_bytes()
    assert data == theirs.read_bytes()
    assert sha == hashlib.sha256(data).hexdigest()
    back = load_file(str(ours))
    assert sorted(back) == sorted(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert torch.equal(_bits(back[name]), _bits(t)), name


def test_metadata_is_written_sorted_and_read_back(tmp_path):
    meta = {k: f"v{k}" for k in ("sparse_tensors", "attention_from_scores", "zz", "b", "m")}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_tensor_file(a, {"x": torch.ones(3)}, meta)
    write_tensor_file(b, {"x": torch.ones(3)}, dict(reversed(list(meta.items()))))
    assert a.read_bytes() == b.read_bytes()
    (n,) = struct.unpack("<Q", a.read_bytes()[:8])
    assert n % 8 == 0
    header = json.loads(a.read_bytes()[8:8 + n])
    assert list(header["__metadata__"]) == sorted(meta)
    with safe_open(str(a), "pt") as f:
        assert f.metadata() == meta


def test_bad_input_is_a_type_error_and_writes_nothing(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="'x' is a list, not a tensor"):
        write_tensor_file(path, {"x": [1.0]})
    with pytest.raises(TypeError, match="tensor name 3 is not a string"):
        write_tensor_file(path, {3: torch.ones(1)})
    with pytest.raises(TypeError, match="dtype torch.complex128, which safetensors cannot"):
        write_tensor_file(path, {"x": torch.ones(1, dtype=torch.complex128)})
    with pytest.raises(TypeError, match="metadata entry 'k' is not str → str"):
        write_tensor_file(path, {"x": torch.ones(1)}, {"k": 1})
    assert list(tmp_path.iterdir()) == []


def test_in_staging_writes_in_place_and_atomic_leaves_no_sibling(tmp_path):
    staged = tmp_path / "staged.safetensors"
    sha = write_tensor_file(staged, {"x": torch.arange(4)}, in_staging=True)
    assert sha == hashlib.sha256(staged.read_bytes()).hexdigest()
    atomic = tmp_path / "atomic.safetensors"
    write_tensor_file(atomic, {"x": torch.arange(4)})
    assert atomic.read_bytes() == staged.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.safetensors",
                                                          "staged.safetensors"]
