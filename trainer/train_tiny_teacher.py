"""Train the tiny text-to-video teacher (Wan architecture, pixel space, flow matching).

    python -m trainer.train_tiny_teacher --out artifacts/teacher/tiny_teacher.safetensors --steps 2400 --seed 0

Objective (as Wan): ``x_sigma = (1 - sigma) * x0 + sigma * eps``, ``t = 1000 * sigma``, the model
predicts the velocity ``eps - x0``; MSE. ``sigma`` is logit-normal(0, 1) on the 1000-point grid
by default (``--timestep-sampling uniform`` for the plain grid); sampling uses shift 3.
10% of prompts are dropped to the empty prompt so that classifier-free guidance works.
The saved weights are an exponential moving average (EMA) of the trained ones, which gives
cleaner samples after a short run. Reproducible from ``--seed`` (data, noise and init).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qvgen_export.models.wan import build_wan
from qvgen_tinyworld.dataset import TinyVideoDataset, VideoConfig, tensor_to_frames
from qvgen_tinyworld.teacher import (
    DEFAULT_SAMPLING,
    POSITION_CHANNELS,
    TEACHER_CONFIG,
    latent_shape,
    save_teacher,
    teacher_denoiser,
    with_condition,
)
from qvgen_tinyworld.text_encoder import TextEncoderConfig, TinyTextEncoder

PREVIEW_PROMPTS = [
    "a red circle moving left",
    "a green square moving right",
    "a blue triangle moving up",
    "a yellow circle moving down",
    "a white square moving left",
    "a red triangle moving right and a blue circle moving up",
]


def lr_at(step: int, total: int, base: float, warmup: int, final_frac: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to ``final_frac * base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def sample_sigma(
    b: int, gen: torch.Generator, kind: str = "logit_normal", num_train_timesteps: int = 1000
) -> torch.Tensor:
    """Noise levels ``[b]`` on the grid ``1/T .. 1``: uniform, or logit-normal(0, 1) (SD3), which
    puts most samples at mid noise, where a clip's layout and motion are decided."""
    if kind == "uniform":
        k = torch.randint(1, num_train_timesteps + 1, (b,), generator=gen)
    elif kind == "shift3":
        # Uniform, then Wan's sampling shift 3: the training density matches where the sampler's
        # steps are (a third of them above sigma 0.9).
        u = (torch.randint(1, num_train_timesteps + 1, (b,), generator=gen).float()) / num_train_timesteps
        k = torch.clamp(torch.round(3 * u / (1 + 2 * u) * num_train_timesteps), 1, num_train_timesteps).long()
    elif kind == "logit_normal":
        u = torch.sigmoid(torch.randn(b, generator=gen))
        k = torch.clamp(torch.round(u * num_train_timesteps), 1, num_train_timesteps).long()
    else:
        raise ValueError(f"unknown timestep sampling {kind!r}; expected 'uniform', 'shift3' or 'logit_normal'")
    return k.float() / num_train_timesteps


# Where a clip's shapes and motion are decided: the default noise levels of --layout-frac samples.
LAYOUT_RANGE = (0.7, 0.98)


