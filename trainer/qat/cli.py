"""``qvgen-train``: QAT from a TOML config and/or flags (flags override the file).

examples:
  qvgen-train --config cfg.toml
  qvgen-train --method qvgen --scheme w3a3 --steps 300 --out-dir artifacts/qat/w3a3
  qvgen-train --teacher Wan2.1-T2V-1.3B-Diffusers --data cache/ --exclude 'condition_embedder.*'
  qvgen-train --print-config --method lsq          # the resolved settings, nothing trained
  torchrun --nproc_per_node 2 -m qvgen_trainer.qat.cli --config cfg.toml   # (trainer.qat.cli in a checkout)

Re-running the same command on an existing ``--out-dir`` resumes from its last training state.
Bad input prints one ``qvgen-train: error:`` line and exits with status 2; an internal error exits
with 4 (traceback with ``--debug`` or ``QVGEN_DEBUG=1``); see ``qvgen_export.cli.common``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from .config import Method, TrainConfig

# One line per TrainConfig field; the default shown is the dataclass's (flags default to None so
# that a TOML file's value is only overridden by a flag actually given).
HELP: dict[str, str] = {
    "method": "qvgen (distillation + Phi + rank decay), qvgen_keep_phi (ablation), lsq, qdm, efficientdm",
    "scheme": "quantization scheme: w4a4, w3a3, ... (any wXaY)",
    "steps": "training steps",
    "batch_size": "global batch, split evenly among distributed ranks",
    "seed": "seed of init, data and noise",
    "lr": "learning rate of weights, scales, Phi, LoRA",
    "lr_clip": "learning rate of the activation clip logits",
    "weight_decay": "AdamW weight decay",
    "warmup_frac": "share of steps in linear warmup",
    "grad_clip": "gradient norm clip",
    "caption_dropout": "share of captions dropped (CFG training)",
    "lr_min_frac": "cosine decay ends at this fraction of the learning rate (0: decays to 0)",
    "distill_guidance": "CFG scale of the guided-output distillation term",
    "phi_rank_frac": "Phi rank as a fraction of each layer's width (unset: phi_rank for every layer)",
    "lora_lr_step_factor": "efficientdm: LoRA lr = this x the layer's mean weight quantization step",
    "phi_rank": "rank r0 of the Phi correction (QVGen)",
    "decay_lambda": "share of Phi's columns decayed per rank-decay stage",
    "final_phase_frac": "share of steps trained with Phi already removed",
    "lora_rank": "LoRA rank (efficientdm)",
    "teacher": "'tiny' (embedded asset), 'random' (dev only) or a local diffusers Wan folder",
    "channel_spread": "teacher with the function-preserving V/O channel-range spread (representative testbed)",
    "data": "'tiny' (procedural clips) or a latent-cache folder (python -m qvgen_trainer.qat.cache)",
    "video_frames": "tiny data: clip frames",
    "video_height": "tiny data: clip height",
    "video_width": "tiny data: clip width",
    "num_train_timesteps": "diffusion timesteps of the schedule",
    "out_dir": "run folder: training states, the final checkpoint; resumed if it holds states",
    "save_every": "training-state checkpoint every N steps (and at the end)",
    "keep_states": "training states kept",
    "log_every": "log every N steps",
    "threads": "torch intra-op threads (0: torch's default)",
    "strategy": "under torchrun: ddp or fsdp",
    "progress": "progress bar (--quiet is the same as --no-progress)",
    "stop_after": "stop as if killed after N steps of this run (tests)",
}


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is dataclasses.MISSING:
        return ""
    v = f.default.value if isinstance(f.default, Method) else f.default
    return "" if v is None else f" (default: {v})"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="qvgen-train",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", metavar="TOML", help="TOML file with TrainConfig keys (top level or under [train])")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name, f in fields.items():
        if name in ("model_config", "betas", "include", "exclude", "distill_weights"):
            continue
        flag = "--" + name.replace("_", "-")
        text = HELP.get(name, name.replace("_", " ")) + _default(f)
        if f.type in ("bool",) or isinstance(f.default, bool):
            ap.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif name == "method":
            ap.add_argument(flag, dest=name, choices=[m.value for m in Method], default=None, help=text)
        else:
            kind: Any = str
            if isinstance(f.default, int) or name == "stop_after":
                kind = int
            elif isinstance(f.default, float) or name == "phi_rank_frac":
                kind = float
            ap.add_argument(flag, dest=name, type=kind, default=None, metavar=name.upper(), help=text)
    # --quiet: the flag every qvgen command has for "no progress bars"
    ap.add_argument("--quiet", dest="progress", action="store_false", default=None, help="no progress bar")
    ap.add_argument(
        "--betas", type=float, nargs=2, default=None, metavar=("B1", "B2"), help="AdamW betas (default: 0.9 0.95)"
    )
    ap.add_argument(
        "--distill-weights",
        type=float,
        nargs=3,
        default=None,
        metavar=("COND", "UNCOND", "GUIDED"),
        help="distillation weights of the conditional, unconditional and CFG-guided outputs (default: 1 0 0)",
    )
    ap.add_argument("--include", nargs="+", default=None, metavar="PATTERN", help="quantize these linears (fnmatch)")
    ap.add_argument("--exclude", nargs="+", default=None, metavar="PATTERN", help="keep these linears in float")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return ap


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "print_config")}
    if args.config:
        return TrainConfig.from_toml(args.config, **overrides), args
    return TrainConfig.from_dict(overrides), args


def main(argv: list[str] | None = None) -> int:
    from qvgen_export.cli.common import run_guarded

    return run_guarded("qvgen-train", _main, argv)


def _main(argv: list[str]) -> int:
    from qvgen_export.utils.atomic import check_writable_folder

    try:
        cfg, args = config_from_args(argv)
    except TypeError as e:  # a TOML value of the wrong type is bad input, not a bug
        raise ValueError(str(e)) from None
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    # Before the teacher is loaded or a step runs: a run that cannot save is refused now.
    check_writable_folder(cfg.out_dir)
    from .loop import train

    result = train(cfg)
    import os

    if result.history and os.environ.get("RANK", "0") == "0":
        last = result.history[-1]
        where = result.checkpoint or f"{cfg.out_dir}/states (keep-Phi model: PyTorch only)"
        if result.completed:
            print(f"done: {cfg.method.value} {cfg.scheme}, step {last['step'] + 1}, loss {last['loss']:.5g} -> {where}")
        else:
            print(f"stopped at step {last['step'] + 1} (resume by running the same command)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
