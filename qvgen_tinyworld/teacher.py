"""The embedded tiny text-to-video teacher: a trained Wan-architecture denoiser in pixel space.

File format (``qvgen_tinyworld/assets/tiny_teacher.safetensors``): the transformer's state dict
(float32) and, in the safetensors metadata header, JSON strings describing everything needed to
rebuild and use it, so nothing is read from file names:

- ``format`` = ``"qvgen-tiny-teacher"``, ``format_version`` = ``"1"``
- ``diffusers_config``: the ``WanTransformer3DModel`` config
- ``text_encoder``: :class:`TextEncoderConfig` fields
- ``video``: :class:`VideoConfig` fields (frames, height, width; "latents" are RGB pixels)
- ``sampling``: recommended sampler settings (scheduler, shift, steps, guidance scale)
- ``training``: how it was trained (steps, seed, final loss, ...), informational only
- ``condition`` (optional): ``"positions"`` when the model takes, after the 3 RGB channels, 3
  fixed channels with each pixel's frame index, column and row (Wan-I2V style: in_channels =
  out_channels + condition channels). Absent: plain text-to-video, in_channels = out_channels.

A JSON file of the same stem beside it mirrors the metadata for humans.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from qvgen_tinyworld.dataset import VideoConfig
from qvgen_tinyworld.text_encoder import TextEncoderConfig, TinyTextEncoder

FORMAT = "qvgen-tiny-teacher"
FORMAT_VERSION = "1"
ASSET_PATH = Path(__file__).resolve().parent / "assets" / "tiny_teacher.safetensors"

# The teacher's diffusers config: 4 blocks of width 128 (4 heads x 32), ~1.2M parameters.
# 8 frames of 32x32 RGB with patch (1, 4, 4) -> 8*8*8 = 512 tokens per clip.
TEACHER_CONFIG: dict[str, Any] = {
    "patch_size": [1, 4, 4],
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 3,
    "out_channels": 3,
    "text_dim": 64,
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 64,
}

# Extra input channels of a teacher with ``condition = "positions"``: frame, column, row in [-1, 1].
POSITION_CHANNELS = 3

DEFAULT_SAMPLING: dict[str, Any] = {"scheduler": "unipc", "shift": 3.0, "num_steps": 20, "guidance_scale": 4.0}


def save_teacher(
    path: str | Path,
    model: torch.nn.Module,
    text_encoder: TinyTextEncoder,
    video: VideoConfig,
    sampling: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    condition: str | None = None,
) -> dict[str, Any]:
    """Write ``model`` and its self-description to ``path`` (+ ``.json`` mirror); returns the info."""
    from safetensors.torch import save_file

    from qvgen_export.models.wan import model_config_dict

    info: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "diffusers_config": model_config_dict(model),
        "text_encoder": text_encoder.config.to_dict(),
        "video": video.to_dict(),
        "sampling": dict(sampling or DEFAULT_SAMPLING),
        "training": dict(training or {}),
    }
    if condition is not None:
        info["condition"] = condition
    check_condition(info)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in info.items()}
    # Atomic: a reader (an evaluation of a run in progress) never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    tmp_json = path.with_name(path.stem + ".json.tmp")
    tmp_json.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    tmp_json.replace(path.with_suffix(".json"))
    return info


def read_teacher_info(path: str | Path) -> dict[str, Any]:
    """The metadata header of a teacher file, JSON-decoded; raises ``ValueError`` on a foreign file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a tiny-teacher file (metadata format={meta.get('format')!r}, expected {FORMAT!r})"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported tiny-teacher format_version {meta.get('format_version')!r}")
    return {k: v if k in ("format", "format_version", "condition") else json.loads(v) for k, v in meta.items()}