def flow_matching_batch(
    x0: torch.Tensor,
    gen: torch.Generator,
    kind: str = "logit_normal",
    num_train_timesteps: int = 1000,
    layout_frac: float = 0.0,
    layout_range: tuple[float, float] = LAYOUT_RANGE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_sigma, t, target)`` for clean videos ``x0 [B, C, F, H, W]``.

    ``layout_frac`` of the samples (drawn from ``gen``) instead take sigma uniform in
    ``layout_range``: the noise levels where a clip's shapes and motion are decided (see
    docs/tiny-teacher.md, "generation, not recognition")."""
    b = x0.shape[0]
    sigma = sample_sigma(b, gen, kind, num_train_timesteps)
    if layout_frac > 0:
        lo, hi = layout_range
        pick = torch.rand(b, generator=gen) < layout_frac
        k = torch.round((lo + (hi - lo) * torch.rand(b, generator=gen)) * num_train_timesteps)
        sigma = torch.where(pick, k / num_train_timesteps, sigma)
    eps = torch.randn(x0.shape, generator=gen)
    s = sigma.view(b, 1, 1, 1, 1)
    return (1 - s) * x0 + s * eps, sigma * num_train_timesteps, eps - x0


def object_weighted_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight: float) -> torch.Tensor:
    """MSE with pixels weighted ``1 + weight * coverage`` (``mask [B, 1, F, H, W]``), normalised by
    the mean weight so that the loss keeps the plain MSE's scale. Objects are ~15% of the pixels:
    with plain MSE the background dominates, and a square with rounded corners costs little."""
    if weight <= 0:
        return torch.nn.functional.mse_loss(pred, target)
    w = 1.0 + weight * mask
    return ((pred - target) ** 2 * w).mean() / w.mean()


# Arguments a resumed run must share with the run that wrote the state: they shape the schedule,
# the data order and the objective. (--threads, --compile, --save-every may change.)
RESUME_KEYS = (
    "steps", "seed", "batch_size", "lr", "warmup", "ema", "timestep_sampling",
    "caption_dropout", "object_weight", "layout_frac", "layout_range", "init", "positions",
)  # fmt: skip


RESUME_DEFAULTS = {"positions": False, "layout_range": list(LAYOUT_RANGE)}


def _sigma_range(text: str) -> list[float]:
    """``"LO,HI"`` with 0 < LO <= HI <= 1 (a list, so that it compares equal after a JSON round trip)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}") from None
    if not 0.0 < lo <= hi <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI <= 1, got {text!r}")
    return [lo, hi]


def state_path(out: Path) -> Path:
    """The run folder beside ``out`` whose ``states/`` hold the resumable training states."""
    return out.with_name(out.stem + ".run")


def _trained(model: torch.nn.Module, ema: torch.nn.Module) -> torch.nn.Module:
    # One module over both, so the QAT trainer's state format (trainer.qat.state: hashed
    # safetensors + JSON, written atomically, parameters and AdamW moments by name) holds them.
    return torch.nn.ModuleDict({"model": model, "ema": ema})


def save_state(
    run_dir: Path, step: int, model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
    gens: dict[str, torch.Generator], loss_avg: float | None, args: dict, elapsed: float,
) -> None:  # fmt: skip
    """Everything a resumed run needs, in the QAT trainer's state format (the newest 2 kept)."""
    from trainer.qat.state import save_state as save_qat_state

    info = {
        "config": args,
        "generators": {name: g.get_state().tolist() for name, g in gens.items()},
        "loss_avg": loss_avg,
        "elapsed": elapsed,
    }
    save_qat_state(run_dir, step, _trained(model, ema), opt, info, keep=2)


def load_state(
    run_dir: Path, model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
    gens: dict[str, torch.Generator], args: dict,
) -> tuple[int, float | None, float] | None:  # fmt: skip
    """Restore the newest state of ``run_dir`` (None: there is none); returns ``(step, loss_avg,
    elapsed)``. Raises ``ValueError`` naming the first argument that differs from the run that
    wrote it, or what is wrong with the state."""
    from trainer.qat.state import latest_state, read_state
    from trainer.qat.state import load_state as load_qat_state

    path = latest_state(run_dir)
    if path is None:
        return None
    meta, tensors = read_state(path)
    saved = meta.get("config", {})
    for k in RESUME_KEYS:
        # A key the writing run did not know had its flag's default then (e.g. positions: off).
        if saved.get(k, RESUME_DEFAULTS.get(k)) != args.get(k):
            raise ValueError(f"{path}: written by a run with --{k.replace('_', '-')} {saved.get(k)}, not {args.get(k)}")
    load_qat_state(_trained(model, ema), opt, meta, tensors)
    for name, g in gens.items():
        g.set_state(torch.tensor(meta["generators"][name], dtype=torch.uint8))
    return int(meta["next_step"]), meta.get("loss_avg"), float(meta.get("elapsed", 0.0))


