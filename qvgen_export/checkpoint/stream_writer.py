"""Write a safetensors file tensor by tensor, in any order, without holding the tensors.

The layout is exactly the one ``safetensors.torch.save_file`` writes for the same names, dtypes,
shapes and metadata (tensors sorted by dtype then name, header JSON padded with spaces to a
multiple of 8), so a streamed checkpoint has the same header and bytes as a whole-model save.
Every shape is known before any data exists, so the header and all offsets are written first;
each tensor is then written at its offset as it is produced and dropped.

Content hashes: with ``digest_key`` the metadata gets one more entry, a JSON object mapping each
tensor name to :func:`tensor_digest` (SHA-256 of its dtype, shape and bytes). The digests are only
known once every tensor is written, so the header is first written with same-length placeholders
(64 zeros per tensor) and rewritten in place by :meth:`close`; offsets never move.
Metadata keys are written sorted, so the same content gives the same bytes in every process
(``safetensors.save_file`` orders them by a per-process hash seed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from qvgen_export.utils.lazy_safetensors import TORCH_TO_ST

DIGEST_PLACEHOLDER = "0" * 64


def tensor_digest(st_dtype: str, shape: tuple[int, ...] | list[int], data: bytes | memoryview) -> str:
    """SHA-256 of a tensor as stored: its safetensors dtype string, its shape and its bytes.

    The dtype and shape are hashed too, so a header edit that keeps the byte count (F32 -> I32,
    a reshaped dimension) changes the digest just as a data edit does.
    """
    h = hashlib.sha256(f"{st_dtype}:{','.join(str(int(d)) for d in shape)}:".encode())
    h.update(data)
    return h.hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor (no copy when it is contiguous)."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy())


def safetensors_order(dtypes: dict[str, torch.dtype]) -> list[str]:
    """Names in the order safetensors lays their data out.

    Asked of safetensors itself with empty tensors: its sort (by dtype, then name) depends on
    neither size nor data, and asking it avoids copying its private dtype ranking.
    """
    from safetensors.torch import save

    raw = save({k: torch.empty(0, dtype=dt) for k, dt in dtypes.items()})
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    return [k for k in header if k != "__metadata__"]


class StreamingSafetensorsWriter:
    """``specs`` (name -> (dtype, shape)) fixed up front; :meth:`write` each tensor once; :meth:`close`."""

    def __init__(
        self,
        path: str | Path,
        specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str],
        digest_key: str | None = None,
    ):
        self.path = Path(path)
        self._specs = {k: (dt, tuple(int(d) for d in shape)) for k, (dt, shape) in specs.items()}
        self._metadata = dict(metadata)
        self._digest_key = digest_key
        self._digests: dict[str, str] = {}
        if digest_key is not None:
            if digest_key in self._metadata:
                raise ValueError(f"{self.path}: metadata already has the digest key '{digest_key}'")
            self._metadata[digest_key] = self._digest_json({k: DIGEST_PLACEHOLDER for k in self._specs})
        header: dict[str, Any] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        for name in safetensors_order({k: dt for k, (dt, _) in self._specs.items()}):
            dt, shape = self._specs[name]
            nbytes = torch.empty(0, dtype=dt).element_size()
            for d in shape:
                nbytes *= d
            self._offsets[name] = (pos, pos + nbytes)
            header[name] = {"dtype": TORCH_TO_ST[dt], "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
            pos += nbytes
        self._tensor_header = header
        raw = self._header_bytes()
        self._data_start = 8 + len(raw)
        self.total_bytes = self._data_start + pos
        self._written: set[str] = set()
        self._f = open(self.path, "wb")  # noqa: SIM115 (closed by close()/abort())
        try:
            if hasattr(os, "posix_fallocate") and self.total_bytes:
                # Reserve the whole file now: a disk too small fails here, before any compute.
                os.posix_fallocate(self._f.fileno(), 0, self.total_bytes)
            self._f.write(len(raw).to_bytes(8, "little"))
            self._f.write(raw)
        except BaseException:
            self._f.close()
            raise

    @staticmethod
    def _digest_json(digests: dict[str, str]) -> str:
        return json.dumps(dict(sorted(digests.items())), separators=(",", ":"))

    def _header_bytes(self) -> bytes:
        header: dict[str, Any] = {"__metadata__": dict(sorted(self._metadata.items()))} if self._metadata else {}
        header.update(self._tensor_header)
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        return raw + b" " * ((8 - len(raw) % 8) % 8)

    @property
    def digests(self) -> dict[str, str]:
        """name -> :func:`tensor_digest` of the tensors written so far."""
        return dict(self._digests)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self._specs:
            raise KeyError(f"{self.path}: tensor '{name}' was not declared")
        if name in self._written:
            raise ValueError(f"{self.path}: tensor '{name}' written twice")
        dt, shape = self._specs[name]
        if tensor.dtype != dt or tuple(tensor.shape) != shape:
            raise ValueError(
                f"{self.path}: tensor '{name}' is {tensor.dtype} {tuple(tensor.shape)}, declared {dt} {shape}"
            )
        start, end = self._offsets[name]
        data = tensor_bytes(tensor)
        if self._digest_key is not None:
            self._digests[name] = tensor_digest(TORCH_TO_ST[dt], shape, data)
        if end > start:
            self._f.seek(self._data_start + start)
            self._f.write(data)
        self._written.add(name)

    def read_back(self, name: str) -> torch.Tensor:
        """Tensor ``name``, already written, read back from the file into a fresh tensor (one
        ``pread``: no mapping that would keep its pages in RSS, no header to parse)."""
        if name not in self._written:
            raise KeyError(f"{self.path}: tensor '{name}' was not written yet")
        dt, shape = self._specs[name]
        start, end = self._offsets[name]
        self._f.flush()
        buf = bytearray(end - start)
        if buf:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                got = os.preadv(fd, [buf], self._data_start + start)
            finally:
                os.close(fd)
            if got != len(buf):
                raise OSError(f"{self.path}: short read of tensor '{name}' ({got} of {len(buf)} bytes)")
            return torch.frombuffer(buf, dtype=dt).reshape(shape)
        return torch.empty(shape, dtype=dt)

    def close(self) -> None:
        """Flush and close; raises if a declared tensor was never written."""
        missing = [k for k in self._specs if k not in self._written]
        try:
            if missing:
                raise ValueError(f"{self.path}: tensor '{missing[0]}' was never written ({len(missing)} missing)")
            if self._digest_key is not None:
                self._metadata[self._digest_key] = self._digest_json(self._digests)
                raw = self._header_bytes()
                # Same length by construction (fixed-width hex digests replace the placeholders).
                assert 8 + len(raw) == self._data_start, "digest header changed length"
                self._f.seek(8)
                self._f.write(raw)
            self._f.flush()
            os.fsync(self._f.fileno())
        finally:
            self._f.close()

    def abort(self) -> None:
        self._f.close()


def write_safetensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, str], digest_key: str
) -> None:
    """Write ``tensors`` in one streaming pass with sorted metadata and per-tensor digests under
    ``digest_key``. Callers write to a temp name (``utils.atomic``), which removes a partial file."""
    specs = {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    writer = StreamingSafetensorsWriter(path, specs, meta, digest_key=digest_key)
    try:
        for k, t in tensors.items():
            writer.write(k, t)
        writer.close()
    except BaseException:
        writer.abort()
        raise
