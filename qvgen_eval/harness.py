"""Compare denoisers on a fixed prompt set: what quantization costs, in video metrics and errors.

Every model is "a callable denoiser" with the call of diffusers' ``WanTransformer3DModel``
(``denoiser(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]``): the float
teacher, a ``QuantizedWan`` from PTQ or from a checkpoint, an exported-graph runner, a test
double. One of them is the reference (``"float"``); for every other model the harness reports

- the VBench-like metrics of its videos (:mod:`qvgen_eval.metrics`),
- PSNR / SSIM of each video against the reference video from the same prompt and noise,
- the per-timestep relative error of its denoiser output, two ways:

  * ``teacher_forced``: on the *reference* trajectory, each model is called on exactly the
    latents, timestep and text the reference sees (cond and uncond), and the relative error
    ``||v_model - v_ref|| / ||v_ref||`` of the CFG-guided velocity is recorded. This isolates
    the denoiser's own error.
  * ``trajectory``: each model samples on its own, and its guided velocity at step ``i``
    (recorded through ``sample_video``'s callback) is compared with the reference's at step
    ``i``. This includes the drift of the latents that earlier errors cause.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qvgen_eval import metrics as M
from qvgen_export.runtime.sampler import DenoiseFn, sample_video
from qvgen_tinyworld.dataset import tensor_to_frames
from qvgen_tinyworld.grammar import parse_prompt

TextEncode = Callable[[list[str]], torch.Tensor]

# Every color, shape and direction appears; two prompts name two objects.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "a red circle moving left",
    "a green square moving right",
    "a blue triangle moving up",
    "a yellow circle moving down",
    "a white square moving left",
    "a red triangle moving down",
    "a green circle moving up",
    "a blue square moving down",
    "a yellow triangle moving right",
    "a white circle moving right",
    "a red square moving up and a blue circle moving down",
    "a yellow square moving left and a green triangle moving right",
)


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """What is sampled: prompts x noise seeds, and how (any prompts)."""

    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seeds: tuple[int, ...] = (0, 1)
    num_steps: int = 20
    guidance_scale: float = 4.0
    scheduler: str = "unipc"
    shift: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.prompts:
            raise ValueError(f"{type(self).__name__}.prompts is empty")
        if not self.seeds:
            raise ValueError(f"{type(self).__name__}.seeds is empty")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sample(
        self,
        denoiser: DenoiseFn,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        latent_shape: tuple[int, int, int, int],
        seed: int,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Latents of one noise seed, sampled with these settings (no progress bar)."""
        return sample_video(
            denoiser,
            cond,
            uncond,
            latent_shape=latent_shape,
            num_steps=self.num_steps,
            guidance_scale=self.guidance_scale,
            scheduler=self.scheduler,  # type: ignore[arg-type]
            shift=self.shift,
            seed=seed,
            progress=False,
            callback=callback,
        )


@dataclasses.dataclass(frozen=True)
class EvalSettings(SamplingSettings):
    """Sampling settings whose prompts each name an object (the metrics need a ground truth)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for p in self.prompts:
            if not parse_prompt(p):
                raise ValueError(f"evaluation prompt {p!r} names no object; metrics need a ground truth")


class _Tee:
    """A denoiser that returns the reference output and, on the same inputs, runs the others.

    ``sample_video`` calls the denoiser twice per step under CFG (cond, then uncond, same
    latents and timestep); the tee pairs the two calls and records the error of the *guided*
    velocity, so that step 0 of ``teacher_forced`` and ``trajectory`` measure the same thing.
    """

    def __init__(self, reference: DenoiseFn, others: Mapping[str, DenoiseFn], guidance_scale: float | None) -> None:
        self.reference = reference
        self.others = dict(others)
        self.guidance_scale = guidance_scale  # None: no CFG, one call per step
        self._pending: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        # errors[name][timestep] -> relative errors of the guided velocity (one per seed)
        self.errors: dict[str, dict[float, list[float]]] = {n: defaultdict(list) for n in self.others}

    def __call__(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = False,
        **kw: Any,
    ) -> tuple[torch.Tensor]:
        ref = self.reference(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]
        outs = {
            n: m(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0] for n, m in self.others.items()
        }
        t = float(timestep.reshape(-1)[0])
        if self.guidance_scale is None:
            for n, o in outs.items():
                self.errors[n][t].append(relative_error(o, ref))
        elif self._pending is None:
            self._pending = (ref, outs)  # the cond call; the uncond call follows
        else:
            g = self.guidance_scale
            ref_c, outs_c = self._pending
            self._pending = None
            ref_v = ref + g * (ref_c - ref)
            for n, o in outs.items():
                self.errors[n][t].append(relative_error(o + g * (outs_c[n] - o), ref_v))
        return (ref,)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``||x - ref|| / ||ref||`` over the whole tensor."""
    return float((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))


