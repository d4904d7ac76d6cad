"""Wan 2.1 transformers as diffusers' ``WanTransformer3DModel``: tiny configs and real loading."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # diffusers_folder imports safetensors; keep this module's import light
    from qvgen_export.models.diffusers_folder import DiffusersFolder

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


def wan_skeleton(config: dict[str, Any], from_config: bool = False) -> torch.nn.Module:
    """A ``WanTransformer3DModel`` whose parameters are on the meta device (no memory, no init).

    ``from_config`` builds it the way diffusers reads a folder's config.json (unknown keys
    ignored); otherwise the config's keys are the constructor's arguments, as in :func:`build_wan`.
    Buffers computed at construction (rotary tables) are real.
    """
    from diffusers import WanTransformer3DModel

    from qvgen_export.utils.meta_init import params_on_meta

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    if "patch_size" in cfg:
        cfg["patch_size"] = tuple(cfg["patch_size"])
    with params_on_meta():
        model = WanTransformer3DModel.from_config(cfg) if from_config else WanTransformer3DModel(**cfg)
    return model.eval()


def skeleton_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``state_dict`` name -> shape of a (meta) model: what a weight file must hold."""
    return {k: tuple(t.shape) for k, t in model.state_dict().items()}


def open_wan_folder(path: str | Path) -> tuple[DiffusersFolder, torch.nn.Module]:
    """A diffusers folder opened lazily and the meta skeleton its config builds, checked to match.

    ``DiffusersFolderError`` (one line naming the file) for a config that builds no
    ``WanTransformer3DModel`` or weights whose names or shapes differ from it.
    """
    from qvgen_export.models.diffusers_folder import DiffusersFolder, DiffusersFolderError

    folder = DiffusersFolder(path)
    try:
        model = wan_skeleton(folder.config, from_config=True)
    except (TypeError, ValueError) as e:
        raise DiffusersFolderError(
            f"{folder.path / 'config.json'}: does not build a WanTransformer3DModel ({e})"
        ) from None
    folder.check_matches(skeleton_shapes(model))
    return folder, model


def load_diffusers_transformer(path: str | Path, dtype: torch.dtype | None = torch.float32) -> torch.nn.Module:
    """Load a real Wan transformer from a local diffusers folder (never from a hub).

    ``path`` is a model folder holding ``config.json`` and safetensors weights (one file or
    shards with a ``*.safetensors.index.json``), or a pipeline folder with a ``transformer/``
    subfolder. The model is built on the meta device from its config and each tensor is read
    lazily in its stored dtype, cast to ``dtype`` (``None`` keeps the stored dtypes) and
    assigned, so peak memory is the loaded model plus one tensor. No pickle, no accelerate.

    Raises :class:`~qvgen_export.models.diffusers_folder.DiffusersFolderError` (a ValueError; a
    FileNotFoundError too for absent files) for a missing config or shard, an index naming a
    tensor its shard lacks, pickled weights, or weights that do not match config.json.
    """
    from qvgen_export.utils.meta_init import assign_tensor

    folder, model = open_wan_folder(path)
    with torch.no_grad():
        for key in model.state_dict():
            t = folder.get(key)
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            assign_tensor(model, key, t, cast=dtype is not None)
        if dtype is not None:
            # As before (whole-model .to(dtype)): buffers computed at construction (rotary
            # tables) are cast too; parameters already are, so nothing else is copied.
            for mod in model.modules():
                for name, b in mod._buffers.items():
                    if b is not None and b.is_floating_point():
                        mod._buffers[name] = b.to(dtype)
    return model.eval()
