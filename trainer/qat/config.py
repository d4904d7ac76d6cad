"""The QAT run configuration: one frozen dataclass, validated on construction, read from TOML or flags.

The library never sees argparse: ``cli.py`` turns flags or a TOML file into a :class:`TrainConfig`
and every other module reads its numbers from it.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Any


class Method(str, Enum):
    """QAT methods sharing one loop (see ``methods.py`` for what each one trains)."""

    QVGEN = "qvgen"  # distillation + Phi + rank decay; Phi-free result
    QVGEN_KEEP_PHI = "qvgen_keep_phi"  # ablation: Phi kept at rank r0, never decayed (PyTorch-only result)
    LSQ = "lsq"  # flow-matching loss on data, no teacher, no Phi, one activation clip for all timesteps
    QDM = "qdm"  # distillation, timestep-aware activation clips, no Phi
    EFFICIENTDM = "efficientdm"  # frozen W, LoRA merged before quantization Qw(W + BA), distillation


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a QAT run needs. Defaults are the tiny-teacher recipe (see docs/qat-trainer.md).

    Learning rates: the published Wan 1.3B recipe uses 3e-5 for W, s, z, L, R and other params and
    1e-2 for the clip logits at global batch 48 for 2667 steps. The tiny teacher is ~1000x smaller
    and trains for a few hundred steps, so the absolute values are scaled up (1e-4 / 1e-2 by default)
    while keeping the ratio of a much higher clip-logit LR.
    """

    method: Method = Method.QVGEN
    scheme: str = "w4a4"  # w4a4, w3a3 (any wXaY the QuantConfig accepts)
    steps: int = 300
    batch_size: int = 4  # global batch; divided evenly among distributed ranks
    seed: int = 0
    lr: float = 1e-4  # W, s, z, L, R, LoRA and every other trained parameter
    lr_clip: float = 1e-2  # activation clip logits
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    caption_dropout: float = 0.05
    # Cosine decay ends at lr_min_frac * lr instead of 0, so the late rank-decay stages and the
    # Phi-free final phase still train (with a floor of 0 they run at <= 16% and ~0.7% of lr).
    # 0.1 measured better than 0 for QVGen, Q-DM and LSQ at W4A4 and W3A3 (3 paired seeds each,
    # benchmarks/results/qat_table_lrfloor.json vs qat_table.json; docs/qat-trainer.md).
    lr_min_frac: float = 0.1
    # Distillation objective (every distillation method): weights of the conditional branch (the
    # batch's prompt, caption dropout applied), the unconditional branch (the empty prompt, same
    # latent and timestep) and the CFG-guided output ``v_u + g (v_c - v_u)`` with
    # g = distill_guidance (the tiny teacher's sampling default). (1, 0, 0) is the original
    # objective: one call per sample; any other weights make every sample run both branches.
    distill_weights: tuple[float, float, float] = (1.0, 0.0, 0.0)
    distill_guidance: float = 4.0
    # Which nn.Linear layers are quantized (fnmatch patterns on module names; QuantConfig semantics)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    # Phi and rank decay (QVGen)
    phi_rank: int = 32
    # Phi rank as a fraction of the layer's width (min(out, in)), e.g. 0.02 is Wan 1.3B's 32/1536;
    # None: every layer gets phi_rank. phi_rank still sets the stage structure (32: six stages);
    # a layer of rank r has ceil(r * r_s / phi_rank) columns in stage s.
    phi_rank_frac: float | None = None
    decay_lambda: float = 0.5  # share of the columns decayed per stage (the paper's best, 1/2)
    final_phase_frac: float = 0.08  # share of steps trained with Phi already deleted
    # EfficientDM
    lora_rank: int = 32
    # EfficientDM's official recipe: each layer's LoRA learning rate is its mean weight quantization
    # step times 1/2500 (train_efficientdm.py: lr = avg_delta / 2500). None: LoRA at lr.
    lora_lr_step_factor: float | None = 1.0 / 2500.0
    # Model and data
    teacher: str = (
        "tiny"  # "tiny" (embedded asset), "random" (random-init TEACHER_CONFIG, dev only) or a diffusers folder
    )
    model_config: dict[str, Any] | None = None  # only with teacher="random": overrides TEACHER_CONFIG (tests)
    # The representative testbed: the teacher's attention V/O pairs carry a function-preserving
    # spread of output-channel ranges (qvgen_tinyworld.channel_spread, default ChannelSpread), so
    # W - Qw(W) has the steep spectrum of real DiT layers. The float teacher (distillation target)
    # is the reparametrised one too: same function, weights that correspond to the student's.
    channel_spread: bool = False
    data: str = "tiny"  # "tiny" (procedural generator) or a latent-cache folder (cache.py)
    video_frames: int = 8  # tiny data only: clip geometry (must match the teacher's training geometry)
    video_height: int = 32
    video_width: int = 32
    num_train_timesteps: int = 1000
    # Run management
    out_dir: str = "artifacts/qat/run"
    save_every: int = 50  # training-state checkpoint every N steps (and at the end)
    keep_states: int = 2
    log_every: int = 1
    threads: int = 0  # torch intra-op threads (0: leave torch's default)
    strategy: str = "ddp"  # under torchrun: "ddp" or "fsdp" (FSDP2 fully_shard)
    progress: bool = True
    stop_after: int | None = None  # stop (as if killed) after this many steps of this run; tests use it

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", Method(self.method))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "distill_weights", tuple(float(w) for w in self.distill_weights))
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        from qvgen_export.quant.config import QuantConfig

        QuantConfig.preset(self.scheme)  # raises ValueError naming the scheme
        for name in ("steps", "batch_size", "phi_rank", "lora_rank", "save_every", "keep_states", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "lr_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip}")
        if not 0.0 <= self.lr_min_frac <= 1.0:
            raise ValueError(f"lr_min_frac must be in [0, 1], got {self.lr_min_frac}")
        if len(self.distill_weights) != 3 or not all(w >= 0 for w in self.distill_weights):
            raise ValueError(f"distill_weights must be three non-negative numbers, got {self.distill_weights}")
        if not any(w > 0 for w in self.distill_weights):
            raise ValueError("distill_weights must not all be zero")
        if not self.distill_guidance > 0:
            raise ValueError(f"distill_guidance must be positive, got {self.distill_guidance}")
        if self.phi_rank_frac is not None and not 0.0 < self.phi_rank_frac <= 1.0:
            raise ValueError(f"phi_rank_frac must be in (0, 1], got {self.phi_rank_frac}")
        if self.lora_lr_step_factor is not None and not self.lora_lr_step_factor > 0:
            raise ValueError(f"lora_lr_step_factor must be positive, got {self.lora_lr_step_factor}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0.0 < self.decay_lambda <= 1.0:
            raise ValueError(f"decay_lambda must be in (0, 1], got {self.decay_lambda}")
        if not 0.0 <= self.final_phase_frac < 1.0:
            raise ValueError(f"final_phase_frac must be in [0, 1), got {self.final_phase_frac}")
        if self.method is Method.QVGEN:
            self.rank_decay()  # raises ValueError when the steps cannot hold every stage
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")
        if self.model_config is not None and self.teacher != "random":
            raise ValueError("model_config is only meaningful with teacher='random'")
        if self.stop_after is not None and (not isinstance(self.stop_after, int) or self.stop_after < 0):
            raise ValueError(f"stop_after must be a non-negative integer, got {self.stop_after!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")

    def rank_decay(self) -> Any:
        from .rank_decay import RankDecaySchedule

        return RankDecaySchedule(self.steps, self.phi_rank, self.decay_lambda, self.final_phase_frac)

    def layer_phi_rank(self, out_features: int, in_features: int) -> int:
        """Phi's initial rank for a layer: ``phi_rank``, or ``phi_rank_frac`` of its width (>= 1)."""
        width = min(out_features, in_features)
        if self.phi_rank_frac is None:
            return self.phi_rank  # as before: r0 columns even where the layer is narrower (zeros)
        return max(1, min(width, round(self.phi_rank_frac * width)))

    @property
    def uses_tiny_data(self) -> bool:
        return self.data == "tiny"

    def quant_config(self) -> Any:
        """The QuantConfig of this run: LSQ's activation clip is one row for all timesteps."""
        from qvgen_export.quant.config import QuantConfig

        # Only LSQ departs from the quant config's timestep groups (it owns the number).
        lsq = {"timestep_groups": 1} if self.method is Method.LSQ else {}
        return QuantConfig.preset(
            self.scheme,
            num_train_timesteps=self.num_train_timesteps,
            include=self.include,
            exclude=self.exclude,
            **lsq,
        )

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method"] = self.method.value
        d["betas"] = list(self.betas)
        d["distill_weights"] = list(self.distill_weights)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        d = dict(d)
        if "method" in d:
            try:
                d["method"] = Method(d["method"])
            except ValueError:
                raise ValueError(
                    f"unknown method {d['method']!r}; expected one of {[m.value for m in Method]}"
                ) from None
        for key in ("betas", "distill_weights"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read ``path`` (keys at top level or under ``[train]``), then apply ``overrides``."""
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: config file not found")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p}: not valid TOML ({e})") from None
        if "train" in data and isinstance(data["train"], dict):
            data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
        data.update(overrides)
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
