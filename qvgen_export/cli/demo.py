"""``qvgen-demo``: the main job, end to end on the embedded tiny model, on CPU.

float teacher -> W4A4 PTQ -> checkpoint -> ONNX export -> ONNX Runtime text-to-video sampling
-> videos -> Polygraphy parity report; then the TensorRT target's plugin graph of the same
checkpoint (its engine where TensorRT and a GPU are present) and its own parity report.
Everything lands under ``artifacts/demo/``.

examples:
  qvgen-demo                                  # about 1.5 minutes on 2 CPU cores
  qvgen-demo --scheme w3a3 --calibrate --out artifacts/demo_w3a3
  qvgen-demo --steps 10 --parity-steps 4 --quiet
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qvgen_export.cli.common import HelpFormatter, add_sampling_args, artifacts_dir, cli_entry, positive_int

if TYPE_CHECKING:  # torch and numpy load in main(): `qvgen-demo --help` stays instant
    import torch


def load_default_model() -> tuple[torch.nn.Module, tuple[int, int, int, int], str]:
    """The embedded trained tiny teacher, or a seeded random-init tiny Wan if it is absent."""
    from qvgen_tinyworld.teacher import ASSET_PATH, latent_shape, load_teacher

    if ASSET_PATH.is_file():
        model, _, info = load_teacher()
        return model, latent_shape(info), f"tiny teacher ({ASSET_PATH.name})"
    from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan

    return build_wan(TINY_WAN_CONFIG, seed=0), (3, 8, 32, 32), "random-init tiny Wan (no teacher asset)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qvgen-demo", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--scheme", default="w4a4", help="quantization scheme: w4a4, w3a3, w8a8, ...")
    p.add_argument("--out", type=Path, help="output folder (default: artifacts/demo)")
    p.add_argument("--parity-steps", type=int, default=8, help="denoising steps of the parity trajectory")
    p.add_argument("--calibrate", action="store_true", help="calibrate activation clips on a few sampled batches")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_sampling_args(p, steps=20)
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@cli_entry("qvgen-demo")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    positive_int("--steps", args.steps)
    positive_int("--parity-steps", args.parity_steps)
    import numpy as np
    import torch

    from qvgen_export import QuantConfig
    from qvgen_export.checkpoint import load_quantized_model, save_checkpoint
    from qvgen_export.export.pipeline import export_checkpoint
    from qvgen_export.parity.measures import json_safe
    from qvgen_export.parity.report import SamplingSpec, run_parity, write_report
    from qvgen_export.parity.steps import psnr
    from qvgen_export.quant.ptq import ptq_quantize
    from qvgen_export.runtime.backends import Denoiser, OrtBackend, TorchBackend
    from qvgen_export.runtime.generate import GenerationSpec, generate
    from qvgen_export.runtime.prompts import DEFAULT_PROMPTS, encode_prompts

    qcfg = QuantConfig.preset(args.scheme)
    out: Path = args.out or artifacts_dir() / "demo"
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    model, shape, what = load_default_model()
    prompts = list(args.prompt or DEFAULT_PROMPTS)
    pe, ne = encode_prompts(prompts, args.negative_prompt, int(model.config.text_dim))
    spec = GenerationSpec(
        prompts, args.negative_prompt, shape, args.steps, args.guidance, args.scheduler, args.shift, args.seed
    )
    _log(f"[1/6] model: {what}; sampling the float reference")
    t = time.perf_counter()
    float_out = generate(
        Denoiser(TorchBackend(model, name="torch-float")), spec, pe, ne, out / "videos", "float", progress
    )
    timings["float_sampling_s"] = time.perf_counter() - t

    _log(f"[2/6] PTQ to {qcfg.name} and writing the checkpoint")
    t = time.perf_counter()
    calib = None
    if args.calibrate:
        g = torch.Generator().manual_seed(1)
        calib = [
            {
                "hidden_states": torch.randn(len(prompts), *shape, generator=g),
                "timestep": torch.full((len(prompts),), float(tt)),
                "encoder_hidden_states": pe,
            }
            for tt in (900, 500, 100)
        ]
    qmodel = ptq_quantize(copy.deepcopy(model), qcfg, calib, progress=progress)
    ckpt = save_checkpoint(qmodel, out / f"wan_{qcfg.name}.safetensors", extra={"method": "ptq", "source": what})
    timings["ptq_s"] = time.perf_counter() - t

    _log(f"[3/6] exporting {ckpt.name} to ONNX")
    t = time.perf_counter()
    export_dir = out / f"onnx_{qcfg.name}"
    export_checkpoint(ckpt, export_dir, target="onnx", overwrite=True, progress=progress)
    timings["export_s"] = time.perf_counter() - t

    _log("[4/6] sampling with the exported model in ONNX Runtime")
    t = time.perf_counter()
    ort_out = generate(Denoiser(OrtBackend(export_dir)), spec, pe, ne, out / "videos", f"onnx_{qcfg.name}", progress)
    timings["onnx_sampling_s"] = time.perf_counter() - t

    _log("[5/6] parity: ONNX Runtime vs the PyTorch quantized model (Polygraphy)")
    t = time.perf_counter()
    loaded, _ = load_quantized_model(ckpt)
    pspec = SamplingSpec(pe, ne, shape, args.parity_steps, args.guidance, args.scheduler, args.shift, args.seed)
    report = run_parity(loaded, export_dir, pspec, out / "parity_work", progress=progress)
    report["summary"]["onnx_vs_float_video_psnr_db"] = psnr(
        float_out["frames"].astype(np.float32) / 255, ort_out["frames"].astype(np.float32) / 255, peak=1.0
    )
    json_path, md_path = write_report(report, out, stem="parity")
    timings["parity_s"] = time.perf_counter() - t

    t = time.perf_counter()
    trt_summary = _trt_target(ckpt, qcfg, out, loaded, pspec, progress)
    timings["trt_target_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    summary: dict[str, Any] = {
        "model": what,
        "scheme": qcfg.name,
        "checkpoint": str(ckpt),
        "export_dir": str(export_dir),
        "videos": ort_out["videos"],
        "contact_sheets": [float_out["contact_sheet"], ort_out["contact_sheet"]],
        "parity_report": [str(json_path), str(md_path)],
        "parity": report["summary"],
        "trt_target": trt_summary,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    s = report["summary"]
    _log(
        f"done in {timings['total_s']:.0f} s. parity {'PASS' if s['passed'] else 'FAIL'}: "
        f"{s['layers_passed']}/{s['layers']} layers within {s['layer_tolerance']:.0e}, "
        f"cosine and code-agreement deviation {s['cosine_deviation_ratio']:.2f}x / {s['code_deviation_ratio']:.2f}x "
        f"the noise floor, video PSNR {s['video_psnr_db']:.1f} dB (floor {s['floor_video_psnr_db']:.1f} dB)"
    )
    _log(
        f"outputs in {out}/ (summary.json, parity.md, parity_trt.md, videos/, {ckpt.name}, {export_dir.name}/, trt_{qcfg.name}/)"
    )
    print(out)
    return 0 if s["passed"] and trt_summary.get("passed", True) else 1


def _trt_target(ckpt: Path, qcfg: Any, out: Path, loaded: Any, pspec: Any, progress: bool) -> dict[str, Any]:
    """Step 6: the same checkpoint as the TensorRT target's plugin graph, its engine if possible, its parity."""
    from qvgen_export.export.pipeline import export_checkpoint
    from qvgen_export.parity.report import run_parity, write_report
    from qvgen_export.targets import EngineUnavailableError
    from qvgen_export.targets.trt_engine import build_engine
    from qvgen_export.targets.trt_plugin import check_config

    try:
        check_config(qcfg)
    except NotImplementedError as e:
        _log(f"[6/6] TensorRT target skipped: {e}")
        return {"skipped": str(e)}
    trt_dir = out / f"trt_{qcfg.name}"
    _log(f"[6/6] TensorRT target: plugin graph {trt_dir.name}/, its engine, and its parity (the graph on ONNX Runtime)")
    export_checkpoint(ckpt, trt_dir, target="trt", overwrite=True, progress=progress)
    side = f"ort:{trt_dir}"
    try:
        record = build_engine(trt_dir)
        engine = f"built with TensorRT {record['tensorrt_version']} on {record['gpu']['name']}"
        side = f"trt:{trt_dir}"
    except EngineUnavailableError as e:
        engine = f"not built: {e}"
    _log(f"      engine {engine}")
    report = run_parity(loaded, side, pspec, out / "parity_trt_work", progress=progress)
    write_report(report, out, stem="parity_trt")
    s = report["summary"]
    _log(
        f"      parity {s['test']} vs {s['reference']}: {'PASS' if s['passed'] else 'FAIL'}, "
        f"{s['layers_passed']}/{s['layers']} layers (worst {s['layer_max_relative_error']:.1e}), "
        f"cosine deviation {s['cosine_deviation_ratio']:.2f}x the floor, video PSNR {s['video_psnr_db']:.1f} dB"
    )
    return {"folder": str(trt_dir), "engine": engine, **s}


if __name__ == "__main__":
    sys.exit(main())
