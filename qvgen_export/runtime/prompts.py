"""Prompt embeddings for the sampling commands.

The embedded tiny world uses the deterministic grammar text encoder of ``qvgen_tinyworld``
(its settings come from the teacher file when present). Real Wan models take UMT5 embeddings
precomputed by the user (``--prompt-embeds``), since no text encoder weights ship here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DEFAULT_PROMPTS = ("a red circle moving right", "a blue square moving up")


def tiny_text_encoder(text_dim: int) -> Any:
    from qvgen_tinyworld.teacher import ASSET_PATH, read_teacher_info
    from qvgen_tinyworld.text_encoder import TextEncoderConfig, TinyTextEncoder

    if ASSET_PATH.is_file():
        cfg = TextEncoderConfig.from_dict(read_teacher_info(ASSET_PATH)["text_encoder"])
    else:
        cfg = TextEncoderConfig(dim=text_dim)
    if cfg.dim != text_dim:
        raise ValueError(
            f"the model's text_dim is {text_dim} but the tiny text encoder makes {cfg.dim}; pass --prompt-embeds"
        )
    return TinyTextEncoder(cfg)


def encode_prompts(prompts: list[str], negative: str, text_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tiny_text_encoder(text_dim)
    return enc.encode(list(prompts)), enc.encode([negative] * len(prompts))


def load_prompt_embeds(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``prompt_embeds [B, L, D]`` and optional ``negative_prompt_embeds`` from a safetensors file."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: file not found")
    t = load_file(str(p))
    if "prompt_embeds" not in t:
        raise ValueError(f"{p}: no 'prompt_embeds' tensor")
    return t["prompt_embeds"].float(), t.get("negative_prompt_embeds")


def text_encoder_folder(path: str | Path) -> Path:
    """The folder holding ``text_encoder/`` and ``tokenizer/``: ``path`` itself or its parent
    (a pipeline folder, or its ``transformer/`` subfolder)."""
    p = Path(path)
    for cand in (p, p.parent):
        if (cand / "text_encoder" / "config.json").is_file() and (cand / "tokenizer").is_dir():
            return cand
    raise FileNotFoundError(f"{path}: no text_encoder/ and tokenizer/ (expected a local diffusers Wan pipeline folder)")


@torch.no_grad()
def umt5_prompt_embeds(
    folder: str | Path, prompts: list[str], negative: str = "", max_sequence_length: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds, negative_prompt_embeds)`` from a local Wan pipeline folder's UMT5.

    Exactly ``WanPipeline.encode_prompt`` (the pipeline is built with only its tokenizer and
    text encoder, so diffusers' own cleaning, padding and trimming apply). Needs ``transformers``.
    """
    try:
        from transformers import AutoTokenizer, UMT5EncoderModel
    except ImportError:
        raise ImportError("encoding prompts with UMT5 needs transformers: pip install transformers") from None
    from diffusers import WanPipeline

    root = text_encoder_folder(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    encoder = UMT5EncoderModel.from_pretrained(str(root / "text_encoder"), local_files_only=True).eval()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=None, scheduler=None, transformer=None)
    pe, ne = pipe.encode_prompt(
        list(prompts),
        [negative] * len(prompts),
        max_sequence_length=max_sequence_length,
        device=torch.device("cpu"),
    )
    assert ne is not None
    return pe.float(), ne.float()
