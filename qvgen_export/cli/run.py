"""``qvgen-run``: text-to-video sampling with an exported model or a checkpoint, and parity checks.

Pixel-space models (the embedded tiny world, 3 channels) write GIFs, a labelled contact sheet and
their latents. Latent-space models (real Wan, 16 channels) write their latents
(``<tag>_latents.safetensors``), and the videos too when ``--vae`` names a local Wan VAE folder;
parity then compares latents.

examples:
  qvgen-run --model artifacts/wan_w4a4_onnx --prompt "a red circle moving right"
  qvgen-run --model artifacts/wan_w4a4_trt               # TensorRT engine if built and runnable, else ONNX Runtime
  qvgen-run --ckpt wan_w4a4.safetensors                  # PyTorch fake-quant reference
  qvgen-run --model artifacts/wan_w4a4_onnx --parity wan_w4a4.safetensors
  qvgen-run --model artifacts/wan_w4a4_trt --parity wan_w4a4.safetensors --reference ort:artifacts/wan_w4a4_onnx
  # real Wan 2.1 (480p: 21 latent frames of 60x104), UMT5 embeddings computed beforehand
  qvgen-run --ckpt wan14b_w4a4.safetensors --prompt-embeds embeds.safetensors \\
      --frames 21 --height 60 --width 104 --vae Wan2.1-T2V-14B-Diffusers/vae
  qvgen-run --ckpt wan14b_w4a4.safetensors --text-encoder Wan2.1-T2V-14B-Diffusers \\
      --vae Wan2.1-T2V-14B-Diffusers --prompt "a cat surfing" --frames 21 --height 60 --width 104
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qvgen_export.cli.common import HelpFormatter, add_sampling_args, artifacts_dir, cli_entry, positive_int


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qvgen-run", description=__doc__, formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="exported folder (manifest.json + model.onnx), either target")
    src.add_argument("--ckpt", type=Path, help="quantized checkpoint, run by PyTorch (fake-quant reference)")
    p.add_argument(
        "--parity", type=Path, metavar="CKPT", help="with --model: compare against this checkpoint (Polygraphy)"
    )
    p.add_argument(
        "--backend",
        choices=["auto", "ort", "trt"],
        default="auto",
        help="with --model: ort = ONNX Runtime (either target; the plugin graph via onnxruntime-extensions), "
        "trt = the folder's TensorRT engine, auto = trt where the folder has an engine this machine can run",
    )
    p.add_argument(
        "--reference",
        default="pytorch",
        metavar="SIDE",
        help="with --parity: what the model is compared against: pytorch (the checkpoint) or ort:DIR / trt:DIR",
    )
    p.add_argument(
        "--int4",
        action="store_true",
        help="with --ckpt: run real INT4 GEMMs through the native torch-int4 backend (CUDA kernels, or the "
        "C++ reference on CPU; built from a source checkout with scripts/build_native.sh)",
    )
    p.add_argument("--frames", type=int, default=8, help="latent frames")
    p.add_argument("--height", type=int, default=32, help="latent height (multiple of the patch)")
    p.add_argument("--width", type=int, default=32, help="latent width (multiple of the patch)")
    p.add_argument(
        "--prompt-embeds",
        type=Path,
        metavar="FILE",
        help="safetensors with prompt_embeds [B,L,D] and optionally negative_prompt_embeds "
        "(real Wan: UMT5 outputs); default: the tiny world's text encoder on --prompt",
    )
    p.add_argument(
        "--text-encoder",
        type=Path,
        metavar="DIR",
        help="encode --prompt with the UMT5 text_encoder/ and tokenizer/ of this local Wan pipeline folder "
        "(as WanPipeline does; needs transformers)",
    )
    p.add_argument(
        "--vae",
        type=Path,
        metavar="DIR",
        help="latent-space models: decode with this local diffusers AutoencoderKLWan folder (or a pipeline "
        "folder holding vae/); without it only latents are written",
    )
    p.add_argument("--out", type=Path, help="output folder (default: $QVGEN_ARTIFACTS/run, else artifacts/run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_sampling_args(p, steps=20)
    return p


@cli_entry("qvgen-run")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("steps", "frames", "height", "width"):
        positive_int(f"--{name}", getattr(args, name))
    if args.int4 and not args.ckpt:
        raise ValueError("--int4 runs a checkpoint natively; give --ckpt")
    if args.parity and not args.model:
        raise ValueError("--parity compares an exported --model against a checkpoint; give --model")
    from qvgen_export.runtime.backends import Denoiser, TorchBackend, open_backend
    from qvgen_export.runtime.generate import GenerationSpec, generate
    from qvgen_export.runtime.prompts import DEFAULT_PROMPTS, encode_prompts, load_prompt_embeds

    out = args.out or artifacts_dir() / "run"
    progress = not args.quiet
    if args.model:
        backend = open_backend(args.model, args.backend)
        tag = {"onnxruntime": "onnx", "onnxruntime-trt": "trt_ort", "tensorrt": "trt"}.get(backend.name, backend.name)
    elif args.int4:
        from qvgen_export.runtime.torch_int4 import load_int4_model, require_native_library

        require_native_library()  # one line, before the checkpoint is read
        backend = TorchBackend(load_int4_model(args.ckpt), name="torch-int4")
        tag = "int4"
    else:
        from qvgen_export.checkpoint import load_quantized_model

        backend = TorchBackend(load_quantized_model(args.ckpt)[0], name="torch-fakequant")
        tag = "torch"
    cfg = backend.model_config
    pt, ph, pw = cfg["patch_size"]
    if args.frames % pt or args.height % ph or args.width % pw:
        raise ValueError(f"--frames/--height/--width must be multiples of the patch size ({pt}, {ph}, {pw})")
    channels = int(cfg["in_channels"])
    shape = (channels, args.frames, args.height, args.width)
    if args.prompt_embeds and args.text_encoder:
        raise ValueError("give --prompt-embeds or --text-encoder, not both")
    if args.prompt_embeds:
        pe, ne = load_prompt_embeds(args.prompt_embeds)
        prompts = [f"embeds_{i}" for i in range(pe.shape[0])]
    elif args.text_encoder:
        from qvgen_export.runtime.prompts import umt5_prompt_embeds

        prompts = list(args.prompt or DEFAULT_PROMPTS)
        pe, ne = umt5_prompt_embeds(args.text_encoder, prompts, args.negative_prompt)
    else:
        prompts = list(args.prompt or DEFAULT_PROMPTS)
        pe, ne = encode_prompts(prompts, args.negative_prompt, int(cfg["text_dim"]))
    spec = GenerationSpec(
        prompts, args.negative_prompt, shape, args.steps, args.guidance, args.scheduler, args.shift, args.seed
    )
    decoder = None
    if args.vae:
        from qvgen_export.runtime.video import wan_vae_decoder

        if channels == 3:
            raise ValueError("--vae decodes latent-space models; this model samples pixels (3 channels)")
        decoder = wan_vae_decoder(args.vae)
    res = generate(Denoiser(backend), spec, pe, ne, out, tag, progress, decoder=decoder)
    if res["videos"]:
        print(f"wrote {len(res['videos'])} videos, {res['contact_sheet']} and {res['latents']}", file=sys.stderr)
    else:
        print(f"wrote {res['latents']} ({channels}-channel latents; --vae DIR decodes them)", file=sys.stderr)
    if args.parity:
        from qvgen_export.checkpoint import load_quantized_model
        from qvgen_export.parity.report import SamplingSpec, run_parity, write_report

        model, _ = load_quantized_model(args.parity)
        pspec = SamplingSpec(pe, ne, shape, args.steps, args.guidance, args.scheduler, args.shift, args.seed)
        test = f"{'trt' if backend.name == 'tensorrt' else 'ort'}:{args.model}"
        report = run_parity(model, test, pspec, out / "parity_work", progress=progress, reference=args.reference)
        _, mp = write_report(report, out)
        s = report["summary"]
        print(f"parity {'PASS' if s['passed'] else 'FAIL'}: report {mp}", file=sys.stderr)
        print(out)
        return 0 if s["passed"] else 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
