"""Real scale end to end: Wan 2.1 shapes through streaming PTQ, export and ONNX Runtime, vs plain torch.onnx.

Usage (the runs committed under benchmarks/results/, on the 2-core machine; PYTHONPATH=.):
    python benchmarks/bench_scale.py --config 1.3b --ranges minmax --out benchmarks/results/bench_scale_wan1_3b.json
    python benchmarks/bench_scale.py --config 14b --blocks 4,8 --ranges minmax --targets onnx --no-torch-export \\
        --no-ort --out benchmarks/results/bench_scale_wan14b_depth.json
    python benchmarks/bench_scale.py --config 1.3b --blocks 2,4 --ranges minmax --no-torch-export --no-ort \\
        --equivalence --out benchmarks/results/bench_scale_wan1_3b_equivalence.json

For each depth a random bf16 diffusers folder with the real config is written
(make_wan_folder.py), then every stage runs in its own process and reports its own wall time and
peak RSS (``getrusage``), so one stage's memory never hides another's:
- ``ptq``: ``ptq_quantize_folder`` (streaming, ``--ranges``; the full MSE search by default,
  ``mse-fast`` its coarse-to-fine form, ``minmax`` no search). The PTQ time alone of the real
  depth, e.g. for the 10-minute goal of mse-fast on Wan 1.3B:
  ``--config 1.3b --ranges mse-fast --targets "" --no-torch-export --no-ort``;
- ``export_<target>``: ``qvgen_export.export.pipeline.export_checkpoint`` (3 traced blocks, the
  rest instantiated block by block from the file, weights streamed to external data), with its
  ``weight_form`` and ``phases``: wall time, CPU time and peak RSS of each phase
  (phase_profile.py; ``instantiate_blocks`` runs inside ``save``, ``trace`` and ``optimize``
  after ``build_template``);
- ``torch_export``: plain ``torch.onnx.export(dynamo=True)`` of the bf16 model loaded from the
  folder, with the same example inputs and dynamic axes as the qvgen export, saved with external
  data: the baseline of ``export_time_ratio``;
- ``ort``: ONNX Runtime session on the qvgen onnx export (``weight_form``: the one it was
  exported with): RSS growth of creating the session and one forward at a small latent (1 frame
  of 16x16, 8 text tokens);
- ``equivalence_<target>`` (``--equivalence``): the same checkpoint exported directly (whole
  model traced) against the stitched export: op counts and ORT outputs. A model of at most 3
  blocks is traced whole by both, so only depths >= 4 exercise the stitcher.
With two or more depths, ``extrapolation`` puts each stage's peak RSS and time on the line through
the smallest and largest depth and reads it at the config's real depth.
Keys: ``size_ratio`` (W4A4 checkpoint bytes / bf16 safetensors bytes), ``export_time_ratio``
(qvgen onnx export seconds / plain torch.onnx.export seconds), ``ort_memory_ratio`` (session RSS
growth / ONNX files' bytes), and each stage's ``seconds`` and ``peak_rss_gib``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from stages import child, make_folder, ptq_calibrated, ptq_folder, run_stage

HERE = Path(__file__).resolve().parent


def _rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _export_profile() -> Any:
    """Per-phase wall time, CPU time and peak RSS of the export (phase_profile.py)."""
    import onnx
    import onnx_ir
    import torch

    from qvgen_export.export import block_stitch, onnx_export, pipeline

    sys.path.insert(0, str(HERE))
    from phase_profile import PhaseProfile

    profile = PhaseProfile()
    for obj, attr, name in (
        (block_stitch, "build_model", "build_template"),
        (torch.onnx, "export", "trace"),
        (onnx_export, "optimize_graph", "optimize"),
        (block_stitch, "stitch_blocks", "stitch"),
        (block_stitch._BlockTensors, "_read", "instantiate_blocks"),
        (onnx_ir, "save", "save"),
        (onnx.checker, "check_model", "check"),
        (pipeline, "sha256_file", "hash_checkpoint"),
        (pipeline, "write_manifest", "manifest"),
    ):
        profile.wrap(obj, attr, name)
    return profile


def _export(args: dict[str, Any]) -> dict[str, Any]:
    """Stage ``export``: the qvgen export of ``ckpt`` to ``dir`` for ``target``, per phase."""
    from qvgen_export.export import pipeline

    out: dict[str, Any] = {}
    profile = _export_profile()
    fields = pipeline.export_checkpoint(args["ckpt"], args["dir"], target=args["target"], overwrite=True)
    out["nodes_quant"] = fields["num_quant_nodes"]
    out["weight_form"] = fields.get("weight_form")
    out["onnx_bytes"] = sum(f.stat().st_size for f in Path(args["dir"]).glob("model.onnx*"))
    out["phases"] = profile.report()
    return out


def _torch_export(args: dict[str, Any]) -> dict[str, Any]:
    """Stage ``torch_export``: plain ``torch.onnx.export(dynamo=True)`` of the bf16 model (the baseline)."""
    import torch

    from qvgen_export.artifact.contract import INPUT_NAMES, OUTPUT_NAMES, axis_dims
    from qvgen_export.export.onnx_export import _Positional, example_inputs, quiet_exporter
    from qvgen_export.models.wan import load_diffusers_transformer

    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    # The whole model in bf16 (diffusers keeps some modules float32 on load; a plain export of a
    # bf16 model casts them too).
    model = load_diffusers_transformer(args["folder"], dtype=torch.bfloat16).to(torch.bfloat16).eval()
    t_load = time.perf_counter() - t0
    inputs = tuple(t.to(torch.bfloat16) if t.is_floating_point() else t for t in example_inputs(model.config))
    t1 = time.perf_counter()
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            _Positional(model),
            inputs,
            dynamo=True,
            opset_version=21,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=axis_dims(model.config),
            optimize=True,
        )
    out["trace_optimize_seconds"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    Path(args["dir"]).mkdir(parents=True, exist_ok=True)
    program.save(str(Path(args["dir"]) / "model.onnx"), external_data=True)
    out["save_seconds"] = time.perf_counter() - t2
    out["load_seconds"] = t_load
    out["onnx_bytes"] = sum(f.stat().st_size for f in Path(args["dir"]).iterdir())
    return out


def _equivalence(args: dict[str, Any]) -> dict[str, Any]:
    """Stage ``equivalence``: the stitched export (already written) against a direct export of the whole model."""
    from collections import Counter

    import numpy as np
    import onnx

    from qvgen_export.checkpoint import load_quantized_model
    from qvgen_export.export.onnx_export import export_onnx
    from qvgen_export.export.pipeline import ORT_SESSION_CONFIG
    from qvgen_export.runtime.backends import ort_session

    out: dict[str, Any] = {}
    model, _ = load_quantized_model(args["ckpt"])
    direct = Path(args["direct"])
    direct.mkdir(parents=True, exist_ok=True)
    path = export_onnx(model, direct, target=args["target"], inplace=True).onnx_path
    del model
    stitched = Path(args["dir"]) / "model.onnx"
    a, b = onnx.load(str(stitched), load_external_data=False), onnx.load(str(path), load_external_data=False)
    out["same_op_counts"] = Counter(n.op_type for n in a.graph.node) == Counter(n.op_type for n in b.graph.node)
    out["nodes"] = [len(a.graph.node), len(b.graph.node)]
    cfg = json.loads((Path(args["dir"]) / "manifest.json").read_text())["model_config"]
    g = np.random.default_rng(0)
    feed = {
        "hidden_states": g.standard_normal((1, cfg["in_channels"], 1, 16, 16), dtype=np.float32),
        "timestep": np.array([500.0], dtype=np.float32),
        "encoder_hidden_states": g.standard_normal((1, 8, cfg["text_dim"]), dtype=np.float32),
    }
    ys = [ort_session(f, ORT_SESSION_CONFIG, target=args["target"]).run(None, feed)[0] for f in (stitched, path)]
    out["max_abs_diff"] = float(np.abs(ys[0] - ys[1]).max())
    out["output_scale"] = float(np.abs(ys[1]).max())
    shutil.rmtree(direct, ignore_errors=True)
    return out


def _ort(args: dict[str, Any]) -> dict[str, Any]:
    """Stage ``ort``: ONNX Runtime session memory and one forward on the qvgen onnx export."""
    import numpy as np
    import torch

    from qvgen_export.runtime.backends import OrtBackend

    out: dict[str, Any] = {}
    before = _rss_gib()
    backend = OrtBackend(args["dir"])
    out["session_rss_gib"] = _rss_gib() - before
    cfg = backend.model_config
    g = np.random.default_rng(0)
    x = torch.from_numpy(g.standard_normal((1, cfg["in_channels"], 1, 16, 16), dtype=np.float32))
    e = torch.from_numpy(g.standard_normal((1, 8, cfg["text_dim"]), dtype=np.float32))
    t1 = time.perf_counter()
    backend.run(x, torch.tensor([500.0]), e)
    out["forward_seconds"] = time.perf_counter() - t1
    out["forward_shape"] = [1, cfg["in_channels"], 1, 16, 16]
    return out


STAGES = {
    "make": make_folder,
    "ptq": ptq_folder,
    "ptq_calib": ptq_calibrated,
    "export": _export,
    "torch_export": _torch_export,
    "equivalence": _equivalence,
    "ort": _ort,
}


def _run(stage: str, **args: Any) -> dict[str, Any]:
    return run_stage(__file__, stage, **args)


def _extrapolate(runs: dict[str, dict[str, Any]], depth: int) -> dict[str, Any]:
    """Each stage's peak RSS and time at the real ``depth``, on the line through the smallest and
    largest measured depths (per-block growth = the slope), plus the peak's relative change."""
    lo, hi = min(runs, key=int), max(runs, key=int)
    out: dict[str, Any] = {"depth": depth, "from_depths": [int(lo), int(hi)]}
    for stage in [k for k, v in runs[hi].items() if isinstance(v, dict) and "peak_rss_gib" in v and k in runs[lo]]:
        est: dict[str, float] = {}
        for key in ("peak_rss_gib", "seconds"):
            y0, y1 = runs[lo][stage][key], runs[hi][stage][key]
            slope = (y1 - y0) / (int(hi) - int(lo))
            est[f"{key}_per_block"] = slope
            est[key] = y1 + slope * (depth - int(hi))
        est["peak_rss_change"] = runs[hi][stage]["peak_rss_gib"] / runs[lo][stage]["peak_rss_gib"] - 1
        out[stage] = est
    for key, per in (("ckpt_bytes", "ckpt_bytes_per_block"), ("bf16_bytes", "bf16_bytes_per_block")):
        if key not in runs[hi] or key not in runs[lo]:  # e.g. --no-ptq: no calibration-free checkpoint
            continue
        slope = (runs[hi][key] - runs[lo][key]) / (int(hi) - int(lo))
        out[per] = slope
        out[key] = runs[hi][key] + slope * (depth - int(hi))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--args", help=argparse.SUPPRESS)
    ap.add_argument("--config", default="1.3b", choices=("1.3b", "14b"))
    ap.add_argument("--blocks", default="", help="comma-separated depths (default: the real depth)")
    ap.add_argument("--targets", default="onnx,trt", help="export targets to measure")
    ap.add_argument("--ranges", default="mse", choices=("minmax", "mse", "mse-fast"), help="PTQ weight ranges")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-torch-export", action="store_true", help="skip the plain torch.onnx.export baseline")
    ap.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime session")
    ap.add_argument(
        "--equivalence", action="store_true", help="also export each target directly (whole model) and compare"
    )
    ap.add_argument(
        "--calib",
        default="",
        choices=("", "stream", "both"),
        help="also run calibrated PTQ (qvgen-quantize --calib-embeds): stream = the streaming path, "
        "both = and the former whole-model path, for comparison",
    )
    ap.add_argument("--calib-shape", default="1x8x8", help="latent FxHxW of the calibration run")
    ap.add_argument("--calib-steps", type=int, default=2, help="sampling steps of the calibration run")
    ap.add_argument("--no-ptq", action="store_true", help="skip the calibration-free PTQ (with --calib and no targets)")
    ap.add_argument("--work", type=Path, default=Path("artifacts/bench_scale"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_scale_wan1_3b.json")
    a = ap.parse_args(argv)
    if a.stage:
        print(json.dumps(child(a.stage, json.loads(a.args), STAGES, default_threads=2)))
        return 0
    sys.path.insert(0, str(HERE))
    from make_wan_folder import WAN_CONFIGS

    depths = [int(b) for b in a.blocks.split(",") if b.strip()] or [int(WAN_CONFIGS[a.config]["num_layers"])]
    result: dict[str, Any] = {"command": shlex.join(["python", "benchmarks/bench_scale.py", *(argv or sys.argv[1:])])}
    result.update({"config": a.config, "ranges": a.ranges, "threads": a.threads, "runs": {}})
    for blocks in depths:
        tag = f"wan{a.config}_{blocks}blk"
        folder, ckpt = a.work / tag, a.work / f"{tag}_w4a4.safetensors"
        shutil.rmtree(folder, ignore_errors=True)
        a.work.mkdir(parents=True, exist_ok=True)
        print(f"{a.config}, {blocks} blocks:", flush=True)
        run: dict[str, Any] = {"make": _run("make", config=a.config, blocks=blocks, folder=folder)}
        run["bf16_bytes"] = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        calib = {"calib_shape": a.calib_shape, "calib_steps": a.calib_steps, "ranges": a.ranges, "threads": a.threads}
        for variant in {"": [], "stream": ["stream"], "both": ["stream", "whole"]}[a.calib]:
            out = a.work / f"{tag}_w4a4_calib_{variant}.safetensors"
            run[f"ptq_calib_{variant}"] = _run("ptq_calib", folder=folder, ckpt=out, whole=variant == "whole", **calib)
            run[f"ptq_calib_{variant}"]["ckpt_bytes"] = out.stat().st_size
            out.unlink()
        if a.no_ptq:
            shutil.rmtree(folder, ignore_errors=True)
            result["runs"][str(blocks)] = run
            continue
        run["ptq"] = _run("ptq", folder=folder, ckpt=ckpt, ranges=a.ranges, threads=a.threads)
        run["ckpt_bytes"] = ckpt.stat().st_size
        run["size_ratio"] = run["ckpt_bytes"] / run["bf16_bytes"]
        for target in [t for t in a.targets.split(",") if t]:
            run[f"export_{target}"] = _run("export", ckpt=ckpt, dir=a.work / f"{tag}_{target}", target=target)
            if a.equivalence:
                run[f"equivalence_{target}"] = _run(
                    "equivalence",
                    ckpt=ckpt,
                    dir=a.work / f"{tag}_{target}",
                    direct=a.work / f"{tag}_direct",
                    target=target,
                )
        if not a.no_torch_export:
            run["torch_export"] = _run("torch_export", folder=folder, dir=a.work / f"{tag}_torch", threads=a.threads)
            shutil.rmtree(a.work / f"{tag}_torch", ignore_errors=True)
            if "export_onnx" in run:
                run["export_time_ratio"] = run["export_onnx"]["seconds"] / run["torch_export"]["seconds"]
        if not a.no_ort and "export_onnx" in run:
            run["ort"] = _run("ort", dir=a.work / f"{tag}_onnx", threads=a.threads)
            # The onnx target's weight form the session ran (MatMulNBits or QDQ; manifest weight_form).
            run["ort"]["weight_form"] = run["export_onnx"].get("weight_form")
            run["ort_memory_ratio"] = run["ort"]["session_rss_gib"] * 2**30 / run["export_onnx"]["onnx_bytes"]
        result["runs"][str(blocks)] = run
        for target in a.targets.split(","):
            shutil.rmtree(a.work / f"{tag}_{target}", ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        ckpt.unlink(missing_ok=True)
    if len(result["runs"]) >= 2:
        result["extrapolation"] = _extrapolate(result["runs"], int(WAN_CONFIGS[a.config]["num_layers"]))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