def _sample(
    denoiser: DenoiseFn,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    latent_shape: tuple[int, int, int, int],
    settings: EvalSettings,
    seed: int,
    record: list[tuple[float, torch.Tensor]] | None = None,
) -> torch.Tensor:
    def cb(i: int, t: torch.Tensor, v: torch.Tensor) -> None:
        if record is not None:
            record.append((float(t), v.detach().clone()))

    return settings.sample(denoiser, cond, uncond, latent_shape, seed, callback=cb)


def compare_models(
    models: Mapping[str, DenoiseFn],
    text_encode: TextEncode,
    latent_shape: tuple[int, int, int, int],
    settings: EvalSettings | None = None,
    reference: str = "float",
    progress: bool = True,
    keep_videos: bool = True,
) -> dict[str, Any]:
    """Sample every prompt x seed with every model and compare each with ``reference``.

    Args:
        models: name -> denoiser; must contain ``reference``.
        text_encode: prompts -> ``encoder_hidden_states [B, L, D]`` (``""`` is the negative).
        latent_shape: ``(C, F, H, W)``; the denoisers work in RGB pixel space, C = 3.

    Returns:
        A JSON-able report (``settings``, ``models``: per model ``metrics`` (mean), ``fidelity``
        (PSNR/SSIM vs reference), ``per_video``; ``timesteps``: per-step errors) and, under the
        private key ``_videos``, ``{name: [F, H, W, 3] arrays}`` in prompt-major order when
        ``keep_videos``.
    """
    settings = settings or EvalSettings()
    if reference not in models:
        raise ValueError(f"reference model {reference!r} is not among the models {list(models)}")
    if latent_shape[0] != 3:
        raise ValueError(f"the harness judges RGB pixel videos, latent_shape must have C=3, got {latent_shape}")
    others = {n: m for n, m in models.items() if n != reference}
    prompts = list(settings.prompts)
    cond = text_encode(prompts)
    uncond = text_encode([""] * len(prompts))

    videos: dict[str, list[np.ndarray]] = {n: [] for n in models}  # seed-major, then prompt
    traj_err: dict[str, dict[int, list[float]]] = {n: defaultdict(list) for n in others}
    step_t: dict[int, float] = {}
    do_cfg = settings.guidance_scale > 1.0
    tee = _Tee(models[reference], others, settings.guidance_scale if do_cfg else None)
    bar = tqdm(total=len(settings.seeds) * (1 + len(others)), desc="sampling", disable=not progress)
    for seed in settings.seeds:
        ref_rec: list[tuple[float, torch.Tensor]] = []
        lat = _sample(tee if others else models[reference], cond, uncond, latent_shape, settings, seed, ref_rec)
        videos[reference].extend(tensor_to_frames(lat))
        bar.update(1)
        for i, (t, _) in enumerate(ref_rec):
            step_t[i] = t
        for name, model in others.items():
            rec: list[tuple[float, torch.Tensor]] = []
            lat = _sample(model, cond, uncond, latent_shape, settings, seed, rec)
            videos[name].extend(tensor_to_frames(lat))
            for i, ((_, v), (_, vr)) in enumerate(zip(rec, ref_rec)):
                traj_err[name][i].append(relative_error(v, vr))
            bar.update(1)
    bar.close()

    labels = [(seed, p) for seed in settings.seeds for p in prompts]
    report: dict[str, Any] = {"settings": settings.to_dict(), "reference": reference, "models": {}, "timesteps": []}
    for name in models:
        per_video = []
        for (seed, prompt), frames in zip(labels, videos[name]):
            row: dict[str, Any] = {"seed": seed, "prompt": prompt, **M.evaluate_video(frames, prompt)}
            if name != reference:
                ref = videos[reference][len(per_video)]
                row["psnr"] = M.psnr(frames, ref)
                row["ssim"] = M.ssim(frames, ref)
            per_video.append(row)
        numeric = [{k: v for k, v in r.items() if k not in ("seed", "prompt")} for r in per_video]
        agg = M.aggregate(numeric)
        entry: dict[str, Any] = {"metrics": {k: agg[k] for k in (*M.SCORE_KEYS, "speed")}, "per_video": per_video}
        # Adherence is a mean over a few dozen videos: its 95% bootstrap interval says how far
        # two models' scores must differ before the difference means anything.
        entry["intervals"] = {k: M.bootstrap_interval([r[k] for r in numeric]) for k in M.INTERVAL_KEYS}
        if name != reference:
            entry["fidelity"] = {"psnr": agg["psnr"], "ssim": agg["ssim"]}
            tf = [float(np.mean(tee.errors[name][step_t[i]])) for i in sorted(step_t)]
            tr = [float(np.mean(traj_err[name][i])) for i in sorted(step_t)]
            entry["rel_error"] = {"teacher_forced_mean": float(np.mean(tf)), "trajectory_mean": float(np.mean(tr))}
        report["models"][name] = entry
    for i in sorted(step_t):
        row = {"step": i, "timestep": step_t[i], "teacher_forced": {}, "trajectory": {}}
        for name in others:
            row["teacher_forced"][name] = float(np.mean(tee.errors[name][step_t[i]]))
            row["trajectory"][name] = float(np.mean(traj_err[name][i]))
        report["timesteps"].append(row)
    if keep_videos:
        report["_videos"] = {n: v for n, v in videos.items()}
        report["_labels"] = [f"seed {s}: {p}" for s, p in labels]
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The report as Markdown: one row per model."""
    ref = report["reference"]
    cols = [
        ("prompt_adherence", "adherence"),
        ("color", "color"),
        ("shape", "shape"),
        ("direction", "direction"),
        ("count", "count"),
        ("subject_consistency", "subject cons."),
        ("motion_smoothness", "motion smooth."),
        ("dynamic_degree", "dynamic"),
        ("background_consistency", "background cons."),
    ]
    head = ["model"] + [c for _, c in cols] + ["PSNR (dB)", "SSIM", "rel. err (forced)", "rel. err (traj.)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in report["models"].items():
        m = e["metrics"]
        cells = [name + (" (ref)" if name == ref else "")] + [f"{m[k]:.1f}" for k, _ in cols]
        if name == ref:
            cells += ["-", "-", "-", "-"]
        else:
            f, r = e["fidelity"], e["rel_error"]
            cells += [
                f"{f['psnr']:.2f}",
                f"{f['ssim']:.4f}",
                f"{r['teacher_forced_mean']:.4f}",
                f"{r['trajectory_mean']:.4f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, e in report["models"].items():
        iv = e.get("intervals", {})
        cells = ", ".join(f"{k} {lo:.1f}-{hi:.1f}" for k, (lo, hi) in iv.items())
        lines.append(f"- {name}: 95% bootstrap intervals over videos: {cells}")
    s = report["settings"]
    lines.append("")
    lines.append(
        f"{len(s['prompts'])} prompts x {len(s['seeds'])} seeds, {s['scheduler']} {s['num_steps']} steps, "
        f"shift {s['shift']}, CFG {s['guidance_scale']}. Scores in [0, 100]; PSNR/SSIM and relative "
        f"denoiser-output errors against '{ref}' with the same noise."
    )
    if report["timesteps"] and len(report["models"]) > 1:
        names = [n for n in report["models"] if n != ref]
        lines += ["", "| step | t | " + " | ".join(f"{n} forced | {n} traj." for n in names) + " |"]
        lines.append("|" + "---|" * (2 + 2 * len(names)))
        for row in report["timesteps"]:
            cells = [str(row["step"]), f"{row['timestep']:.0f}"]
            for n in names:
                cells += [f"{row['teacher_forced'][n]:.4f}", f"{row['trajectory'][n]:.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def json_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report without its private (non-JSON) keys."""
    return {k: v for k, v in report.items() if not k.startswith("_")}


