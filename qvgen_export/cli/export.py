"""``qvgen-export``: quantized checkpoint -> exported folder (ONNX QDQ, or plugin graph + TensorRT engine)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qvgen_export.cli.build_engine import add_engine_args, build_from_args
from qvgen_export.cli.common import EXIT_ENGINE_UNAVAILABLE, HelpFormatter, artifacts_dir, cli_entry
from qvgen_export.targets import TARGETS, get_target

# Every weight form of every target (targets/registry.py); --weight-form picks one of its target's.
WEIGHT_FORMS = sorted({f for t in TARGETS.values() for f in t.weight_forms})


def _description() -> str:
    targets = "\n".join(f"  {t.name:<5} {t.summary}" for t in TARGETS.values())
    return f"""\
Lower a qvgen-export quantized checkpoint (safetensors, see docs/checkpoint-format.md).

targets:
{targets}

The output folder holds model.onnx (+ model.onnx.data above 2 GiB) and manifest.json with
versions, shapes, the plugin's name and version (trt) and SHA-256 hashes. It is written
atomically: a failed export leaves no folder behind. Dynamic axes: batch, frames, height,
width, text length.

--target trt then builds model.plan + engine.json into the folder where TensorRT, a CUDA GPU
and the plugin library (plugins/trt, docs/tensorrt.md) are present. Where one is missing the
complete plugin-graph folder is still written, one line says what is missing, and the exit
code is {EXIT_ENGINE_UNAVAILABLE}; build the engine later on a GPU machine with qvgen-build-engine.

examples:
  qvgen-export --ckpt wan_w4a4.safetensors --target onnx --out artifacts/wan_w4a4_onnx
  qvgen-export --ckpt wan_w4a4.safetensors --target onnx --weight-form qdq   # standard ONNX only
  qvgen-export --ckpt wan_w4a4.safetensors --target trt --profile 480p,batch=1:2:2
  qvgen-export --ckpt wan_w4a4.safetensors --target trt --no-engine   # plugin graph only

exit codes: 0 done, 2 bad input (one line names the file and the problem),
{EXIT_ENGINE_UNAVAILABLE} folder written but no engine built (TensorRT/GPU/plugin library missing).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qvgen-export", description=_description(), formatter_class=HelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path, help="quantized checkpoint (.safetensors)")
    p.add_argument("--target", default="onnx", help=f"export target: {', '.join(TARGETS)}")
    p.add_argument(
        "--weight-form",
        choices=WEIGHT_FORMS,
        help="onnx: how weights are lowered: nbits (default; ONNX Runtime's 4-bit MatMulNBits, weights stay "
        "packed in memory) or qdq (INT4 DequantizeLinear + MatMul, standard ONNX; ORT dequantizes every weight "
        "to float32 per call)",
    )
    p.add_argument("--out", type=Path, help="output folder (default: artifacts/<ckpt stem>_<target>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-engine", action="store_true", help="trt: write the plugin graph only, build no engine")
    p.add_argument("--quiet", action="store_true", help="print only the output path")
    add_engine_args(p)
    return p


@cli_entry("qvgen-export")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qvgen_export.export.pipeline import check_target, export_checkpoint

    spec = args.target if args.weight_form is None else f"{args.target}:{args.weight_form}"
    check_target(spec)
    target = get_target(spec)
    out = args.out or artifacts_dir() / f"{args.ckpt.stem}_{target.name}"
    if not args.quiet:
        print(f"exporting {args.ckpt} -> {out} (target {target.spec}) ...", file=sys.stderr)
    fields = export_checkpoint(args.ckpt, out, target=spec, overwrite=args.overwrite, progress=not args.quiet)
    if not args.quiet:
        qc = fields["quant_config"]
        print(
            f"wrote {out}: {fields['num_quantized_linears']} W{qc['weight_bits']}A{qc['act_bits']} linears "
            f"({fields['num_quant_nodes']} {target.quant_node} nodes), opset {fields['opset']}, "
            f"{fields['export_seconds']} s",
            file=sys.stderr,
        )
    if target.name == "trt" and not args.no_engine:
        build_from_args(out, args)  # EngineUnavailableError -> one line, exit 3 (folder kept)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
