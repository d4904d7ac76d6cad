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
import os
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
    elif stage in ("load", "load_latent"):
        from qvgen_export.checkpoint import load_quantized_model

        model, info = load_quantized_model(args["ckpt"], latent_weights=stage == "load_latent")
        out["quantized_layers"] = len(info.layers)
        out["model_tensor_bytes"] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    elif stage == "cli_ptq":
        cmd = [sys.executable, "-m", "qvgen_export.cli.quantize", "--model", str(args["folder"])]
        cmd += ["--out", str(args["ckpt"]), "--quiet"]
        out["command"] = " ".join(["qvgen-quantize", *cmd[3:]])
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_env())
        if res.returncode != 0:
            raise RuntimeError(res.stderr.strip().splitlines()[-1:])
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["seconds"] = time.perf_counter() - t0
        out["cpu_seconds"] = ru.ru_utime + ru.ru_stime
        out["peak_rss_gib"] = ru.ru_maxrss / 2**20
        out["ckpt_bytes"] = Path(args["ckpt"]).stat().st_size
        return out
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
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = ru.ru_utime + ru.ru_stime
    out["peak_rss_gib"] = ru.ru_maxrss / 2**20  # KiB on Linux
    return out


def _env() -> dict[str, str]:
    """The environment of a stage: the repository importable whatever the working directory."""
    root = str(HERE.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}


def _run(stage: str, **args: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--stage", stage, "--args", json.dumps(args, default=str)]
    load_before = os.getloadavg()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_env())
    if res.returncode != 0:
        raise RuntimeError(f"stage {stage} failed: {res.stderr.strip().splitlines()[-1:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    # 1/5/15-minute load averages of the machine (other sessions' work included) before and after.
    r["loadavg_before"] = [round(x, 2) for x in load_before]
    r["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
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
        print(json.dumps(_child(a.stage, json.loads(a.args))))
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