def models_summary(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{name: {metric: value}}`` including fidelity and mean errors, for quick printing."""
    out = {}
    for name, e in report["models"].items():
        d = dict(e["metrics"])
        d.update(e.get("fidelity", {}))
        d.update(e.get("rel_error", {}))
        out[name] = d
    return out


def error_plot_series(report: dict[str, Any], kind: str = "teacher_forced") -> dict[str, list[tuple[float, float]]]:
    """``{model: [(timestep, rel_error), ...]}`` for plotting."""
    if kind not in ("teacher_forced", "trajectory"):
        raise ValueError(f"kind must be 'teacher_forced' or 'trajectory', got {kind!r}")
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in report["timesteps"]:
        for name, err in row[kind].items():
            series[name].append((row["timestep"], err))
    return dict(series)


def calibration_batches(
    text_encode: TextEncode,
    settings: EvalSettings,
    clips_per_step: int = 2,
    seed: int = 10_000,
    condition: str | None = None,
) -> list[dict[str, torch.Tensor]]:
    """PTQ calibration inputs at exactly the timesteps the sampler will visit.

    One batch per sampling step: ``clips_per_step`` training clips (dataset seed ``seed``, so
    never the evaluation noise) noised to that step's sigma, with their prompts (cond) or the
    empty prompt (every other batch), as dicts of ``hidden_states``, ``timestep``,
    ``encoder_hidden_states``. ``condition``: the teacher's (``hidden_states`` then carries its
    channels after the latents, as the model takes them).
    """
    from qvgen_export.runtime.sampler import make_scheduler
    from qvgen_tinyworld.dataset import TinyVideoDataset
    from qvgen_tinyworld.teacher import with_condition

    sched = make_scheduler(settings.scheduler, settings.shift)  # type: ignore[arg-type]
    sched.set_timesteps(settings.num_steps)
    data = TinyVideoDataset(seed=seed)
    gen = torch.Generator("cpu").manual_seed(seed)
    out = []
    for i, t in enumerate(sched.timesteps):
        x0, prompts = data.batch(range(i * clips_per_step, (i + 1) * clips_per_step))
        sigma = float(t) / 1000.0
        eps = torch.randn(x0.shape, generator=gen)
        if i % 2:
            prompts = [""] * len(prompts)
        out.append(
            {
                "hidden_states": with_condition((1 - sigma) * x0 + sigma * eps, condition),
                "timestep": torch.full((x0.shape[0],), float(t)),
                "encoder_hidden_states": text_encode(prompts),
            }
        )
    return out
