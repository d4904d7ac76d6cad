"""The one QAT loop every method shares (QVGen, its keep-Phi ablation, LSQ, Q-DM, EfficientDM).

Per step: apply the rank-decay schedule (re-SVD at a stage boundary, Phi deletion at the end of
the last stage, gamma), set the learning rates (cosine with linear warm-up), draw this rank's slice
of the deterministic global batch, compute the loss (distillation or flow matching), backward,
clip the gradient norm, AdamW step, log, and every ``save_every`` steps write a training state
from which a killed run resumes bit-exactly.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from qvgen_export.quant.modules import QuantizedWan

from . import distributed as D
from .config import TrainConfig
from .data import BatchMaker, CacheSource, TinySource
from .methods import SPECS, Student, build_student, lora_lr_groups, merge_loras, param_group_of
from .objectives import distillation_loss, flow_matching_loss
from .phi import small_singular_share
from .state import latest_state, load_state, read_state, save_state, seed_rngs


@dataclasses.dataclass
class TrainResult:
    student: Student  # unwrapped; student.qmodel is the trained QuantizedWan
    teacher: nn.Module
    text_encoder: Any
    checkpoint: Path | None  # the Phi-free checkpoint (None for keep-Phi or an interrupted run)
    history: list[dict[str, Any]]  # per-step metrics of this process's run (resumed part only)
    events: list[dict[str, Any]]  # Phi init / re-SVD / deletion records
    completed: bool
    mean_step_time: float

    @property
    def qmodel(self) -> QuantizedWan:
        return self.student.qmodel


def lr_factor(step: int, total: int, warmup_frac: float, min_frac: float = 0.0) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to ``min_frac``."""
    warm = round(total * warmup_frac)
    if step < warm:
        return (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return min_frac + (1.0 - min_frac) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))


def load_teacher_model(cfg: TrainConfig) -> tuple[nn.Module, Any]:
    """``(float teacher, text encoder or None)`` as ``cfg.teacher`` names it (with its channel
    spread when ``cfg.channel_spread``)."""
    from qvgen_tinyworld.text_encoder import TextEncoderConfig, TinyTextEncoder

    te: Any = None
    if cfg.teacher == "tiny":
        from qvgen_tinyworld.teacher import load_teacher

        model, te, _info = load_teacher()
    elif cfg.teacher == "random":
        from qvgen_export.models.wan import build_wan
        from qvgen_tinyworld.teacher import TEACHER_CONFIG

        conf = dict(cfg.model_config or TEACHER_CONFIG)
        model, te = build_wan(conf, seed=0), TinyTextEncoder(TextEncoderConfig(dim=int(conf["text_dim"])))
    else:
        from qvgen_export.models.wan import load_diffusers_transformer

        model = load_diffusers_transformer(cfg.teacher)
    return spread_teacher(model, cfg), te


