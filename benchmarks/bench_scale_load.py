"""Peak RSS and time of streaming PTQ and streaming checkpoint loading at real Wan widths.

Usage (the run committed as benchmarks/results/bench_scale_load.json, 2 cores shared with other
sessions; the JSON records the load average around each stage):
    python benchmarks/bench_scale_load.py --shapes 1.3b:2,1.3b:4,14b:2,14b:4,1.3b:30 \
        --latent-shapes 1.3b:2 --cli-ptq-shapes 1.3b:30 --work artifacts/bench_scale_load \
        --out benchmarks/results/bench_scale_load.json

For each ``config:blocks`` a random bf16 diffusers folder is written (make_wan_folder.py), then
each stage runs in its own process, which reports its own wall time, CPU time and peak RSS
(``getrusage(RUSAGE_SELF)``): ``ptq`` = ``ptq_quantize_folder`` (``--ranges``, default
``minmax``), ``load`` = ``load_quantized_model`` (packed codes per quantized linear, so the
model is about the checkpoint's size), ``load_latent`` (``--latent-shapes``) the same with
float32 latent weights, as loads were before. For ``--cli-ptq-shapes`` the ``ptq`` stage is
replaced by ``cli_ptq``, the user's command ``qvgen-quantize --model FOLDER`` with its defaults
(MSE range search, torch's thread count: all cores), reporting that process's wall time, CPU time
and peak RSS (``RUSAGE_CHILDREN``); its checkpoint is the one loaded.
``rsearch`` times the weight-range search, reference loop vs vectorised, on one 1536x8960 layer
with 1 and 2 threads, and extrapolates to the 1.39e9 block-linear weights of Wan 1.3B.
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

from stages import child, make_folder, ptq_folder, run_stage, stage_env

HERE = Path(__file__).resolve().parent
WAN13_BLOCK_LINEAR_WEIGHTS = 1.39e9


def _load(args: dict[str, Any], latent: bool = False) -> dict[str, Any]:
    """Stage ``load`` (packed codes per quantized linear) or ``load_latent`` (float32 latent weights)."""
    from qvgen_export.checkpoint import load_quantized_model

    out: dict[str, Any] = {}
    model, info = load_quantized_model(args["ckpt"], latent_weights=latent)
    out["quantized_layers"] = len(info.layers)
    out["model_tensor_bytes"] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return out


def _cli_ptq(args: dict[str, Any]) -> dict[str, Any]:
    """Stage ``cli_ptq``: the user's ``qvgen-quantize --model FOLDER`` with its defaults; that
    command's own wall time, CPU time and peak RSS (``RUSAGE_CHILDREN``)."""
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "qvgen_export.cli.quantize", "--model", str(args["folder"])]
    cmd += ["--out", str(args["ckpt"]), "--quiet"]
    out["command"] = " ".join(["qvgen-quantize", *cmd[3:]])
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=stage_env())
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip().splitlines()[-1:])
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = ru.ru_utime + ru.ru_stime
    out["peak_rss_gib"] = ru.ru_maxrss / 2**20
    out["ckpt_bytes"] = Path(args["ckpt"]).stat().st_size
    return out


def _rsearch(args: dict[str, Any]) -> dict[str, Any]:
    """Stage ``rsearch``: the weight-range search, reference loop vs vectorised, on one layer."""
    import torch

    from qvgen_export import QuantConfig
    from qvgen_export.quant.ptq import mse_search_weight_reference
    from qvgen_export.quant.range_search import minmax_weight_ranges, mse_search_weight_fast

    out: dict[str, Any] = {}
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
    return out


STAGES = {
    "make": make_folder,
    "ptq": ptq_folder,
    "load": _load,
    "load_latent": lambda args: _load(args, latent=True),
    "cli_ptq": _cli_ptq,
    "rsearch": _rsearch,
}


