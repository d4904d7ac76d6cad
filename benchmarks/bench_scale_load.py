"""Peak RSS and time of streaming PTQ and streaming checkpoint loading at real Wan widths.

Usage (the run committed as benchmarks/results/bench_scale_load.json, 2 shared cores):
    python benchmarks/bench_scale_load.py --shapes 1.3b:2,1.3b:4,14b:2,14b:4 --load-shapes 1.3b:2,1.3b:4,14b:2 \
        --work artifacts/bench_scale --out benchmarks/results/bench_scale_load.json

For each ``config:blocks`` a random bf16 diffusers folder is written (make_wan_folder.py), then
each stage runs in its own process, which reports its own wall time and peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``): ``ptq`` = ``ptq_quantize_folder`` (``--ranges``, default
``minmax``: the search's cost is measured separately per weight), ``load`` =
``load_quantized_model`` (the fake-quant model holds a float32 latent weight per quantized
linear, so its size grows with depth by design). ``rsearch`` times the weight-range search,
reference loop vs vectorised, on one 1536x8960 layer with 1 and 2 threads, and extrapolates to
the 1.39e9 block-linear weights of Wan 1.3B.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WAN13_BLOCK_LINEAR_WEIGHTS = 1.39e9


def _child(stage: str, args: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(int(args.get("threads", 1)))
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if stage == "make":
        sys.path.insert(0, str(HERE))
        from make_wan_folder import WAN_CONFIGS, write_wan_folder

        cfg = {**WAN_CONFIGS[args["config"]], "num_layers": args["blocks"]}
        write_wan_folder(cfg, Path(args["folder"]))
    elif stage == "ptq":
        from qvgen_export import QuantConfig
        from qvgen_export.quant.ptq_stream import ptq_quantize_folder

        ptq_quantize_folder(args["folder"], args["ckpt"], QuantConfig.preset("w4a4"), args["ranges"])
    elif stage == "load":
        from qvgen_export.checkpoint import load_quantized_model

        _model, info = load_quantized_model(args["ckpt"])
        out["quantized_layers"] = len(info.layers)
    elif stage == "rsearch":
        from qvgen_export import QuantConfig
        from qvgen_export.quant.ptq import mse_search_weight_reference
        from qvgen_export.quant.range_search import minmax_weight_ranges, mse_search_weight_fast

        w = torch.randn(1536, 8960, generator=torch.Generator().manual_seed(0)) * 0.02
        cfg = QuantConfig.preset("w4a4")
        for name, fn in (
            ("reference", mse_search_weight_reference),
            ("vectorised", mse_search_weight_fast),
            ("minmax", minmax_weight_ranges),
        ):
            t = time.perf_counter()
            s, z = fn(w, cfg)
            dt = time.perf_counter() - t
            out[f"{name}_us_per_weight"] = dt / w.numel() * 1e6
            out[f"{name}_wan1_3b_minutes"] = dt / w.numel() * WAN13_BLOCK_LINEAR_WEIGHTS / 60
            if name == "reference":
                ref = (s, z)
            elif name == "vectorised":
                out["vectorised_rows_equal_reference"] = int(((s == ref[0]) & (z == ref[1])).all(1).sum())
                out["rows"] = int(s.shape[0])
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return out


def _run(stage: str, **args: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--stage", stage, "--args", json.dumps(args, default=str)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"stage {stage} failed: {res.stderr.strip().splitlines()[-1:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"  {stage:8s} {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})}", flush=True
    )
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--args", help=argparse.SUPPRESS)
    ap.add_argument("--shapes", default="1.3b:2,1.3b:4", help="config:blocks list for folder + PTQ")
    ap.add_argument("--load-shapes", default=None, help="subset that is also loaded (default: all)")
    ap.add_argument("--ranges", default="minmax", choices=("minmax", "mse"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-rsearch", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("artifacts/bench_scale"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_scale_load.json")
    a = ap.parse_args(argv)
    if a.stage:
        print(json.dumps(_child(a.stage, json.loads(a.args))))
        return 0
    shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    load_shapes = set(shapes if a.load_shapes is None else a.load_shapes.split(","))
    result: dict[str, Any] = {"command": " ".join(["python", "benchmarks/bench_scale_load.py", *sys.argv[1:]])}
    result.update({"ranges": a.ranges, "threads": a.threads, "runs": {}})
    for shape in shapes:
        config, blocks = shape.split(":")
        folder = a.work / f"wan{config}_{blocks}blk"
        ckpt = a.work / f"wan{config}_{blocks}blk_w4a4.safetensors"
        shutil.rmtree(folder, ignore_errors=True)
        a.work.mkdir(parents=True, exist_ok=True)
        print(f"{shape}:", flush=True)
        run: dict[str, Any] = {"make": _run("make", config=config, blocks=int(blocks), folder=folder)}
        run["bf16_bytes"] = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        run["ptq"] = _run("ptq", folder=folder, ckpt=ckpt, ranges=a.ranges, threads=a.threads)
        run["ckpt_bytes"] = ckpt.stat().st_size
        run["size_ratio"] = run["ckpt_bytes"] / run["bf16_bytes"]
        if shape in load_shapes:
            run["load"] = _run("load", ckpt=ckpt, threads=a.threads)
        result["runs"][shape] = run
        shutil.rmtree(folder, ignore_errors=True)
        ckpt.unlink(missing_ok=True)
    if not a.no_rsearch:
        print("range search, one 1536x8960 layer:", flush=True)
        result["range_search"] = {f"threads_{t}": _run("rsearch", threads=t) for t in (1, 2)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
