"""``qvgen-export``: quantized checkpoint -> exported folder (ONNX with INT4 QDQ; TensorRT later)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qvgen_export.cli.common import HelpFormatter, artifacts_dir, cli_entry

DESCRIPTION = """\
Lower a qvgen-export quantized checkpoint (safetensors, see docs/checkpoint-format.md).

targets:
  onnx  ONNX opset 21: INT4 weight initializers feeding DequantizeLinear, per-token dynamic
        activation QuantizeLinear/DequantizeLinear with the timestep-group clip table in the
        graph; dynamic batch, frames, height, width and text length. Runs on ONNX Runtime.
  trt   one custom INT4 GEMM node per quantized linear plus a TensorRT engine (not yet
        available in this version).

The output folder holds model.onnx (+ model.onnx.data above 2 GiB) and manifest.json with
versions, shapes and SHA-256 hashes. It is written atomically: a failed export leaves no
folder behind.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qvgen-export", description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path, help="quantized checkpoint (.safetensors)")
    p.add_argument("--target", default="onnx", help="export target: onnx or trt")
    p.add_argument("--out", type=Path, help="output folder (default: artifacts/<ckpt stem>_<target>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="print only the output path")
    return p


@cli_entry("qvgen-export")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qvgen_export.export.pipeline import check_target, export_checkpoint

    check_target(args.target)
    out = args.out or artifacts_dir() / f"{args.ckpt.stem}_{args.target}"
    if not args.quiet:
        print(f"exporting {args.ckpt} -> {out} (target {args.target}) ...", file=sys.stderr)
    fields = export_checkpoint(args.ckpt, out, target=args.target, overwrite=args.overwrite, progress=not args.quiet)
    if not args.quiet:
        qc = fields["quant_config"]
        print(
            f"wrote {out}: {fields['num_quantized_linears']} W{qc['weight_bits']}A{qc['act_bits']} linears, "
            f"opset {fields['opset']}, {fields['export_seconds']} s",
            file=sys.stderr,
        )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
