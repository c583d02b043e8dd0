"""Read a GGUF file's header (metadata only) to estimate memory before loading it.

Only the key/value section is read; tensors are never touched, so this is cheap even for
large files. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


def read_metadata(path: Path, *, skip_arrays: bool = True) -> dict[str, Any]:
    """The GGUF key/value metadata. Large arrays (the vocabulary) are skipped by default."""
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old")
        _n_tensors, n_kv = struct.unpack("<QQ", f.read(16))
        out: dict[str, Any] = {}
        for _ in range(n_kv):
            key = _string(f)
            (vtype,) = struct.unpack("<I", f.read(4))
            out[key] = _value(f, vtype, skip_arrays)
        return out


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: int, skip_arrays: bool) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        (etype,) = struct.unpack("<I", f.read(4))
        (n,) = struct.unpack("<Q", f.read(8))
        if etype in _SCALARS:
            size = struct.calcsize(_SCALARS[etype])
            if skip_arrays:
                f.seek(n * size, 1)
                return None
            return [struct.unpack(_SCALARS[etype], f.read(size))[0] for _ in range(n)]
        items = [_value(f, etype, skip_arrays) for _ in range(n)]
        return None if skip_arrays else items
    raise ValueError(f"unknown GGUF value type {vtype}")


def estimate_memory_bytes(path: Path, n_ctx: int) -> int:
    """Weights (the file size) plus an f16 KV cache for ``n_ctx`` tokens, plus 10% slack."""
    size = path.stat().st_size
    kv = 0
    try:
        meta = read_metadata(path)
        arch = meta.get("general.architecture", "llama")
        layers = int(meta.get(f"{arch}.block_count", 0))
        embd = int(meta.get(f"{arch}.embedding_length", 0))
        heads = int(meta.get(f"{arch}.attention.head_count", 1)) or 1
        kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads)) or heads
        ctx_train = int(meta.get(f"{arch}.context_length", n_ctx)) or n_ctx
        kv = 2 * layers * min(n_ctx, ctx_train) * (embd * kv_heads // heads) * 2
    except (OSError, ValueError, struct.error):
        kv = 0
    return int((size + kv) * 1.1) + 64 * 1024 * 1024  # + compute buffers
