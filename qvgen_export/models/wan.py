"""Wan 2.1 transformers as diffusers' ``WanTransformer3DModel``: tiny configs and real loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# A random-init stand-in of the Wan architecture, small enough for CPU tests (~0.3M parameters):
# 8 frames of 32x32 RGB "latents" (pixel space), patch (1, 4, 4) -> 512 tokens.
TINY_WAN_CONFIG: dict[str, Any] = {
    "patch_size": (1, 4, 4),
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    "in_channels": 3,
    "out_channels": 3,
    "text_dim": 64,
    "freq_dim": 64,
    "ffn_dim": 256,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 64,
}


def build_wan(config: dict[str, Any], seed: int | None = 0) -> torch.nn.Module:
    """A ``WanTransformer3DModel`` from a diffusers config dict, seeded random init."""
    from diffusers import WanTransformer3DModel

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    if "patch_size" in cfg:
        cfg["patch_size"] = tuple(cfg["patch_size"])
    if seed is not None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = WanTransformer3DModel(**cfg)
    else:
        model = WanTransformer3DModel(**cfg)
    return model.eval()


def model_config_dict(model: torch.nn.Module) -> dict[str, Any]:
    """The diffusers config of ``model`` as plain JSON-able values (no private keys)."""
    out: dict[str, Any] = {}
    for k, v in dict(model.config).items():
        if k.startswith("_"):
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def load_diffusers_transformer(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load a real Wan transformer from a local diffusers folder (never from a hub).

    ``path`` is a model folder holding ``config.json`` and safetensors weights (one file or
    shards with a ``*.safetensors.index.json``), or a pipeline folder with a ``transformer/``
    subfolder. The model is built from its config and the weights are read with safetensors
    directly: no pickle, and no dependency on accelerate's low-memory loading.
    """
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    p = Path(path)
    if (p / "transformer" / "config.json").is_file():
        p = p / "transformer"
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no diffusers config.json (expected a WanTransformer3DModel folder)")
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{p}: no .safetensors weights (pickled .bin weights are not loaded)")
    model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(p))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{p}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(dtype).eval()