def load_teacher(path: str | Path | None = None) -> tuple[torch.nn.Module, TinyTextEncoder, dict[str, Any]]:
    """Load the trained tiny teacher (default: the embedded asset).

    Returns:
        ``(model, text_encoder, info)``: ``model`` is a ``WanTransformer3DModel`` in eval mode
        (float32, CPU); ``text_encoder`` maps prompts to ``encoder_hidden_states``; ``info`` is
        the metadata (``diffusers_config``, ``text_encoder``, ``video``, ``sampling``, ``training``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a tiny-teacher file or its weights do not fit its config.
    """
    from safetensors.torch import load_file

    from qvgen_export.models.wan import build_wan

    p = Path(path) if path is not None else ASSET_PATH
    if not p.is_file():
        raise FileNotFoundError(f"tiny teacher weights not found at {p}")
    info = read_teacher_info(p)
    check_condition(info)
    model = build_wan(info["diffusers_config"], seed=None)
    state = load_file(str(p))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{p}: weights do not match the config (missing={missing[:3]}, unexpected={unexpected[:3]})")
    text_encoder = TinyTextEncoder(TextEncoderConfig.from_dict(info["text_encoder"]))
    return model.eval(), text_encoder, info


def latent_shape(info: dict[str, Any]) -> tuple[int, int, int, int]:
    """``(C, F, H, W)`` of one sample for ``sample_video`` (C: the model's output channels)."""
    v = info["video"]
    return (int(info["diffusers_config"]["out_channels"]), int(v["frames"]), int(v["height"]), int(v["width"]))


def check_condition(info: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless ``in_channels`` = ``out_channels`` + the condition's channels."""
    cfg, cond = info["diffusers_config"], info.get("condition")
    extra = {None: 0, "positions": POSITION_CHANNELS}.get(cond)
    if extra is None:
        raise ValueError(f"unknown teacher condition {cond!r}; expected 'positions' or none")
    if int(cfg["in_channels"]) != int(cfg["out_channels"]) + extra:
        raise ValueError(
            f"teacher condition {cond!r} needs in_channels = out_channels + {extra}, "
            f"got {cfg['in_channels']} and {cfg['out_channels']}"
        )


def position_channels(frames: int, height: int, width: int) -> torch.Tensor:
    """``[3, F, H, W]``: each pixel's frame index, column and row, scaled to [-1, 1].

    Wan's rotary embedding only tells attention the *offset* between two tokens, and the patch
    embedding has no padding, so without these a Wan transformer cannot tell which frame (or
    where in the frame) a token is; with them, "moving right" is a function of absolute position."""
    f = torch.linspace(-1.0, 1.0, frames).view(frames, 1, 1).expand(frames, height, width)
    x = ((torch.arange(width) + 0.5) / width * 2 - 1).view(1, 1, width).expand(frames, height, width)
    y = ((torch.arange(height) + 0.5) / height * 2 - 1).view(1, height, 1).expand(frames, height, width)
    return torch.stack([f, x, y])


def with_condition(hidden_states: torch.Tensor, condition: str | None) -> torch.Tensor:
    """The model input for latents ``[B, C, F, H, W]``: the latents, then the condition channels."""
    if condition is None:
        return hidden_states
    b, _, f, h, w = hidden_states.shape
    pos = position_channels(f, h, w).to(hidden_states.dtype).expand(b, -1, -1, -1, -1)
    return torch.cat([hidden_states, pos], dim=1)


class ConditionedDenoiser:
    """A denoiser with ``WanTransformer3DModel``'s call signature over latents of ``out_channels``:
    it appends the teacher's condition channels and calls ``model``. Samplers, the evaluation
    harness and the teacher-forced metric take it in place of the model."""

    def __init__(self, model: Any, condition: str | None) -> None:
        self.model, self.condition = model, condition

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.model(with_condition(hidden_states, self.condition), *args, **kwargs)


def teacher_denoiser(model: Any, info: dict[str, Any]) -> Any:
    """``model`` itself for a plain teacher; a :class:`ConditionedDenoiser` for a conditioned one."""
    cond = info.get("condition")
    return model if cond is None else ConditionedDenoiser(model, cond)
