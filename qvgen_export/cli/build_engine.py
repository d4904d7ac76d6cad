"""``qvgen-build-engine``: build the TensorRT engine of a ``trt`` folder (on a machine with TensorRT and a GPU).

Example (on the GPU machine, after copying the folder written by `qvgen-export --target trt`):
  qvgen-build-engine --model artifacts/wan_w4a4_trt --plugin-library build/native/lib/libqvgen_trt_plugin.so

Writes model.plan and engine.json (TensorRT version, GPU, plugin library sha256, profile) into the
folder. Exit codes: 0 built, 2 bad input, 3 TensorRT, a CUDA GPU or the plugin library missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qvgen_export.cli.common import HelpFormatter, cli_entry


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """The engine options, shared with ``qvgen-export --target trt`` (which builds right after export)."""
    g = p.add_argument_group("TensorRT engine")
    g.add_argument(
        "--plugin-library", type=Path, help="libqvgen_trt_plugin.so (default: $QVGEN_TRT_PLUGIN or build/native/lib)"
    )
    g.add_argument(
        "--profile",
        help="shape profile: 480p, 720p or tiny, and/or axis=min:opt:max overrides, e.g. '480p,batch=1:2:2' "
        "(axes: batch, frames, height, width, text_len; latent sizes). Default: tiny for 3-channel models, else 480p",
    )
    g.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file to read and update")
    g.add_argument("--workspace-gib", type=float, help="TensorRT workspace limit in GiB (default: TensorRT's)")


def build_from_args(folder: Path, args: Any) -> dict[str, Any]:
    from qvgen_export.targets.trt_engine import build_engine

    if not getattr(args, "quiet", False):
        print(f"building the TensorRT engine of {folder} ...", file=sys.stderr)
    record = build_engine(
        folder,
        plugin_library=args.plugin_library,
        profile=args.profile,
        timing_cache=args.timing_cache,
        workspace_gib=args.workspace_gib,
    )
    if not getattr(args, "quiet", False):
        print(
            f"wrote {folder / record['engine_file']}: TensorRT {record['tensorrt_version']}, {record['gpu']['name']} "
            f"(sm {record['gpu']['compute_capability']}), profile {record['profile']['name']}, "
            f"{record['build_seconds']} s",
            file=sys.stderr,
        )
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qvgen-build-engine", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a folder written by qvgen-export --target trt")
    p.add_argument("--quiet", action="store_true", help="print only the folder")
    add_engine_args(p)
    return p


@cli_entry("qvgen-build-engine")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    build_from_args(args.model, args)
    print(args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
