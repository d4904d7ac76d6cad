"""The quantization scheme: one frozen config that drives fake-quant, packing, export and plugins.

Every consumer (trainer, PTQ, checkpoint writer, ONNX lowering, native plugin attributes) reads
its numbers from :class:`QuantConfig`; nothing re-derives them from file names or flags.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from enum import Enum
from typing import Any


class WeightGranularity(str, Enum):
    PER_CHANNEL = "per_channel"
    PER_GROUP = "per_group"


# QVGen quantizes every nn.Linear of the transformer (see ../shared/notes/qvgen-method.md).
DEFAULT_INCLUDE: tuple[str, ...] = ("*",)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """A W/A uniform quantization scheme.

    Weights: per output channel (or per group of ``group_size`` input channels), integer levels
    ``0 .. 2^b-1``, learnable scale and float (unrounded) zero point; symmetric schemes fix the
    zero point at ``2^(b-1)``.
    Activations: per token, dynamic min/max over channels (zero always inside the range),
    asymmetric with a rounded integer zero point, clipped by ``act_clip_base * sigmoid(logit)``
    where the two logits (lower, upper) are learnable per timestep group.
    """

    weight_bits: int = 4
    act_bits: int = 4
    weight_granularity: WeightGranularity = WeightGranularity.PER_CHANNEL
    group_size: int | None = None
    weight_symmetric: bool = False
    timestep_groups: int = 50
    num_train_timesteps: int = 1000
    act_clip_base: float = 0.95
    act_clip_init: float = 0.95
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("weight_bits", "act_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 2 <= v <= 8:
                raise ValueError(f"{name} must be an integer in 2..8, got {v!r}")
        gran = WeightGranularity(self.weight_granularity)
        object.__setattr__(self, "weight_granularity", gran)
        if gran is WeightGranularity.PER_GROUP:
            if not isinstance(self.group_size, int) or self.group_size < 2:
                raise ValueError(f"per_group weights need group_size >= 2, got {self.group_size!r}")
        elif self.group_size is not None:
            raise ValueError("group_size is only meaningful with weight_granularity='per_group'")
        if not isinstance(self.timestep_groups, int) or self.timestep_groups < 1:
            raise ValueError(f"timestep_groups must be a positive integer, got {self.timestep_groups!r}")
        if self.num_train_timesteps <= 0:
            raise ValueError(f"num_train_timesteps must be positive, got {self.num_train_timesteps!r}")
        if not 0.0 < self.act_clip_base <= 1.0:
            raise ValueError(f"act_clip_base must be in (0, 1], got {self.act_clip_base!r}")
        if not 0.0 < self.act_clip_init < 1.0:
            raise ValueError(f"act_clip_init must be in (0, 1), got {self.act_clip_init!r}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    # -- derived numbers ---------------------------------------------------------------------
    @property
    def weight_qmax(self) -> int:
        return 2**self.weight_bits - 1

    @property
    def act_qmax(self) -> int:
        return 2**self.act_bits - 1

    @property
    def name(self) -> str:
        return f"w{self.weight_bits}a{self.act_bits}"

    def selects(self, module_name: str) -> bool:
        """Whether the linear called ``module_name`` is quantized (include, then exclude)."""
        inc = any(fnmatch.fnmatchcase(module_name, p) for p in self.include)
        exc = any(fnmatch.fnmatchcase(module_name, p) for p in self.exclude)
        return inc and not exc

    def weight_groups(self, in_features: int) -> int:
        """Number of scale columns for a weight with ``in_features`` inputs."""
        if self.weight_granularity is WeightGranularity.PER_CHANNEL:
            return 1
        assert self.group_size is not None
        if in_features % self.group_size:
            raise ValueError(f"in_features={in_features} is not a multiple of group_size={self.group_size}")
        return in_features // self.group_size

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["weight_granularity"] = self.weight_granularity.value
        d["include"] = list(self.include)
        d["exclude"] = list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown quantization config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("include", "exclude"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> QuantConfig:
        """``w4a4``, ``w3a3``, ``w8a8`` ... -> config with those bit widths."""
        import re

        m = re.fullmatch(r"w(\d)a(\d)", name.lower())
        if not m:
            raise ValueError(f"unknown scheme {name!r}; expected e.g. 'w4a4' or 'w3a3'")
        return cls(weight_bits=int(m.group(1)), act_bits=int(m.group(2)), **overrides)
