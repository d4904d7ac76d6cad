"""Scaffolding of the scale benchmarks (bench_scale.py, bench_scale_load.py): one process per stage.

Each stage runs in a fresh interpreter (``SCRIPT --stage NAME --args JSON``) so that its peak RSS
(``getrusage(RUSAGE_SELF)``) is its own and no stage's memory hides another's. The parent starts
it with :func:`run_stage`, which records the machine's load averages around it (the machine is
shared; the figures are only as good as the load). The child runs :func:`child`, which times a
stage function and adds ``seconds``, ``cpu_seconds`` and ``peak_rss_gib`` unless the stage
measured them itself (a stage that runs a command reports that command's usage).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

Stage = Callable[[dict[str, Any]], dict[str, Any]]


def stage_env() -> dict[str, str]:
    """The environment of a stage: the repository importable whatever the working directory."""
    root = str(HERE.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}


def run_stage(script: str | Path, stage: str, **args: Any) -> dict[str, Any]:
    """Run ``stage`` of ``script`` in its own process; its JSON result plus the load averages."""
    cmd = [sys.executable, str(script), "--stage", stage, "--args", json.dumps(args, default=str)]
    load_before = os.getloadavg()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=stage_env())
    if res.returncode != 0:
        raise RuntimeError(f"stage {stage} failed: {res.stderr.strip().splitlines()[-3:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    # 1/5/15-minute load averages of the machine (other sessions' work included) before and after.
    r["loadavg_before"] = [round(x, 2) for x in load_before]
    r["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    print(f"  {stage:14s} {json.dumps(shown)}", flush=True)
    return r


def child(stage: str, args: dict[str, Any], stages: Mapping[str, Stage], default_threads: int) -> dict[str, Any]:
    """The child side: set torch's threads, run ``stages[stage](args)``, add its usage."""
    import torch

    torch.set_num_threads(int(args.get("threads", default_threads)))
    t0 = time.perf_counter()
    out = stages[stage](args)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out.setdefault("seconds", time.perf_counter() - t0)
    out.setdefault("cpu_seconds", ru.ru_utime + ru.ru_stime)
    out.setdefault("peak_rss_gib", ru.ru_maxrss / 2**20)  # KiB on Linux
    return out


def make_folder(args: dict[str, Any]) -> dict[str, Any]:
    """Stage ``make``: a seeded random bf16 diffusers folder of ``config`` at ``blocks`` depth."""
    sys.path.insert(0, str(HERE))
    from make_wan_folder import WAN_CONFIGS, write_wan_folder

    cfg = {**WAN_CONFIGS[args["config"]], "num_layers": args["blocks"]}
    write_wan_folder(cfg, Path(args["folder"]))
    return {}


def ptq_folder(args: dict[str, Any]) -> dict[str, Any]:
    """Stage ``ptq``: streaming W4A4 PTQ of ``folder`` into ``ckpt`` with weight ranges ``ranges``."""
    from qvgen_export import QuantConfig
    from qvgen_export.quant.ptq_stream import ptq_quantize_folder

    ptq_quantize_folder(args["folder"], args["ckpt"], QuantConfig.preset("w4a4"), args["ranges"])
    return {}


def _calib_embeds(folder: Path, path: Path) -> None:
    """Seeded random prompt embeddings of the folder's text width (UMT5's [1, L, 4096] for Wan)."""
    import torch
    from safetensors.torch import save_file

    width = int(json.loads((folder / "config.json").read_text())["text_dim"])
    g = torch.Generator().manual_seed(0)
    pe = torch.randn(1, 16, width, generator=g)
    save_file({"prompt_embeds": pe, "negative_prompt_embeds": torch.zeros_like(pe)}, str(path))


def ptq_calibrated(args: dict[str, Any]) -> dict[str, Any]:
    """Stage ``ptq_calib``: ``qvgen-quantize --calib-embeds`` on ``folder`` (streaming, the packed
    model runs the calibration); with ``whole`` the path it replaced, measured for comparison:
    the float32 model loaded whole, ``ptq_quantize`` in place, clips calibrated, saved."""
    from qvgen_export import QuantConfig

    folder, ckpt = Path(args["folder"]), Path(args["ckpt"])
    embeds = ckpt.with_name(ckpt.stem + "_embeds.safetensors")
    _calib_embeds(folder, embeds)
    frames, height, width = (int(v) for v in args["calib_shape"].split("x"))
    steps = int(args["calib_steps"])
    if not args.get("whole"):
        from qvgen_export.cli.quantize import main as quantize_main

        argv = ["--model", str(folder), "--out", str(ckpt), "--quiet", "--ranges", args["ranges"]]
        argv += ["--calib-embeds", str(embeds), "--calib-steps", str(steps)]
        argv += ["--calib-frames", str(frames), "--calib-height", str(height), "--calib-width", str(width)]
        rc = quantize_main(argv)
        if rc != 0:
            raise RuntimeError(f"qvgen-quantize exited {rc}")
        return {}
    from qvgen_export.checkpoint import save_checkpoint
    from qvgen_export.models.wan import load_diffusers_transformer
    from qvgen_export.quant.ptq import calibrate_act_clips_loop, ptq_quantize
    from qvgen_export.runtime.prompts import load_prompt_embeds
    from qvgen_export.runtime.sampler import sample_video

    pe, ne = load_prompt_embeds(embeds)
    model = load_diffusers_transformer(folder)
    qmodel = ptq_quantize(model, QuantConfig.preset("w4a4"), progress=False, weight_ranges_method=args["ranges"])
    shape = (int(model.config.in_channels), frames, height, width)
    calibrate_act_clips_loop(
        qmodel, lambda m: sample_video(m, pe, ne, latent_shape=shape, num_steps=steps, progress=False)
    )
    save_checkpoint(qmodel, ckpt, extra={"method": "ptq"})
    return {}
