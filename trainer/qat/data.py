"""Training batches as a deterministic function of (seed, global sample index).

Sample ``g`` of the run (``g = step * global_batch + j``) always gets the same clip, caption
dropout, noise level and noise, whatever the number of processes and whether the run was resumed:
each sample draws from its own generator seeded by ``SeedSequence([seed, g])``. A rank takes a
contiguous slice of the global batch, so 1 process x batch B and 2 processes x B/2 see the same
samples.

Noising (flow matching, training shift 1): ``sigma = k / T`` with ``k`` uniform in ``1..T``,
``x_sigma = (1 - sigma) * x0 + sigma * eps``, ``t = T * sigma``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from qvgen_tinyworld.dataset import VideoConfig


@dataclasses.dataclass
class Batch:
    x0: torch.Tensor  # [B, C, F, H, W] clean latents (tiny world: RGB pixels in [-1, 1])
    cond: torch.Tensor  # [B, L, D] encoder_hidden_states (empty prompt where dropped)
    eps: torch.Tensor  # [B, C, F, H, W]
    sigma: torch.Tensor  # [B]
    num_train_timesteps: int = 1000
    # The teacher's condition (tiny world: "positions"), appended to the noisy latents as the
    # model's input; the velocity target stays latent-only.
    condition: str | None = None

    @property
    def noisy(self) -> torch.Tensor:
        """The model input: noisy latents, then the condition's channels (if any)."""
        s = self.sigma.view(-1, *([1] * (self.x0.dim() - 1)))
        x = (1.0 - s) * self.x0 + s * self.eps
        if self.condition is None:
            return x
        from qvgen_tinyworld.teacher import with_condition

        return with_condition(x, self.condition)

    @property
    def timestep(self) -> torch.Tensor:
        return self.sigma * self.num_train_timesteps

    @property
    def velocity(self) -> torch.Tensor:
        """Flow-matching target ``eps - x0`` (LSQ's objective)."""
        return self.eps - self.x0

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.x0.to(device),
            self.cond.to(device),
            self.eps.to(device),
            self.sigma.to(device),
            self.num_train_timesteps,
            self.condition,
        )


class SampleSource(Protocol):
    """Clean samples: ``clips(indices) -> (x0 [B, ...], prompt embeddings [B, L, D])``; ``null()`` is
    the empty-prompt embedding ``[L, D]``."""

    def clips(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def null(self) -> torch.Tensor: ...


def sample_generator(seed: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 31 ^ int(state[1]))


class TinySource:
    """The procedural tiny-video world (``qvgen_tinyworld``) through the fixed text encoder."""

    def __init__(
        self,
        seed: int,
        frames: int = 8,
        height: int = 32,
        width: int = 32,
        text_encoder: object = None,
        world: VideoConfig | None = None,
    ) -> None:
        """``world``: the ``VideoConfig`` the teacher was trained on (its file records it); clips
        come from that world, shrunk only where a smaller test geometry is asked for."""
        from qvgen_tinyworld.dataset import TinyVideoDataset, VideoConfig
        from qvgen_tinyworld.text_encoder import TinyTextEncoder

        default = world if world is not None else VideoConfig()
        if (frames, height, width) == (default.frames, default.height, default.width):
            video = default
        else:
            # Smaller test geometries: shrink object sizes and speeds with the frame so clips fit.
            f = min(height, width) / 32.0
            lo, hi = default.size_range
            slo, shi = default.speed_range
            video = dataclasses.replace(
                default,
                frames=frames,
                height=height,
                width=width,
                size_range=(max(1.0, lo * f), max(1.0, hi * f)),
                speed_range=(slo * f, shi * f),
            )
        self.dataset = TinyVideoDataset(seed=seed, config=video)
        self.text_encoder = text_encoder if text_encoder is not None else TinyTextEncoder()
        self._null = self.text_encoder.encode([""])[0]  # type: ignore[attr-defined]

    def clips(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x0, prompts = self.dataset.batch(list(indices))
        return x0, self.text_encoder.encode(prompts)  # type: ignore[attr-defined]

    def null(self) -> torch.Tensor:
        return self._null


class CacheSource:
    """Pre-encoded latents and text embeddings from a cache folder (``cache.py``)."""

    def __init__(self, path: str, seed: int) -> None:
        from .cache import LatentCache

        self.cache = LatentCache(path)
        # A seeded permutation of the cache decides which record sample g reads, so epochs are
        # shuffled yet still a pure function of (seed, g).
        n = len(self.cache)
        self._perm = np.random.default_rng([seed, 7]).permutation(n)

    def clips(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.cache)
        recs = [int(self._perm[i % n]) for i in indices]
        lat, txt = zip(*(self.cache[r] for r in recs))
        return torch.stack(lat).float(), torch.stack(txt).float()

    def null(self) -> torch.Tensor:
        return self.cache.null_embedding().float()


class BatchMaker:
    """``batch(step, rank, world) -> Batch``: this rank's slice of the global batch of ``step``."""

    def __init__(
        self,
        source: SampleSource,
        seed: int,
        global_batch: int,
        caption_dropout: float,
        num_train_timesteps: int = 1000,
        condition: str | None = None,
    ) -> None:
        self.source = source
        self.condition = condition
        self.seed = seed
        self.global_batch = global_batch
        self.caption_dropout = caption_dropout
        self.num_train_timesteps = num_train_timesteps

    def indices(self, step: int, rank: int = 0, world: int = 1) -> list[int]:
        if self.global_batch % world:
            raise ValueError(f"global batch {self.global_batch} is not divisible by {world} processes")
        per = self.global_batch // world
        start = step * self.global_batch + rank * per
        return list(range(start, start + per))

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        idx = self.indices(step, rank, world)
        x0, cond = self.source.clips(idx)
        null = self.source.null()
        sigmas, eps = [], []
        cond = cond.clone()
        for j, g in enumerate(idx):
            gen = sample_generator(self.seed, g)
            # Draw order is fixed: dropout, noise level, noise.
            if float(torch.rand((), generator=gen)) < self.caption_dropout:
                cond[j] = null
            k = int(torch.randint(1, self.num_train_timesteps + 1, (), generator=gen))
            sigmas.append(k / self.num_train_timesteps)
            eps.append(torch.randn(x0.shape[1:], generator=gen))
        sig = torch.tensor(sigmas, dtype=torch.float32)
        return Batch(x0, cond, torch.stack(eps), sig, self.num_train_timesteps, self.condition)
