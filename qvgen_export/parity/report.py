"""The parity report: layer-by-layer, per transformer call along a trajectory, and the video."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qvgen_export.parity import layers as layer_parity
from qvgen_export.parity import steps as step_parity
from qvgen_export.parity.measures import cosine, json_safe, psnr
from qvgen_export.parity.sides import Side, denoiser, parse_side
from qvgen_export.quant.modules import QuantizedWan
from qvgen_export.runtime.sampler import sample_video
from qvgen_export.runtime.video import pixel_decode
from qvgen_export.utils.atomic import atomic_file

# Whole-model checks are judged against a noise floor: the PyTorch model against itself with
# inputs perturbed by FLOOR_PERTURBATION (relative). A deep W4A4 graph turns any float
# difference into flipped activation codes that compound with depth, so a fixed threshold is
# either meaningless or model-dependent; "no worse than float noise" is neither.
# (Per-layer exactness, the check that catches lowering bugs, is LAYER_TOLERANCE.)
FLOOR_PERTURBATION = 1e-6
MAX_DEVIATION_RATIO = 2.0  # (1 - metric) may be at most this multiple of the floor's
MIN_FLOOR_DEVIATION = 1e-4  # a floor with no deviation still allows this much
VIDEO_PSNR_MARGIN_DB = 3.0  # video PSNR may sit this far below the floor's video PSNR


@dataclass
class SamplingSpec:
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    latent_shape: tuple[int, int, int, int]
    num_steps: int = 8
    guidance_scale: float = 4.0
    scheduler: str = "unipc"
    shift: float = 3.0
    seed: int = 0


def _video(latents: torch.Tensor) -> tuple[np.ndarray, float | None]:
    """Frames in [0, 1] for a pixel-space model; the latents themselves (peak from the data) otherwise."""
    if latents.shape[1] == 3:
        return pixel_decode(latents).numpy(), 1.0
    return latents.float().numpy(), None


def run_parity(
    model: QuantizedWan,
    test: Side | str | Path,
    spec: SamplingSpec,
    work_dir: Path,
    progress: bool = True,
    reference: Side | str = "pytorch",
) -> dict[str, Any]:
    """Compare ``test`` (an exported folder on a backend, see ``parity.sides``) against
    ``reference`` (default: the PyTorch quantized model the folder came from)."""
    test = test if isinstance(test, Side) else parse_side(test)
    reference = reference if isinstance(reference, Side) else parse_side(reference)
    kw = {
        "latent_shape": spec.latent_shape,
        "num_steps": spec.num_steps,
        "guidance_scale": spec.guidance_scale,
        "scheduler": spec.scheduler,
        "shift": spec.shift,
        "seed": spec.seed,
        "progress": progress,
    }
    # 1. PyTorch trajectory, recording every transformer call.
    recorder = step_parity.RecordingDenoiser(model)
    lat_pt = sample_video(recorder, spec.prompt_embeds, spec.negative_embeds, **kw)  # type: ignore[arg-type]
    calls_per_step = len(recorder.calls) // spec.num_steps
    # 2. Layers, fed the inputs of the first call.
    first = recorder.calls[0]
    layer_results = layer_parity.check_layers(
        model,
        (first["hidden_states"], first["timestep"], first["encoder_hidden_states"]),
        work_dir / "layers",
        test,
        reference,
        progress=progress,
    )
    # 3. Every call of the trajectory, identical inputs.
    step_results = step_parity.check_steps(model, recorder.calls, work_dir, calls_per_step, test, reference, progress)
    floor_calls = step_parity.noise_floor(model, recorder.calls, FLOOR_PERTURBATION)
    # 4. The whole video sampled by each side from the same noise, and the floor's video.
    lat_ref = (
        lat_pt
        if reference.kind == "pytorch"
        else sample_video(denoiser(reference, model), spec.prompt_embeds, spec.negative_embeds, **kw)
    )  # type: ignore[arg-type]
    lat_test = sample_video(denoiser(test, model), spec.prompt_embeds, spec.negative_embeds, **kw)  # type: ignore[arg-type]
    lat_floor = sample_video(
        step_parity.PerturbOnce(model, FLOOR_PERTURBATION), spec.prompt_embeds, spec.negative_embeds, **kw
    )  # type: ignore[arg-type]
    f_ref, peak = _video(lat_ref)
    video_psnr = psnr(f_ref, _video(lat_test)[0], peak=peak)
    floor_video_psnr = psnr(_video(lat_pt)[0], _video(lat_floor)[0], peak=peak)
    latent_cos = cosine(lat_ref.numpy(), lat_test.numpy())

    rel = [r.relative_error for r in layer_results]
    cos = [r.cosine for r in step_results]
    agree = [r.code_agreement for r in step_results if r.code_agreement is not None]
    summary = {
        "test": test.label,
        "reference": reference.label,
        "video_space": "pixels" if lat_pt.shape[1] == 3 else "latents",
        "layers": len(layer_results),
        "layers_passed": sum(r.passed for r in layer_results),
        "layer_max_relative_error": max(rel),
        "layer_tolerance": layer_parity.LAYER_TOLERANCE,
        "calls": len(step_results),
        "step_min_cosine": min(cos),
        "step_mean_cosine": float(np.mean(cos)),
        "step_min_psnr_db": min(r.psnr_db for r in step_results),
        "step_min_code_agreement": min(agree) if agree else None,
        "step_mean_code_agreement": float(np.mean(agree)) if agree else None,
        "video_psnr_db": video_psnr,
        "final_latent_cosine": latent_cos,
        "floor_mean_cosine": float(np.mean([f.cosine for f in floor_calls])),
        "floor_mean_code_agreement": float(np.mean([f.code_agreement for f in floor_calls])),
        "floor_video_psnr_db": floor_video_psnr,
    }
    summary["cosine_deviation_ratio"] = _ratio(summary["step_mean_cosine"], summary["floor_mean_cosine"])
    # Code agreement exists only where both sides expose activation codes (PyTorch, QDQ graphs).
    summary["code_deviation_ratio"] = (
        _ratio(summary["step_mean_code_agreement"], summary["floor_mean_code_agreement"]) if agree else None
    )
    summary["passed"] = bool(
        summary["layers_passed"] == summary["layers"]
        and summary["cosine_deviation_ratio"] <= MAX_DEVIATION_RATIO
        and (summary["code_deviation_ratio"] is None or summary["code_deviation_ratio"] <= MAX_DEVIATION_RATIO)
        and video_psnr >= floor_video_psnr - VIDEO_PSNR_MARGIN_DB
    )
    return {
        "summary": summary,
        "thresholds": {
            "layer_relative_error": layer_parity.LAYER_TOLERANCE,
            "floor_perturbation": FLOOR_PERTURBATION,
            "max_deviation_ratio": MAX_DEVIATION_RATIO,
            "min_floor_deviation": MIN_FLOOR_DEVIATION,
            "video_psnr_margin_db": VIDEO_PSNR_MARGIN_DB,
        },
        "sampling": {k: v for k, v in kw.items() if k != "progress"},
        "layers": layer_parity.as_dicts(layer_results),
        "steps": step_parity.as_dicts(step_results),
    }


def _ratio(metric: float, floor: float) -> float:
    """``(1 - metric) / (1 - floor)``: how many floors of deviation (1 = as close as float noise)."""
    return (1.0 - metric) / max(1.0 - floor, MIN_FLOOR_DEVIATION)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return f"{v:.3e}" if (abs(v) < 1e-3 and v != 0) else f"{v:.4f}"
    return str(v)


def to_markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"# Parity report: {s['test']} vs {s['reference']}",
        "",
        f"Verdict: **{'PASS' if s['passed'] else 'FAIL'}**",
        "",
        (
            f"Whole-model figures are judged against the noise floor: the PyTorch model against itself with its input "
            f"perturbed by {FLOOR_PERTURBATION:g} (relative)."
        ),
        "",
        f"| check | {s['test']} vs {s['reference']} | noise floor | pass if |",
        "|---|---|---|---|",
        f"| layers within tolerance | {s['layers_passed']}/{s['layers']} | | all, max rel. error <= {_fmt(s['layer_tolerance'])} |",
        f"| worst layer relative error | {_fmt(s['layer_max_relative_error'])} | | |",
        (
            f"| mean cosine over {s['calls']} calls | {_fmt(s['step_mean_cosine'])} | {_fmt(s['floor_mean_cosine'])} | "
            f"deviation ratio {_fmt(s['cosine_deviation_ratio'])} <= {MAX_DEVIATION_RATIO} |"
        ),
        (
            f"| mean activation-code agreement | {_fmt(s['step_mean_code_agreement'])} | {_fmt(s['floor_mean_code_agreement'])} | "
            f"deviation ratio {_fmt(s['code_deviation_ratio'])} <= {MAX_DEVIATION_RATIO} |"
        ),
        f"| min cosine / min code agreement | {_fmt(s['step_min_cosine'])} / {_fmt(s['step_min_code_agreement'])} | | |",
        f"| min PSNR over calls (dB) | {_fmt(s['step_min_psnr_db'])} | | |",
        f"| video PSNR (dB, {s['video_space']}) | {_fmt(s['video_psnr_db'])} | {_fmt(s['floor_video_psnr_db'])} | >= floor - {VIDEO_PSNR_MARGIN_DB} |",
        f"| final latent cosine | {_fmt(s['final_latent_cosine'])} | | |",
        "",
        "## Per call",
        "",
        "| call | step | branch | t | cosine | PSNR dB | max abs err | code agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["steps"]:
        lines.append(
            f"| {r['call']} | {r['step']} | {r['branch']} | {r['timestep']:.1f} | {_fmt(r['cosine'])} | "
            f"{_fmt(r['psnr_db'])} | {_fmt(r['max_abs_error'])} | {_fmt(r['code_agreement'])} |"
        )
    lines += [
        "",
        "## Per layer",
        "",
        "| layer | input shape | max abs err | output scale | rel. error | ok |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["layers"]:
        lines.append(
            f"| {r['name']} | {r['shape']} | {_fmt(r['max_abs_error'])} | {_fmt(r['output_scale'])} | "
            f"{_fmt(r['relative_error'])} | {'yes' if r['passed'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path, stem: str = "parity") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jp, mp = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    with atomic_file(jp) as tmp:
        tmp.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    with atomic_file(mp) as tmp:
        tmp.write_text(to_markdown(report))
    return jp, mp
