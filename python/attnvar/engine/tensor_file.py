"""Writing safetensors files from torch tensors in one go, with their SHA-256.

The layout is the one the safetensors library writes, so that the library (and every
reader of the format) reads the files: an 8-byte little-endian header length; the JSON
header — ``__metadata__`` first when there is any, then each tensor's dtype, shape and
byte range — padded with spaces to a multiple of 8 bytes; then the tensors' bytes, ordered
as the library orders them (wider kinds first, in the library's dtype order reversed, then
by name). The metadata's keys are written sorted (the library writes them in hash order,
which changes from process to process), so the same tensors give the same bytes.

Why not the library's ``save_file``: a pass file holds ~90 small tensors, and the
library's Python side converts each through numpy and checks for shared storage, ~1.5 ms
a file before any byte is written — a sixth of saving a study's runs. Here each tensor's
own memory is handed to the file and to the hash; nothing is copied but non-contiguous
tensors. Tensors may share storage (rows of one block are written as rows).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping

import torch

from ..util.atomic import write_atomic

# The library's dtype names, in the order of its dtype enum (files list tensors from the
# last of these to the first).
_ORDER = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
          "F32", "C64", "F64", "I64", "U64")
_RANK = {name: i for i, name in enumerate(_ORDER)}
DTYPE_NAMES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fn: "F8_E4M3", torch.int16: "I16", torch.uint16: "U16",
    torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.uint32: "U32",
    torch.float32: "F32", torch.complex64: "C64", torch.float64: "F64", torch.int64: "I64",
    torch.uint64: "U64",
}


def encode(tensors: Mapping[str, torch.Tensor],
           metadata: Mapping[str, str] | None = None) -> list:
    """The file's bytes as a list of buffers (header length, header, each tensor's data).
    Raises TypeError for a name that is not a string, a value that is not a tensor or a
    dtype the format has no name for, and for metadata that is not str → str."""
    entries = []
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor file: tensor name {name!r} is not a string")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor file: {name!r} is a {type(t).__name__}, not a tensor")
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"tensor file: {name!r} has dtype {t.dtype}, which safetensors "
                            "cannot store")
        entries.append((name, t))
    entries.sort(key=lambda e: (-_RANK[DTYPE_NAMES[e[1].dtype]], e[0]))
    header: dict = {}
    if metadata is not None:
        bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise TypeError(f"tensor file: metadata entry {bad[0]!r} is not str → str")
        header["__metadata__"] = dict(sorted(metadata.items()))
    buffers = []
    offset = 0
    for name, t in entries:
        t = t.detach().cpu().contiguous()
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        if nbytes:
            buffers.append(t.reshape(-1).view(torch.uint8).numpy())
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return [struct.pack("<Q", len(text)), text, *buffers]


def write_tensor_file(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None, *,
                      in_staging: bool = False) -> str:
    """Write ``tensors`` (and ``metadata``) to the safetensors file ``path``; returns the
    SHA-256 of the bytes written (hex). Atomic and durable as every attnvar writer
    (:func:`attnvar.util.atomic.write_atomic`; ``in_staging`` as there)."""
    parts = encode(tensors, metadata)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    write_atomic(path, parts, in_staging=in_staging)
    return digest.hexdigest()


__all__ = ["DTYPE_NAMES", "encode", "write_tensor_file"]