def _run(stage: str, **args: Any) -> dict[str, Any]:
    return run_stage(__file__, stage, **args)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--args", help=argparse.SUPPRESS)
    ap.add_argument("--shapes", default="1.3b:2,1.3b:4", help="config:blocks list for folder + PTQ")
    ap.add_argument("--load-shapes", default=None, help="subset that is also loaded (default: all)")
    ap.add_argument(
        "--cli-ptq-shapes",
        default="",
        help="subset quantized by the qvgen-quantize CLI (MSE search) instead of the ptq stage; loads its checkpoint",
    )
    ap.add_argument("--latent-shapes", default="", help="subset also loaded with float32 latent weights")
    ap.add_argument("--reuse-folders", action="store_true", help="keep (and reuse) the generated folders")
    ap.add_argument(
        "--reuse-ckpts", action="store_true", help="keep checkpoints; an existing one is loaded without PTQ"
    )
    ap.add_argument("--merge", action="store_true", help="add to the runs already in --out (each keeps its command)")
    ap.add_argument("--ranges", default="minmax", choices=("minmax", "mse"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-rsearch", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("artifacts/bench_scale"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_scale_load.json")
    a = ap.parse_args(argv)
    if a.stage:
        print(json.dumps(child(a.stage, json.loads(a.args), STAGES, default_threads=1)))
        return 0

    def listed(arg: str) -> list[str]:
        return [s.strip() for s in arg.split(",") if s.strip()]

    shapes = listed(a.shapes)
    load_shapes = set(shapes if a.load_shapes is None else listed(a.load_shapes))
    cli_shapes, latent_shapes = set(listed(a.cli_ptq_shapes)), set(listed(a.latent_shapes))
    command = " ".join(["python", "benchmarks/bench_scale_load.py", *sys.argv[1:]])
    result: dict[str, Any] = {"command": command, "ranges": a.ranges, "threads": a.threads, "runs": {}}
    if a.merge and a.out.is_file():
        result = json.loads(a.out.read_text())
        result.setdefault("merged_commands", []).append(command)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for shape in shapes:
        config, blocks = shape.split(":")
        folder = a.work / f"wan{config}_{blocks}blk"
        ckpt = a.work / f"wan{config}_{blocks}blk_w4a4.safetensors"
        a.work.mkdir(parents=True, exist_ok=True)
        print(f"{shape}:", flush=True)
        run: dict[str, Any] = {}
        if not (a.reuse_folders and (folder / "config.json").is_file()):
            shutil.rmtree(folder, ignore_errors=True)
            run["make"] = _run("make", config=config, blocks=int(blocks), folder=folder)
        run["bf16_bytes"] = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        if a.reuse_ckpts and ckpt.is_file():
            run["ptq"] = "reused an existing checkpoint"
        elif shape in cli_shapes:
            run["cli_ptq"] = _run("cli_ptq", folder=folder, ckpt=ckpt)
        else:
            run["ptq"] = _run("ptq", folder=folder, ckpt=ckpt, ranges=a.ranges, threads=a.threads)
        run["ckpt_bytes"] = ckpt.stat().st_size
        run["size_ratio"] = run["ckpt_bytes"] / run["bf16_bytes"]
        if shape in load_shapes:
            run["load"] = _run("load", ckpt=ckpt, threads=a.threads)
        if shape in latent_shapes:
            run["load_latent"] = _run("load_latent", ckpt=ckpt, threads=a.threads)
        run["command"] = command
        result["runs"][shape] = run
        if not a.reuse_folders:
            shutil.rmtree(folder, ignore_errors=True)
        if not a.reuse_ckpts:
            ckpt.unlink(missing_ok=True)
        a.out.write_text(json.dumps(result, indent=2) + "\n")  # what is done so far, shape by shape
    if not a.no_rsearch:
        print("range search, one 1536x8960 layer:", flush=True)
        result["range_search"] = {f"threads_{t}": _run("rsearch", threads=t) for t in (1, 2)}
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