def spread_teacher(teacher: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``teacher`` as ``cfg.channel_spread`` wants it: a spread copy if it has no spread yet.

    Raises ``ValueError`` for a teacher that carries a spread the config does not ask for (the
    run's record would not say that its student was quantized from a reparametrised model).
    """
    from qvgen_tinyworld.channel_spread import apply_channel_spread, channel_spread_of

    has = channel_spread_of(teacher) is not None
    if has and not cfg.channel_spread:
        raise ValueError("the teacher carries a channel spread but channel_spread is off")
    if cfg.channel_spread and not has:
        import copy

        teacher = copy.deepcopy(teacher)
        apply_channel_spread(teacher)
    return teacher


def make_optimizer(student: Student, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with three groups: ``main`` (W, L, R, LoRA, other params; lr, weight decay),
    ``qparams`` (s, z; lr, no decay: decay would shrink the quantization ranges) and ``clip``
    (activation clip logits; lr_clip, no decay)."""
    groups: dict[str, list[nn.Parameter]] = {"main": [], "qparams": [], "clip": []}
    lora = lora_lr_groups(student, cfg.lora_lr_step_factor) if cfg.lora_lr_step_factor is not None else []
    in_lora = {id(p) for _, ps, _ in lora for p in ps}
    for name, p in student.named_parameters():
        if p.requires_grad and id(p) not in in_lora:
            groups[param_group_of(name)].append(p)
    spec = {
        "main": (cfg.lr, cfg.weight_decay),
        "qparams": (cfg.lr, 0.0),
        "clip": (cfg.lr_clip, 0.0),
    }
    param_groups = [
        {"params": ps, "lr": spec[g][0], "weight_decay": spec[g][1], "base_lr": spec[g][0], "name": g}
        for g, ps in groups.items()
        if ps
    ]
    # EfficientDM: one group per layer, lr = factor x the layer's mean weight step (official recipe).
    param_groups += [
        {"params": ps, "lr": lr, "weight_decay": cfg.weight_decay, "base_lr": lr, "name": f"lora:{n}"}
        for n, ps, lr in lora
    ]
    # foreach=False: the single-tensor path gives identical results however the groups are split.
    return torch.optim.AdamW(param_groups, betas=cfg.betas, eps=1e-8, foreach=False)


def _drop_params(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    ids = {id(p) for p in params}
    for g in optimizer.param_groups:
        g["params"] = [p for p in g["params"] if id(p) not in ids]
    for p in params:
        optimizer.state.pop(p, None)


def _truncate_log(path: Path, start: int) -> None:
    """On resume, drop log lines of steps that will be run again."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) < start:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
    path.write_text("".join(x + "\n" for x in keep))


# Keys whose default changed after they were added: a saved run without the key trained this way.
_BEFORE_KEY_EXISTED: dict[str, Any] = {"lr_min_frac": 0.0}

# Settings that may change between a run and its resumption (they do not change the result).
_RUN_MANAGEMENT = {"out_dir", "save_every", "keep_states", "log_every", "threads", "progress", "stop_after"}


def _check_resumable(path: Path, saved: dict[str, Any], cfg: TrainConfig) -> None:
    now = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as the saved JSON has them
    # A key the saved run does not have (added to TrainConfig later) had its default value then,
    # or, where the default changed since, the value it had before the key existed.
    defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    saved = {**defaults, **_BEFORE_KEY_EXISTED, **saved}
    diff = sorted(k for k in now if k not in _RUN_MANAGEMENT and saved.get(k) != now[k])
    if diff:
        k = diff[0]
        raise ValueError(
            f"{path}: the saved run has {k}={saved.get(k)!r} but this config has {k}={now[k]!r}; "
            "use a fresh out_dir or the original settings"
        )


def _grad_norm(params: list[nn.Parameter]) -> float:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _plain_qmodel(student: Student, teacher: nn.Module, cfg: TrainConfig) -> QuantizedWan:
    """A whole-tensor copy of the trained model for saving (FSDP2 shards are gathered)."""
    from qvgen_export.models.wan import build_wan, model_config_dict

    if not any(hasattr(p, "full_tensor") for p in student.parameters()):
        return student.qmodel
    sd = {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for k, v in student.qmodel.state_dict().items()
    }
    plain = QuantizedWan.from_float(build_wan(model_config_dict(teacher), seed=None), cfg.quant_config(), init=False)
    plain.load_state_dict(sd)
    return plain


def train(
    cfg: TrainConfig,
    teacher: nn.Module | None = None,
    text_encoder: Any = None,
    env: D.DistEnv | None = None,
    condition: str | None = None,
) -> TrainResult:
    """Run (or resume) the QAT run that ``cfg`` describes.

    Args:
        teacher, text_encoder: an already-loaded float teacher (it is not modified) and its text
            encoder; loaded from ``cfg.teacher`` when None. With ``cfg.channel_spread`` a teacher
            without a spread is spread on a copy (``TrainResult.teacher`` is that copy).
        env: the distributed environment; from torchrun's variables when None.
        condition: a passed-in tiny teacher's condition (its file's ``condition``, e.g.
            "positions"); with ``cfg.teacher == "tiny"`` it is read from the embedded asset.

    Returns:
        A :class:`TrainResult`. The Phi-free checkpoint is ``<out_dir>/model.safetensors``.
    """
    env = env or D.init_distributed()
    # Every global generator from the seed, not from the interpreter's start-up entropy: a resumed
    # run's restored generators then equal an uninterrupted run's (bit-exact training state).
    seed_rngs(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = teacher is None
    if teacher is None:
        teacher, loaded_te = load_teacher_model(cfg)
        text_encoder = text_encoder if text_encoder is not None else loaded_te
    else:
        teacher = spread_teacher(teacher, cfg)
    spec = SPECS[cfg.method]
    qcfg = cfg.quant_config()
    sched = cfg.rank_decay() if spec.rank_decay else None

    if cfg.uses_tiny_data:
        world = None
        if cfg.teacher == "tiny":  # the clips come from the world the teacher records
            from qvgen_tinyworld.dataset import VideoConfig
            from qvgen_tinyworld.teacher import ASSET_PATH, read_teacher_info

            asset = read_teacher_info(ASSET_PATH)
            world = VideoConfig.from_dict(asset["video"])
            if condition is None and loaded:
                condition = asset.get("condition")
        source: Any = TinySource(
            cfg.seed, cfg.video_frames, cfg.video_height, cfg.video_width, text_encoder, world=world
        )
    else:
        source = CacheSource(cfg.data, cfg.seed)
    maker = BatchMaker(source, cfg.seed, cfg.batch_size, cfg.caption_dropout, cfg.num_train_timesteps, condition)
    maker.indices(0, env.rank, env.world_size)  # validates batch divisibility before any work

    state_path = latest_state(out)
    start, meta, tensors = 0, None, None
    if state_path is not None:
        meta, tensors = read_state(state_path)
        start = int(meta["next_step"])
        _check_resumable(state_path, meta.get("config", {}), cfg)
    # Phi exists from step 0 until it is deleted at the start of step phi_end.
    has_phi = spec.phi and (sched is None or start <= sched.phi_end)
    phi_rank = (lambda layer: cfg.layer_phi_rank(layer.out_features, layer.in_features)) if has_phi else 0
    student, spectra = build_student(teacher, cfg.method, qcfg, phi_rank, cfg.lora_rank, cfg.seed + 1)
    student.to(env.device)
    teacher = teacher.to(env.device).eval().requires_grad_(False)
    # Wrap before building the optimizer: FSDP2 replaces the parameters by sharded DTensors.
    model = D.wrap(student, env, cfg.strategy)
    optimizer = make_optimizer(student, cfg)
    if meta is not None and tensors is not None:
        load_state(student, optimizer, meta, tensors)
        del tensors
    teacher_run = D.wrap_teacher(teacher, env, cfg.strategy) if spec.teacher else teacher

    log_path = out / "metrics.jsonl"
    events: list[dict[str, Any]] = []
    if env.is_main:
        _truncate_log(log_path, start)
    log = log_path.open("a") if env.is_main else None

    def emit(rec: dict[str, Any]) -> None:
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    if start == 0 and cfg.channel_spread:
        from qvgen_tinyworld.channel_spread import channel_spread_of

        ev = {"event": "channel_spread", "step": 0, **(channel_spread_of(teacher) or {})}
        events.append(ev)
        emit(ev)
    if start == 0 and spectra:
        shares = [small_singular_share(s[: cfg.phi_rank]) for s in spectra.values()]
        ev = {"event": "phi_init", "step": 0, "rank": cfg.phi_rank, "small_sv_share": sum(shares) / len(shares)}
        events.append(ev)
        emit(ev)

    history: list[dict[str, Any]] = []
    step_times: list[float] = []
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc=f"{cfg.method.value} {cfg.scheme}",
        disable=not (cfg.progress and env.is_main),
        dynamic_ncols=True,
    )
    completed = True
    for step in bar:
        if cfg.stop_after is not None and step - start >= cfg.stop_after:
            completed = False  # behaves like a kill: no extra state, no output checkpoint
            break
        t0 = time.perf_counter()
        # -- rank-decay schedule --------------------------------------------------------------
        if sched is not None:
            if step == sched.phi_end and len(student.phis):
                phi_params = list(student.phis.parameters())
                student.delete_phis()
                _drop_params(optimizer, phi_params)
                model = None  # drop the old DDP reducer (and its hooks) before re-wrapping
                gc.collect()
                model = D.wrap(student, env, cfg.strategy) if cfg.strategy == "ddp" else student
                ev = {"event": "phi_deleted", "step": step}
                events.append(ev)
                emit(ev)
            elif sched.is_resvd_step(step):
                prev, new = sched.rank_at(step - 1), sched.rank_at(step)
                shares = []
                for phi in student.phi_items().values():
                    r0 = phi.L.shape[1]  # differs per layer with phi_rank_frac
                    shares.append(small_singular_share(phi.spectrum(sched.layer_rank(step - 1, r0))))
                    phi.resvd(sched.layer_rank(step, r0))
                    # The basis was rotated: Adam moments of L and R no longer refer to it.
                    optimizer.state.pop(phi.L, None)
                    optimizer.state.pop(phi.R, None)
                ev = {"event": "resvd", "step": step, "rank": new, "from_rank": prev}
                ev["small_sv_share"] = sum(shares) / max(1, len(shares))
                events.append(ev)
                emit(ev)
            if step < sched.phi_end:
                for phi in student.phi_items().values():
                    r0 = phi.L.shape[1]
                    phi.rank = sched.layer_rank(step, r0)
                    phi.gamma.copy_(sched.gamma(step, r0).to(env.device))
        # -- learning rates ---------------------------------------------------------------------
        f = lr_factor(step, cfg.steps, cfg.warmup_frac, cfg.lr_min_frac)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
        # -- loss ------------------------------------------------------------------------------
        batch = maker.batch(step, env.rank, env.world_size).to(env.device)
        if spec.teacher:
            loss = distillation_loss(
                model, teacher_run, batch, cfg.distill_weights, cfg.distill_guidance, source.null().to(env.device)
            )
        else:
            loss = flow_matching_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.strategy == "fsdp":
            D.all_reduce_grads(D.replicated_params(student), env)
        trainable = [p for p in student.parameters() if p.requires_grad]
        phi_ids = {id(p) for p in student.phis.parameters()}
        if cfg.strategy == "fsdp" and env.enabled:
            base_norm = float("nan")  # not split out under sharding (a second collective per step)
            gnorm = D.sharded_grad_norm_and_clip(trainable, cfg.grad_clip, env)
        else:
            base_norm = _grad_norm([p for p in trainable if id(p) not in phi_ids])
            gnorm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip))
        optimizer.step()
        dt = time.perf_counter() - t0
        step_times.append(dt)
        lv = D.mean_scalar(float(loss.detach()), env)
        rec: dict[str, Any] = {
            "step": step,
            "loss": lv,
            "grad_norm": gnorm,
            "grad_norm_base": base_norm,
            "lr": optimizer.param_groups[0]["lr"],
            "step_time": dt,
        }
        if sched is not None:
            rec["rank"] = sched.rank_at(step)
            rec["gamma_u"] = sched.decay_factor(step) if step < sched.phi_end else 0.0
        elif spec.phi:
            rec["rank"] = cfg.phi_rank
        history.append(rec)
        if (step % cfg.log_every == 0) or step + 1 == cfg.steps:
            emit(rec)
        bar.set_postfix(loss=f"{lv:.4g}", gnorm=f"{gnorm:.3g}", rank=rec.get("rank", "-"))
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            info = {"config": cfg.to_dict(), "last": rec, "world_size": env.world_size}
            save_state(out, step + 1, student, optimizer, info, keep=cfg.keep_states, write=env.is_main)
            D.barrier(env)
    bar.close()
    if log is not None:
        log.close()

    checkpoint = None
    if completed:
        if spec.lora:
            merge_loras(student.layers())
        if not spec.phi or spec.rank_decay:
            qmodel = _plain_qmodel(student, teacher, cfg)
            if env.is_main:
                from qvgen_export.checkpoint import save_checkpoint

                assert all(layer.weight_delta is None for layer in qmodel.quant_linears().values())
                extra = {"trainer": "trainer.qat", "method": cfg.method.value, "config": cfg.to_dict()}
                # A run resumed from its final state (killed while writing this file) ran no step:
                # the last loss is the saved one, so the file equals an uninterrupted run's.
                last = history[-1] if history else (meta or {}).get("last", {})
                extra["final_loss"] = last.get("loss")
                checkpoint = save_checkpoint(qmodel.eval(), out / "model.safetensors", extra=extra)
            D.barrier(env)
    student.qmodel.eval()
    mean_dt = sum(step_times[1:]) / max(1, len(step_times) - 1) if len(step_times) > 1 else sum(step_times)
    return TrainResult(student, teacher, text_encoder, checkpoint, history, events, completed, mean_dt)