def widened_state(init: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``init``'s weights for a model whose patch embedding takes more input channels: the extra
    channels' weights are zero, so the widened model computes exactly what ``init`` did."""
    out = dict(init)
    k = "patch_embedding.weight"
    w, want = init[k], target[k]
    if w.shape != want.shape:
        if w.shape[0] != want.shape[0] or w.shape[2:] != want.shape[2:] or w.shape[1] > want.shape[1]:
            raise ValueError(f"{k} {tuple(w.shape)} cannot widen to {tuple(want.shape)}")
        out[k] = torch.cat([w, w.new_zeros(w.shape[0], want.shape[1] - w.shape[1], *w.shape[2:])], dim=1)
    return out


def preview(model: torch.nn.Module, te: TinyTextEncoder, info: dict, out_png: Path, seed: int = 0) -> None:
    from qvgen_export.runtime.sampler import sample_video
    from qvgen_export.runtime.video import contact_sheet

    s = info["sampling"]
    lat = sample_video(
        teacher_denoiser(model, info),
        te.encode(PREVIEW_PROMPTS),
        te.encode([""] * len(PREVIEW_PROMPTS)),
        latent_shape=latent_shape(info),
        num_steps=s["num_steps"],
        guidance_scale=s["guidance_scale"],
        scheduler=s["scheduler"],
        shift=s["shift"],
        seed=seed,
        progress=False,
    )
    contact_sheet(tensor_to_frames(lat), out_png, scale=3, labels=PREVIEW_PROMPTS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.train_tiny_teacher", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output .safetensors path (a .json mirror is written beside it)")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--timestep-sampling", choices=["logit_normal", "uniform", "shift3"], default="shift3")
    ap.add_argument(
        "--stop-after", type=int, default=0, help="end (and save) after N steps; the LR schedule still spans --steps"
    )
    ap.add_argument("--init", default=None, help="start from the weights of a tiny-teacher file (fine-tuning)")
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument(
        "--object-weight", type=float, default=0.0,
        help="weight object pixels 1 + W in the loss (0: plain MSE); helps shapes render",
    )  # fmt: skip
    ap.add_argument(
        "--layout-frac", type=float, default=0.0,
        help="share of samples with sigma uniform in --layout-range, where shape and motion are decided",
    )  # fmt: skip
    ap.add_argument(
        "--layout-range", type=_sigma_range, default=list(LAYOUT_RANGE), metavar="LO,HI",
        help=f"the noise levels of the --layout-frac samples (default {LAYOUT_RANGE[0]},{LAYOUT_RANGE[1]})",
    )  # fmt: skip
    ap.add_argument(
        "--positions", action="store_true",
        help="3 extra input channels with each pixel's frame, column and row (the teacher's 'positions' "
        "condition); with --init from a plain teacher, their patch-embedding weights start at zero",
    )  # fmt: skip
    ap.add_argument(
        "--resume", action="store_true",
        help="continue from the newest state in OUT's .run folder (written every --save-every steps) if any",
    )  # fmt: skip
    ap.add_argument("--save-every", type=int, default=200, help="write the EMA weights every N steps")
    ap.add_argument("--preview-every", type=int, default=0, help="write a preview contact sheet every N steps (0: end)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument(
        "--compile", action="store_true", help="torch.compile the training forward (~15%% faster steps on CPU)"
    )
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        print("error: --steps and --batch-size must be positive", file=sys.stderr)
        return 2
    if not 0.0 <= args.layout_frac <= 1.0 or args.object_weight < 0:
        print("error: --layout-frac must be in [0, 1] and --object-weight >= 0", file=sys.stderr)
        return 2
    if not 0.0 <= args.caption_dropout < 1.0:
        print(f"error: --caption-dropout must be in [0, 1), got {args.caption_dropout}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log.jsonl")
    video_cfg = VideoConfig()
    te = TinyTextEncoder(TextEncoderConfig(dim=TEACHER_CONFIG["text_dim"]))
    data = TinyVideoDataset(seed=args.seed, config=video_cfg)
    torch.manual_seed(args.seed)
    condition = "positions" if args.positions else None
    config = dict(TEACHER_CONFIG, in_channels=TEACHER_CONFIG["out_channels"] + (POSITION_CHANNELS if condition else 0))
    model = build_wan(config, seed=args.seed).train()
    init_info: dict = {}
    if args.init:
        from qvgen_tinyworld.teacher import load_teacher

        init_model, _, init_info = load_teacher(args.init)
        try:
            model.load_state_dict(widened_state(init_model.state_dict(), model.state_dict()))
        except (RuntimeError, ValueError) as e:
            print(f"error: {args.init}: does not fit this teacher ({e})", file=sys.stderr)
            return 2
        print(f"initialised from {args.init} ({init_info['training'].get('steps')} steps)")
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if args.compile:
        # Compile the bound forward only: parameter names (and so the saved state dict) are unchanged.
        model.forward = torch.compile(model.forward)  # type: ignore[method-assign]
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    gen = torch.Generator("cpu").manual_seed(args.seed + 1)
    drop_gen = torch.Generator("cpu").manual_seed(args.seed + 2)
    tokens = (video_cfg.frames // TEACHER_CONFIG["patch_size"][0]) * (video_cfg.height // 4) * (video_cfg.width // 4)
    print(f"tiny teacher: {n_params:,} parameters, {tokens} tokens/clip, {args.steps} steps x batch {args.batch_size}")

    t_start = time.time()
    loss_avg = None
    first_step = 0
    gens = {"noise": gen, "dropout": drop_gen}
    run_args = {k: getattr(args, k) for k in RESUME_KEYS}
    spath = state_path(out)
    if args.resume:
        try:
            resumed = load_state(spath, model, ema, opt, gens, run_args)
        except ValueError as e:  # StateError is one
            print(f"error: {e}", file=sys.stderr)
            return 2
        if resumed is not None:
            first_step, loss_avg, elapsed = resumed
            t_start -= elapsed
            print(f"resumed from {spath} at step {first_step}")
    # A resumed run appends to the log; lines past the state's step (written after the last
    # save) are dropped by the reader, since the same steps are logged again.
    log = log_path.open("a" if first_step else "w")

    def save(step: int) -> dict:
        training = {
            "steps": step,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "ema": args.ema,
            "caption_dropout": args.caption_dropout,
            "objective": "flow_matching_velocity"
            + (f", object pixels weighted 1 + {args.object_weight}" if args.object_weight else ""),
            "layout_frac": args.layout_frac,
            "layout_range": args.layout_range,
            "timestep_sampling": args.timestep_sampling + " sigma on the 1000-point grid",
            "final_loss_ema": loss_avg,
            "wall_seconds": round(time.time() - t_start, 1),
            "parameters": n_params,
            "init": init_info.get("training"),
            "command": "python -m trainer.train_tiny_teacher " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
        return save_teacher(out, ema, te, video_cfg, DEFAULT_SAMPLING, training, condition=condition)

    bar = tqdm(range(first_step, args.steps), desc="teacher", dynamic_ncols=True, initial=first_step, total=args.steps)
    for step in bar:
        idx = range(step * args.batch_size, (step + 1) * args.batch_size)
        x0, prompts, mask = data.batch_with_masks(idx)
        drop = torch.rand(len(prompts), generator=drop_gen) < args.caption_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        cond = te.encode(prompts)
        xt, t, target = flow_matching_batch(
            x0, gen, args.timestep_sampling, layout_frac=args.layout_frac, layout_range=tuple(args.layout_range)
        )
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        pred = model(with_condition(xt, condition), t, cond, return_dict=False)[0]
        loss = object_weighted_mse(pred, target, mask, args.object_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # EMA with a short warm-up so early checkpoints are not dominated by the random init.
        d = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        lv = float(loss.detach())
        loss_avg = lv if loss_avg is None else 0.98 * loss_avg + 0.02 * lv
        bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        log.write(
            json.dumps(
                {"step": step, "loss": lv, "loss_ema": loss_avg, "grad_norm": float(gnorm), "t": time.time() - t_start}
            )
            + "\n"
        )
        log.flush()
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            info = save(step + 1)
            save_state(spath, step + 1, model, ema, opt, gens, loss_avg, run_args, time.time() - t_start)
        if args.stop_after and step + 1 >= args.stop_after:
            args.steps = step + 1
            break
        if args.preview_every and (step + 1) % args.preview_every == 0:
            preview(
                ema,
                te,
                info if (step + 1) % args.save_every == 0 else save(step + 1),
                out.with_name(f"{out.stem}_preview_{step + 1}.png"),
            )
    log.close()
    info = save(args.steps)
    preview(ema, te, info, out.with_name(f"{out.stem}_preview.png"))
    print(f"saved {out} (loss_ema={loss_avg:.4f}, {time.time() - t_start:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
