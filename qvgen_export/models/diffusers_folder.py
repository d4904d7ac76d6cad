"""A local diffusers model folder read lazily: config, index, shards, one tensor at a time.

Layouts accepted (never a hub, never pickle): ``config.json`` plus either one or more
``*.safetensors`` files, or shards listed by a ``*.safetensors.index.json`` (``weight_map``:
tensor name -> shard file). A pipeline folder with a ``transformer/`` subfolder is resolved to
it. Every problem is one :class:`DiffusersFolderError` line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qvgen_export.utils.json_files import JsonFileError, read_json_object
from qvgen_export.utils.lazy_safetensors import LazySafetensors, UnreadableFile

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class DiffusersFolderError(ValueError):
    """A diffusers folder that cannot be read; the message is one line naming the file."""


class DiffusersFileNotFound(DiffusersFolderError, FileNotFoundError):
    """A file the folder needs is absent (both a ValueError and a FileNotFoundError)."""


class DiffusersFolder:
    """Lazy view of a diffusers model folder: ``config``, ``keys()``, ``shape``, ``dtype``, ``get``."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if (p / "transformer" / "config.json").is_file():
            p = p / "transformer"
        if not (p / "config.json").is_file():
            raise DiffusersFileNotFound(f"{path}: no diffusers config.json (expected a WanTransformer3DModel folder)")
        self.path = p
        try:
            self.config: dict[str, Any] = read_json_object(p / "config.json", "a model config")
        except JsonFileError as e:
            raise DiffusersFolderError(str(e)) from None
        self._files: dict[str, LazySafetensors] = {}
        self._where: dict[str, str] = {}  # tensor name -> file name
        self._locate_weights()

    # -- discovery ---------------------------------------------------------------------------
    def _open(self, name: str) -> LazySafetensors:
        if name not in self._files:
            f = self.path / name
            if not f.is_file():
                raise DiffusersFileNotFound(f"{f}: shard is missing")
            try:
                self._files[name] = LazySafetensors(f)
            except UnreadableFile as e:
                raise DiffusersFolderError(str(e)) from None
        return self._files[name]

    def _locate_weights(self) -> None:
        p = self.path
        pickled = sorted(f.name for f in p.iterdir() if f.name.endswith(PICKLE_SUFFIXES + (".bin.index.json",)))
        indexes = sorted(p.glob("*.safetensors.index.json"))
        singles = sorted(p.glob("*.safetensors"))
        if not indexes and not singles:
            if pickled:
                raise DiffusersFolderError(
                    f"{p / pickled[0]}: pickled weights are refused (they can execute code); "
                    "convert them to safetensors"
                )
            raise DiffusersFileNotFound(f"{p}: no .safetensors weights")
        if len(indexes) > 1:
            raise DiffusersFolderError(f"{p}: several safetensors indexes ({', '.join(i.name for i in indexes)})")
        if indexes:
            self._read_index(indexes[0])
            return
        for f in singles:
            lazy = self._open(f.name)
            for k in lazy:
                if k in self._where:
                    raise DiffusersFolderError(f"{f}: tensor '{k}' also in {self._where[k]}")
                self._where[k] = f.name

    def _read_index(self, index: Path) -> None:
        try:
            weight_map = read_json_object(index, "a safetensors index").get("weight_map")
        except JsonFileError as e:
            raise DiffusersFolderError(str(e)) from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise DiffusersFolderError(f"{index}: weight_map must be a non-empty object")
        for shard in sorted(set(weight_map.values())):
            if not isinstance(shard, str) or Path(shard).name != shard:
                raise DiffusersFolderError(f"{index}: shard name {shard!r} must be a plain file name")
            if not (self.path / shard).is_file():
                raise DiffusersFileNotFound(f"{self.path / shard}: shard named by {index.name} is missing")
        for k, shard in weight_map.items():
            if k not in self._open(shard):
                raise DiffusersFolderError(f"{self.path / shard}: tensor '{k}' named by {index.name} is not in it")
            self._where[k] = shard

    # -- access ------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._where)

    def file_of(self, key: str) -> Path:
        return self.path / self._where[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._files[self._where[key]].shape(key)

    def dtype(self, key: str) -> torch.dtype | str:
        return self._files[self._where[key]].dtype(key)

    def get(self, key: str) -> torch.Tensor:
        """Tensor ``key`` in its stored dtype (read now; the folder keeps no copy)."""
        try:
            return self._files[self._where[key]].get(key)
        except UnreadableFile as e:
            raise DiffusersFolderError(str(e)) from None

    def release(self) -> None:
        """Unmap every shard (mapped pages count in RSS); later reads reopen what they need."""
        for f in self._files.values():
            f.close()

    def check_matches(self, expected: dict[str, tuple[int, ...]]) -> None:
        """Raise unless the folder holds exactly the tensors ``expected`` (name -> shape)."""
        missing = [k for k in expected if k not in self._where]
        unexpected = [k for k in self._where if k not in expected]
        if missing or unexpected:
            raise DiffusersFolderError(
                f"{self.path}: weights do not match config.json (missing {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''})"
            )
        for k, shape in expected.items():
            if self.shape(k) != tuple(shape):
                raise DiffusersFolderError(
                    f"{self.file_of(k)}: tensor '{k}' has shape {self.shape(k)}, config.json implies {tuple(shape)}"
                )
            dt = self.dtype(k)
            if not isinstance(dt, torch.dtype):
                raise DiffusersFolderError(f"{self.file_of(k)}: tensor '{k}' has unsupported dtype {dt}")
