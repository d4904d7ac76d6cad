"""Write a safetensors file tensor by tensor, in any order, without holding the tensors.

The layout is exactly the one ``safetensors.torch.save_file`` writes for the same names, dtypes,
shapes and metadata (tensors sorted by dtype then name, header JSON padded with spaces to a
multiple of 8), so a streamed checkpoint has the same header and bytes as a whole-model save.
Every shape is known before any data exists, so the header and all offsets are written first;
each tensor is then written at its offset as it is produced and dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from qvgen_export.utils.lazy_safetensors import TORCH_TO_ST


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
        self, path: str | Path, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]], metadata: dict[str, str]
    ):
        self.path = Path(path)
        self._specs = {k: (dt, tuple(int(d) for d in shape)) for k, (dt, shape) in specs.items()}
        header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
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
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        raw += b" " * ((8 - len(raw) % 8) % 8)
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
        if end > start:
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            self._f.seek(self._data_start + start)
            self._f.write(memoryview(data))
        self._written.add(name)

    def close(self) -> None:
        """Flush and close; raises if a declared tensor was never written."""
        missing = [k for k in self._specs if k not in self._written]
        try:
            if missing:
                raise ValueError(f"{self.path}: tensor '{missing[0]}' was never written ({len(missing)} missing)")
            self._f.flush()
            os.fsync(self._f.fileno())
        finally:
            self._f.close()

    def abort(self) -> None:
        self._f.close()
