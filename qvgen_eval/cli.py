"""``qvgen-eval``: sample a fixed prompt set from the float teacher and quantized models, and
report what quantization costs (metrics, PSNR/SSIM vs float, per-timestep denoiser error).

examples:
    qvgen-eval --ptq w8a8,w4a4,w3a3 --out artifacts/eval
    qvgen-eval --checkpoint qvgen=runs/w4a4.safetensors --out artifacts/eval_qat

Writes ``report.json``, ``report.md``, ``error_vs_timestep.png`` and a contact sheet per model
(``samples_<model>.png``; with ``--gifs`` also one GIF per video) into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

SCHEMES_HELP = "comma-separated PTQ schemes of the float teacher, e.g. w8a8,w4a4,w3a3"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from qvgen_export.cli.common import HelpFormatter

    ap = argparse.ArgumentParser(
        prog="qvgen-eval", description=__doc__.replace("``", ""), formatter_class=HelpFormatter
    )
    ap.add_argument("--teacher", default=None, help="tiny-teacher .safetensors (default: the embedded one)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", help="a quantized checkpoint")
    ap.add_argument("--ptq", default="", help=SCHEMES_HELP)
    ap.add_argument("--no-calib", action="store_true", help="PTQ without activation-clip calibration")
    ap.add_argument("--calib-clips", type=int, default=2, help="PTQ calibration clips per sampling timestep")
    ap.add_argument("--prompts-file", default=None, help="one prompt per line (default: the built-in 12 prompts)")
    ap.add_argument("--seeds", default="0,1", help="comma-separated sampling seeds")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the teacher's setting)")
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the teacher's setting)")
    ap.add_argument("--out", default="artifacts/eval", help="output directory")
    ap.add_argument("--gifs", action="store_true", help="also write one GIF per video")
    # --quiet as in every qvgen command; --no-progress kept for existing scripts
    ap.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def _build(args: argparse.Namespace) -> tuple[dict[str, Any], Any, Any, Any]:
    import torch

    from qvgen_eval.harness import DEFAULT_PROMPTS, EvalSettings, calibration_batches
    from qvgen_tinyworld.teacher import latent_shape, load_teacher, teacher_denoiser

    teacher, te, info = load_teacher(args.teacher)
    s = info["sampling"]
    prompts = DEFAULT_PROMPTS
    if args.prompts_file:
        p = Path(args.prompts_file)
        if not p.is_file():
            raise ValueError(f"--prompts-file {p} does not exist")
        prompts = tuple(line.strip() for line in p.read_text().splitlines() if line.strip())
    try:
        seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    settings = EvalSettings(
        prompts=prompts,
        seeds=seeds,
        num_steps=args.steps if args.steps is not None else s["num_steps"],
        guidance_scale=args.guidance if args.guidance is not None else s["guidance_scale"],
        scheduler=s["scheduler"],
        shift=s["shift"],
    )
    models: dict[str, Any] = {"float": teacher}
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--checkpoint expects NAME=PATH, got {item!r}")
        if name in models:
            raise ValueError(f"--checkpoint name {name!r} is used twice")
        from qvgen_export.checkpoint import load_quantized_model

        models[name] = load_quantized_model(path)[0].eval()
    schemes = [x.strip().lower() for x in args.ptq.split(",") if x.strip()]
    if schemes:
        from qvgen_export.quant.config import QuantConfig
        from qvgen_export.quant.ptq import ptq_quantize

        if args.calib_clips < 1:
            raise ValueError(f"--calib-clips must be >= 1, got {args.calib_clips}")
        calib = (
            None
            if args.no_calib
            else calibration_batches(
                te.encode, settings, clips_per_step=args.calib_clips, condition=info.get("condition")
            )
        )
        for scheme in schemes:
            name = f"{scheme}-ptq"
            if name in models:
                raise ValueError(f"PTQ scheme {scheme!r} is listed twice")
            # ptq_quantize replaces the linears in place: quantize a copy of the teacher.
            with torch.no_grad():
                models[name] = ptq_quantize(
                    copy.deepcopy(teacher), QuantConfig.preset(scheme), calib, progress=not args.no_progress
                )
    # A conditioned teacher (and every quantized copy of it) takes its condition channels after
    # the latents: the harness samples and compares latents only.
    return {k: teacher_denoiser(m, info) for k, m in models.items()}, te, latent_shape(info), settings


def main(argv: list[str] | None = None) -> int:
    from qvgen_export.cli.common import run_guarded

    return run_guarded("qvgen-eval", _main, argv)


def _main(argv: list[str]) -> int:
    from qvgen_export.utils.atomic import check_writable_folder, disk_full_names

    args = _parse_args(argv)
    # Sampling every model takes minutes: an output folder that cannot be written fails now.
    out = check_writable_folder(args.out)
    try:
        models, te, shape, settings = _build(args)
    except TypeError as e:  # e.g. a teacher file whose metadata has the wrong types
        raise ValueError(str(e)) from None

    from qvgen_eval.harness import compare_models

    report = compare_models(models, te.encode, shape, settings, progress=not args.no_progress)
    with disk_full_names(out, "the evaluation report"):
        _write_outputs(out, report, args, len(models))
    print(report["_md"])
    print(f"wrote {out}/report.json, report.md" + (", error_vs_timestep.png" if len(models) > 1 else ""))
    return 0


def _write_outputs(out: Path, report: dict[str, Any], args: argparse.Namespace, n_models: int) -> None:
    from qvgen_eval.harness import error_plot_series, json_report, markdown_table
    from qvgen_eval.plot import plot_error_vs_timestep
    from qvgen_export.parity.measures import json_safe
    from qvgen_export.runtime.video import contact_sheet, write_video

    (out / "report.json").write_text(json.dumps(json_safe(json_report(report)), indent=2, allow_nan=False) + "\n")
    md = markdown_table(report)
    report["_md"] = md
    (out / "report.md").write_text(md)
    if n_models > 1:
        plot_error_vs_timestep(
            {
                "teacher-forced": error_plot_series(report, "teacher_forced"),
                "own trajectory": error_plot_series(report, "trajectory"),
            },
            out / "error_vs_timestep.png",
        )
    for name, vids in report["_videos"].items():
        contact_sheet(vids, out / f"samples_{name}.png", scale=3, labels=report["_labels"])
        if args.gifs:
            for i, v in enumerate(vids):
                write_video(v, out / "gifs" / f"{name}_{i:02d}.gif")


if __name__ == "__main__":
    raise SystemExit(main())
