"""Lazy safetensors access: names, shapes and dtypes from the header, tensors one at a time.

``safe_open`` memory-maps the file and parses only the JSON header; a tensor's bytes are copied
out when it is asked for, so a reader never holds a whole-file state dict.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# safetensors' dtype strings -> torch dtypes (those torch has; anything else stays a string).
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"), ("U32", "uint32")):
    if hasattr(torch, _attr):
        ST_DTYPES[_name] = getattr(torch, _attr)
TORCH_TO_ST: dict[torch.dtype, str] = {v: k for k, v in ST_DTYPES.items()}


class UnreadableFile(ValueError):
    """The file is not a readable safetensors file; ``reason`` is the first line of the cause."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: not a readable safetensors file ({reason})")
        self.path = path
        self.reason = reason


class LazySafetensors:
    """One safetensors file opened for lazy reading (header parsed once, tensors on demand)."""

    def __init__(self, path: str | Path) -> None:
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        try:
            self._f: Any | None = safe_open(str(self.path), framework="pt")
            self.metadata: dict[str, str] = dict(self._f.metadata() or {})
            keys = list(self._f.keys())
            # Shapes and dtypes come from the header alone (get_slice reads no tensor bytes).
            self._info: dict[str, tuple[tuple[int, ...], torch.dtype | str]] = {}
            for k in keys:
                sl = self._f.get_slice(k)
                st = sl.get_dtype()
                self._info[k] = (tuple(int(d) for d in sl.get_shape()), ST_DTYPES.get(st, st))
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnreadableFile(self.path, first) from None

    def keys(self) -> list[str]:
        return list(self._info)

    def __iter__(self) -> Iterator[str]:
        return iter(self._info)

    def __contains__(self, key: object) -> bool:
        return key in self._info

    def shape(self, key: str) -> tuple[int, ...]:
        return self._info[key][0]

    def dtype(self, key: str) -> torch.dtype | str:
        return self._info[key][1]

    def close(self) -> None:
        """Unmap the file. The pages read so far count in this process's RSS while it is mapped,
        so streaming readers release each file when they move on; :meth:`get` reopens it."""
        self._f = None

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key`` as a fresh CPU tensor in its stored dtype."""
        from safetensors import SafetensorError, safe_open

        try:
            if self._f is None:
                self._f = safe_open(str(self.path), framework="pt")
            return self._f.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnreadableFile(self.path, f"tensor '{key}': {first}") from None
