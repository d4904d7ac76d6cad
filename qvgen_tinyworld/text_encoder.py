"""A tiny, fixed text encoder for the tiny-video grammar.

``encoder_hidden_states[b, i] = E[token_i] + pos_scale * P[i]`` for the ``<bos>`` token and the
prompt's words, zero beyond them (Wan zero-pads UMT5 embeddings the same way). ``E`` is a
Gaussian table drawn from a fixed seed and ``P`` a sinusoidal table; neither is trained.

Why fixed rather than learned: the grammar has only 18 words, and random Gaussian vectors in 64
dimensions are nearly orthogonal, so every word is already distinguishable; the denoiser's own
text projection (``condition_embedder.text_embedder``) and cross-attention learn to read them.
A fixed table has nothing to save but ``(seed, dim, max_len)``, cannot drift between training,
quantization and export, and stays in float like the real Wan text encoder (UMT5 is not
quantized by QVGen). The positional term is what binds each color/shape/direction word to its
own clause in multi-object prompts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from qvgen_tinyworld.grammar import VOCAB, tokenize

BOS = "<bos>"


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    dim: int = 64
    max_len: int = 16
    seed: int = 20250511
    pos_scale: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 2 or self.dim % 2:
            raise ValueError(f"dim must be an even integer >= 2, got {self.dim!r}")
        if not isinstance(self.max_len, int) or self.max_len < 2:
            raise ValueError(f"max_len must be an integer >= 2, got {self.max_len!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextEncoderConfig:
        return cls(**d)


class TinyTextEncoder:
    """``encode(prompts) -> encoder_hidden_states [B, max_len, dim]`` (float32)."""

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        self.config = cfg = config or TextEncoderConfig()
        self.vocab: tuple[str, ...] = (BOS, *VOCAB)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        gen = torch.Generator("cpu").manual_seed(cfg.seed)
        self.token_table = torch.randn(len(self.vocab), cfg.dim, generator=gen, dtype=torch.float32)  # [V, D]
        pos = torch.arange(cfg.max_len, dtype=torch.float32)[:, None]  # [L, 1]
        freqs = torch.exp(-math.log(100.0) * torch.arange(0, cfg.dim, 2, dtype=torch.float32) / cfg.dim)  # [D/2]
        self.pos_table = torch.zeros(cfg.max_len, cfg.dim)  # [L, D]
        self.pos_table[:, 0::2] = torch.sin(pos * freqs)
        self.pos_table[:, 1::2] = torch.cos(pos * freqs)

    def token_ids(self, prompt: str) -> list[int]:
        ids = [self.index[BOS]] + [self.index[w] for w in tokenize(prompt)]
        if len(ids) > self.config.max_len:
            raise ValueError(
                f"prompt {prompt!r} has {len(ids) - 1} words; at most {self.config.max_len - 1} fit in max_len"
            )
        return ids

    def encode(self, prompts: list[str] | tuple[str, ...] | str) -> torch.Tensor:
        """Embed prompts; ``""`` is the unconditional prompt (only ``<bos>``)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        cfg = self.config
        out = torch.zeros(len(prompts), cfg.max_len, cfg.dim, dtype=torch.float32)
        for b, p in enumerate(prompts):
            ids = self.token_ids(p)
            n = len(ids)
            out[b, :n] = self.token_table[ids] + cfg.pos_scale * self.pos_table[:n]
        return out

    __call__ = encode
