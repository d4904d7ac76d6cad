"""The graph I/O contract of an exported Wan transformer: names, dtypes, dynamic axes, profiles.

Written once here and read by the exporter (input/output names, ``torch.export.Dim`` axes), the
runtime backends and the parity code (feeds), and the TensorRT engine builder (min/opt/max
optimization profiles). Notations: ``B`` batch, ``C`` latent channels, ``F`` latent frames,
``H``/``W`` latent height/width (multiples of the patch), ``L`` text tokens, ``D`` text width.

    hidden_states          [B, C_in, F, H, W]  float32
    timestep               [B]                 float32   (diffusion timestep, 0..1000)
    encoder_hidden_states  [B, L, D]           float32
    -> velocity            [B, C_out, F, H, W] float32
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

HIDDEN_STATES = "hidden_states"
TIMESTEP = "timestep"
ENCODER_HIDDEN_STATES = "encoder_hidden_states"
VELOCITY = "velocity"
INPUT_NAMES: tuple[str, ...] = (HIDDEN_STATES, TIMESTEP, ENCODER_HIDDEN_STATES)
OUTPUT_NAMES: tuple[str, ...] = (VELOCITY,)
DTYPE = "float32"

# Dynamic axes: input name -> {axis index: axis name}. Height and width are declared as
# multiples of the spatial patch, frames as a multiple of the temporal patch (see axis_dims).
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    HIDDEN_STATES: {0: "batch", 2: "frames", 3: "height", 4: "width"},
    TIMESTEP: {0: "batch"},
    ENCODER_HIDDEN_STATES: {0: "batch", 1: "text_len"},
}
AXES = ("batch", "frames", "height", "width", "text_len")


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max of each dynamic axis, in latent elements (TensorRT optimization profile)."""

    name: str
    description: str
    batch: tuple[int, int, int]
    frames: tuple[int, int, int]
    height: tuple[int, int, int]
    width: tuple[int, int, int]
    text_len: tuple[int, int, int]

    def axis(self, name: str) -> tuple[int, int, int]:
        return getattr(self, name)

    def replace(self, **axes: tuple[int, int, int]) -> ShapeProfile:
        fields = {a: self.axis(a) for a in AXES}
        for k, v in axes.items():
            if k not in fields:
                raise ValueError(f"unknown shape axis {k!r}; expected one of {', '.join(AXES)}")
            fields[k] = v
        return ShapeProfile(self.name, self.description, **fields)

    def check(self, model_config: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` unless min <= opt <= max and spatial sizes fit the patch."""
        pt, ph, pw = (int(p) for p in model_config["patch_size"])
        for a in AXES:
            lo, opt, hi = self.axis(a)
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"profile {self.name!r}: axis {a} needs 1 <= min <= opt <= max, got {lo}:{opt}:{hi}")
        for a, p in (("frames", pt), ("height", ph), ("width", pw)):
            bad = [v for v in self.axis(a) if v % p]
            if bad:
                raise ValueError(f"profile {self.name!r}: {a} {bad} not a multiple of the patch size {p}")

    def shapes(self, model_config: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], ...]]:
        """``{input name: (min shape, opt shape, max shape)}`` for the model's channel counts."""
        c, d = int(model_config["in_channels"]), int(model_config["text_dim"])
        out: dict[str, tuple[tuple[int, ...], ...]] = {}
        for name in INPUT_NAMES:
            per = []
            for i in range(3):
                b, f, h, w, lt = (self.axis(a)[i] for a in AXES)
                per.append({HIDDEN_STATES: (b, c, f, h, w), TIMESTEP: (b,), ENCODER_HIDDEN_STATES: (b, lt, d)}[name])
            out[name] = tuple(per)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{a: list(self.axis(a)) for a in AXES}}


# Wan 2.1 defaults. Latents are the VAE's /8 spatially and (frames - 1)/4 + 1 temporally:
# 81 frames of 832x480 -> 21 x 60 x 104; 1280x720 -> 21 x 90 x 160. Text: UMT5's 512 tokens.
# Batch 2 is classifier-free guidance with both branches in one call.
PROFILES: dict[str, ShapeProfile] = {
    p.name: p
    for p in (
        ShapeProfile(
            "480p",
            "Wan 2.1 832x480, 1..81 frames",
            (1, 1, 2),
            (1, 21, 21),
            (60, 60, 60),
            (104, 104, 104),
            (1, 512, 512),
        ),
        ShapeProfile(
            "720p",
            "Wan 2.1 1280x720, 1..81 frames",
            (1, 1, 2),
            (1, 21, 21),
            (90, 90, 90),
            (160, 160, 160),
            (1, 512, 512),
        ),
        ShapeProfile(
            "tiny",
            "the embedded tiny pixel-space model: 8 frames of 32x32",
            (1, 1, 2),
            (1, 8, 16),
            (32, 32, 32),
            (32, 32, 32),
            (1, 16, 64),
        ),
    )
}


def default_profile(model_config: Mapping[str, Any]) -> ShapeProfile:
    """``tiny`` for the 3-channel pixel-space test models, else Wan 2.1 480p."""
    return PROFILES["tiny" if int(model_config["in_channels"]) == 3 else "480p"]


def parse_profile(spec: str | None, model_config: Mapping[str, Any]) -> ShapeProfile:
    """``NAME`` or ``NAME,axis=min:opt:max,...`` (or only overrides) -> a checked profile."""
    parts = [p.strip() for p in (spec or "").split(",") if p.strip()]
    base = default_profile(model_config)
    if parts and "=" not in parts[0]:
        name = parts.pop(0)
        if name not in PROFILES:
            raise ValueError(f"unknown shape profile {name!r}; expected one of {', '.join(PROFILES)}")
        base = PROFILES[name]
    overrides: dict[str, tuple[int, int, int]] = {}
    for p in parts:
        axis, _, value = p.partition("=")
        try:
            lo, opt, hi = (int(v) for v in value.split(":"))
        except ValueError:
            raise ValueError(f"shape override {p!r}: expected axis=min:opt:max with integers") from None
        overrides[axis.strip()] = (lo, opt, hi)
    profile = base.replace(**overrides) if overrides else base
    profile.check(model_config)
    return profile


def feeds(hidden_states: Any, timestep: Any, encoder_hidden_states: Any) -> dict[str, np.ndarray]:
    """Host float32 arrays keyed by input name, from torch tensors (any device) or arrays."""

    def host(v: Any) -> np.ndarray:
        if hasattr(v, "detach"):
            v = v.detach().float().cpu().numpy()
        return np.ascontiguousarray(np.asarray(v, dtype=np.float32))

    return {
        HIDDEN_STATES: host(hidden_states),
        TIMESTEP: host(timestep).reshape(-1),
        ENCODER_HIDDEN_STATES: host(encoder_hidden_states),
    }


def axis_dims(model_config: Mapping[str, Any]) -> dict[str, dict[int, Any]]:
    """``torch.export`` dynamic shapes for the exporter, built from :data:`DYNAMIC_AXES`."""
    import torch

    pt, ph, pw = (int(p) for p in model_config["patch_size"])
    d = torch.export.Dim
    dims: dict[str, Any] = {
        "batch": d("batch", min=1, max=1024),
        "text_len": d("text_len", min=1, max=4096),
        "height": ph * d("h_patches", min=1, max=1024),
        "width": pw * d("w_patches", min=1, max=1024),
        # Wan's temporal patch is 1 (the axis is plain "frames"); a larger one makes frames a multiple of it.
        "frames": d("frames", min=1, max=1024) if pt == 1 else pt * d("f_patches", min=1, max=1024),
    }
    return {name: {i: dims[a] for i, a in axes.items()} for name, axes in DYNAMIC_AXES.items()}
