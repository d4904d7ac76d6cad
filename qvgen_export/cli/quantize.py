"""``qvgen-quantize``: a Wan 2.1 transformer on disk -> a quantized checkpoint.

The model is a local diffusers folder (a WanTransformer3DModel folder, or a pipeline folder
holding transformer/), or one safetensors file with diffusers tensor names plus its config.json.
Nothing is downloaded. The model is quantized straight from disk, one layer at a time (peak
memory: the widest layer, so Wan 14B quantizes on a laptop); the result is the QVGen
initialisation: weight ranges by MSE search (or min/max), activation clips at their initial
value. With --calib-embeds (saved UMT5 embeddings) or --calib-prompts (encoded by the folder's
own text_encoder/ and tokenizer/, needs transformers) the activation clips are also calibrated
per timestep group on a short sampling run of the packed quantized model, still streaming (one
block's codes at a time, read back from the output file, plus the run's activations; the float
weights are read from disk as each layer is scored, never held).

examples:
  qvgen-quantize --model Wan2.1-T2V-1.3B-Diffusers --out wan13b_w4a4.safetensors
  qvgen-quantize --model Wan2.1-T2V-14B-Diffusers/transformer --scheme w3a3 --ranges minmax
  qvgen-quantize --single-file wan_t2v_1.3b.safetensors --config config.json --out wan13b_w4a4.safetensors
  qvgen-quantize --model Wan2.1-T2V-1.3B-Diffusers --exclude 'condition_embedder.*' 'proj_out'
  qvgen-quantize --model Wan2.1-T2V-1.3B-Diffusers --calib-embeds embeds.safetensors \\
      --calib-frames 21 --calib-height 60 --calib-width 104
  qvgen-quantize --model Wan2.1-T2V-1.3B-Diffusers --calib-prompts "a cat surfing" "a city at night"

then: qvgen-export --ckpt wan13b_w4a4.safetensors --target onnx
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qvgen_export.cli.common import HelpFormatter, artifacts_dir, cli_entry, positive_int


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qvgen-quantize", description=__doc__, formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, metavar="DIR", help="local diffusers folder (transformer or pipeline)")
    src.add_argument(
        "--single-file", type=Path, metavar="FILE", help="one .safetensors file with diffusers tensor names"
    )
    p.add_argument("--config", type=Path, metavar="JSON", help="with --single-file: the transformer's config.json")
    p.add_argument("--scheme", default="w4a4", help="quantization scheme: w4a4, w3a3, w8a8, ...")
    p.add_argument(
        "--group-size", type=int, metavar="N", help="per-group weight scales of N inputs (default: per channel)"
    )
    p.add_argument(
        "--include",
        nargs="+",
        default=["*"],
        metavar="PATTERN",
        help="quantize the nn.Linear modules whose names match (fnmatch, e.g. 'blocks.*')",
    )
    p.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="keep these linears in float (applied after --include)",
    )
    p.add_argument(
        "--ranges",
        choices=["mse", "mse-fast", "minmax"],
        default="mse",
        help="weight ranges: mse = QVGen's shrink search over all 80 shrink factors (slowest), "
        "mse-fast = the same search coarse to fine (~3x faster; a row's choice can differ, see "
        "quant/range_search.py), minmax = plain min/max",
    )
    p.add_argument("--out", type=Path, help="output checkpoint (default: artifacts/<model name>_<scheme>.safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; print only the output path")
    cal = p.add_argument_group("calibration (optional; runs the packed quantized model, never a float one)")
    cal.add_argument(
        "--calib-embeds",
        type=Path,
        metavar="FILE",
        help="safetensors with prompt_embeds [B,L,D] (+ negative_prompt_embeds): UMT5 outputs of a few prompts",
    )
    cal.add_argument(
        "--calib-prompts",
        nargs="+",
        metavar="PROMPT",
        help="prompts encoded by UMT5 from --text-encoder (instead of --calib-embeds)",
    )
    cal.add_argument(
        "--text-encoder",
        type=Path,
        metavar="DIR",
        help="with --calib-prompts: pipeline folder holding text_encoder/ and tokenizer/ (default: --model's)",
    )
    cal.add_argument("--calib-steps", type=int, default=8, help="denoising steps of the calibration run")
    cal.add_argument("--calib-frames", type=int, default=21, help="latent frames of the calibration run")
    cal.add_argument("--calib-height", type=int, default=60, help="latent height of the calibration run")
    cal.add_argument("--calib-width", type=int, default=104, help="latent width of the calibration run")
    return p


def _single_file_folder(weights: Path, config: Path | None, tmp: Path) -> Path:
    """A diffusers-layout folder (links to ``config.json`` and the weights) for one file + config."""
    if config is None:
        raise ValueError("--single-file needs --config (the transformer's diffusers config.json)")
    for f in (weights, config):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: file not found")
    if weights.suffix != ".safetensors":
        raise ValueError(f"{weights}: expected a .safetensors file (pickled weights are refused)")
    os.symlink(config.resolve(), tmp / "config.json")
    os.symlink(weights.resolve(), tmp / "diffusion_pytorch_model.safetensors")
    return tmp


def _calibration_loop(folder: Path, args: argparse.Namespace, progress: bool) -> Callable[[Any], None]:
    """The forward loop that calibrates the activation clips: a short sampling run."""
    from qvgen_export.models.diffusers_folder import DiffusersFolder
    from qvgen_export.runtime.prompts import load_prompt_embeds
    from qvgen_export.runtime.sampler import sample_video

    for name in ("calib_steps", "calib_frames", "calib_height", "calib_width"):
        positive_int("--" + name.replace("_", "-"), getattr(args, name))
    if args.calib_embeds:
        pe, ne = load_prompt_embeds(args.calib_embeds)
    else:
        from qvgen_export.runtime.prompts import umt5_prompt_embeds

        pe, ne = umt5_prompt_embeds(args.text_encoder or args.model, args.calib_prompts)
    config = DiffusersFolder(folder).config
    if pe.shape[-1] != int(config["text_dim"]):
        raise ValueError(
            f"{args.calib_embeds}: embeddings of width {pe.shape[-1]}, the model takes {config['text_dim']}"
        )
    shape = (int(config["in_channels"]), args.calib_frames, args.calib_height, args.calib_width)

    def loop(m: Any) -> None:
        sample_video(m, pe, ne, latent_shape=shape, num_steps=args.calib_steps, progress=progress)

    return loop


@cli_entry("qvgen-quantize")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qvgen_export import QuantConfig

    overrides: dict[str, Any] = {"include": tuple(args.include), "exclude": tuple(args.exclude)}
    if args.group_size is not None:
        overrides.update(weight_granularity="per_group", group_size=args.group_size)
    qcfg = QuantConfig.preset(args.scheme, **overrides)
    progress = not args.quiet
    source = args.model or args.single_file
    if args.calib_embeds and args.calib_prompts:
        raise ValueError("give --calib-embeds or --calib-prompts, not both")
    if args.calib_prompts and not (args.text_encoder or args.model):
        raise ValueError("--calib-prompts with --single-file needs --text-encoder DIR")
    if args.model and args.config:
        raise ValueError("--config goes with --single-file (a folder has its own config.json)")
    # "Wan2.1-T2V-1.3B-Diffusers" keeps its dots; a file loses only its suffix
    stem = source.stem if args.single_file else (source.parent.name if source.name == "transformer" else source.name)
    out: Path = args.out or artifacts_dir() / f"{stem}_{qcfg.name}.safetensors"
    with tempfile.TemporaryDirectory(prefix="qvgen-quantize-") as tmp:
        folder = _single_file_folder(args.single_file, args.config, Path(tmp)) if args.single_file else args.model
        calibrate = bool(args.calib_embeds or args.calib_prompts)
        if not args.quiet:
            how = f"streaming, {args.ranges} weight ranges" + (", calibrated activation clips" if calibrate else "")
            print(f"quantizing {source} to {qcfg.name} ({how}) -> {out}", file=sys.stderr)
        from qvgen_export.quant.ptq_stream import ptq_quantize_folder

        extra = {"method": "ptq", "weight_ranges": args.ranges}
        loop = None
        if calibrate:
            loop = _calibration_loop(Path(folder), args, progress)
            extra["calibration"] = str(args.calib_embeds) if args.calib_embeds else "\n".join(args.calib_prompts)
        path = ptq_quantize_folder(
            folder, out, qcfg, weight_ranges_method=args.ranges, extra=extra, progress=progress, calibrate=loop
        )
    if not args.quiet:
        from qvgen_export.checkpoint import read_info

        info, _ = read_info(path, check_values=False)
        size = path.stat().st_size / 2**20
        print(f"wrote {path}: {len(info.layers)} {qcfg.name} linears, {size:.1f} MiB", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
