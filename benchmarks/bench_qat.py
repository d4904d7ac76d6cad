"""QAT benchmark on the tiny teacher: PTQ, LSQ, Q-DM, EfficientDM, QVGen (Phi-free) and QVGen-keep-Phi
at W4A4 and W3A3 (plus QVD at W8A8), same steps and data for every QAT method.

    python benchmarks/bench_qat.py                 # full table (~90 min on 2 CPU cores)
    python benchmarks/bench_qat.py --jobs 2 --steps 360   # the documented run: 39.5 min on 2 idle cores
    python benchmarks/bench_qat.py --smoke         # a handful of steps: proves the pipeline end to end

Reports, per scheme and method, the quality harness's metrics (qvgen_eval.harness) and PSNR /
SSIM vs the float teacher on the same noise, the teacher-forced relative error of the denoiser
output, the final training loss, and the mean step time relative to LSQ; plus the gradient-norm
curves of QVGen vs Q-DM (JSON + PNG drawn with PIL). Prints JSON and Markdown and writes them under
``artifacts/bench_qat/`` (``artifacts/bench_qat_smoke/`` with ``--smoke``).

Full configuration (sized from measured step times, ~0.3 s per sample-step with one thread, to
~65-90 minutes on 2 CPU cores; chosen, not tuned): 240 QAT steps at global batch 4 per method
(the six-stage rank-decay structure is kept: T_d = 36 steps, Phi gone at step 216, 24 Phi-free
final steps = 10%), evaluation on the harness's 12 prompts x 1 seed, UniPC 20 steps (the
teacher's recommended sampling), CFG 4, shift 3. PTQ and QVD calibrate on the harness's
calibration batches. One torch thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qvgen_eval.harness import (
    DEFAULT_PROMPTS,
    EvalSettings,
    calibration_batches,
    compare_models,
    json_report,
)
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.ptq import ptq_quantize
from trainer.qat.config import Method, TrainConfig
from trainer.qat.loop import TrainResult, train

QAT_METHODS = (Method.LSQ, Method.QDM, Method.EFFICIENTDM, Method.QVGEN, Method.QVGEN_KEEP_PHI)
LABELS = {
    "ptq": "PTQ (MSE init + calibrated clips)",
    "lsq": "LSQ",
    "qdm": "Q-DM style",
    "efficientdm": "EfficientDM style",
    "qvgen": "QVGen (Phi-free)",
    "qvgen_keep_phi": "QVGen keep-Phi (ablation, PyTorch only)",
    "qvd_w8a8": "QVD (PTQ)",
}
METRIC_COLS = (
    "prompt_adherence",
    "subject_consistency",
    "motion_smoothness",
    "dynamic_degree",
    "background_consistency",
)


def load_teacher_or_random() -> tuple[torch.nn.Module, Any, dict[str, Any], str]:
    from qvgen_tinyworld.teacher import ASSET_PATH, TEACHER_CONFIG, latent_shape, load_teacher

    if ASSET_PATH.is_file():
        model, te, info = load_teacher()
        return model, te, info, "tiny"
    # Development fallback before the trained asset exists: the numbers then mean little.
    from qvgen_export.models.wan import build_wan
    from qvgen_tinyworld.dataset import VideoConfig
    from qvgen_tinyworld.text_encoder import TextEncoderConfig, TinyTextEncoder

    info = {"diffusers_config": TEACHER_CONFIG, "video": VideoConfig().to_dict()}
    assert latent_shape(info)
    return build_wan(TEACHER_CONFIG, seed=0), TinyTextEncoder(TextEncoderConfig(dim=64)), info, "random"


def _plot_grad_norms(curves: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """One panel per scheme: gradient norm vs step (log y) for QVGen and Q-DM."""
    from PIL import Image, ImageDraw

    colors = {"qvgen": (214, 39, 40), "qvgen (W/s/z/clips only)": (255, 152, 150), "qdm": (31, 119, 180)}
    pw, ph, ml, mt = 620, 300, 70, 50
    img = Image.new("RGB", (len(curves) * (pw + ml + 20) + 20, ph + mt + 70), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for j, (scheme, series) in enumerate(curves.items()):
        x0, y0 = ml + j * (pw + ml + 20), mt
        x1, y1 = x0 + pw, y0 + ph
        vals = [v for s in series.values() for v in s if v > 0 and math.isfinite(v)]
        lo = math.floor(math.log10(min(vals)) * 2) / 2 if vals else -3.0
        hi = math.ceil(math.log10(max(vals)) * 2) / 2 if vals else 0.0
        hi = max(hi, lo + 0.5)
        n = max((len(s) for s in series.values()), default=1)
        d.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
        d.text((x0, y0 - 30), f"{scheme}: gradient norm (before clipping), log scale", fill=(0, 0, 0))
        for k in range(int(lo * 2), int(hi * 2) + 1):
            v = k / 2
            y = y1 - (v - lo) / (hi - lo) * (y1 - y0)
            d.line((x0, y, x1, y), fill=(225, 225, 225))
            d.text((x0 - 60, y - 6), f"{10**v:.2g}", fill=(60, 60, 60))
        d.text(((x0 + x1) // 2 - 20, y1 + 8), "step", fill=(0, 0, 0))
        for i, (name, s) in enumerate(series.items()):
            pts = [
                (x0 + t / max(1, n - 1) * (x1 - x0), y1 - (math.log10(v) - lo) / (hi - lo) * (y1 - y0))
                for t, v in enumerate(s)
                if v > 0 and math.isfinite(v)
            ]
            col = colors.get(name, (44, 160, 44))
            if len(pts) > 1:
                d.line(pts, fill=col, width=2)
            d.rectangle((x0 + 10 + i * 200, y1 + 30, x0 + 22 + i * 200, y1 + 40), fill=col)
            d.text((x0 + 26 + i * 200, y1 + 29), name, fill=(0, 0, 0))
        d.text((x0 - 3, y1 + 4), "0", fill=(60, 60, 60))
        d.text((x1 - 12, y1 + 4), str(n - 1), fill=(60, 60, 60))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _row(scheme: str, name: str, entry: dict[str, Any], train_info: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"scheme": scheme, "method": name, "label": LABELS.get(name, name)}
    row.update({k: entry["metrics"][k] for k in METRIC_COLS})
    row["psnr"] = entry["fidelity"]["psnr"]
    row["ssim"] = entry["fidelity"]["ssim"]
    row["rel_err_forced"] = entry["rel_error"]["teacher_forced_mean"]
    if train_info:
        row.update(train_info)
    return row


def markdown(results: dict[str, Any]) -> str:
    head = ["scheme", "method", *METRIC_COLS, "PSNR", "SSIM", "rel.err", "final loss", "step s", "step / LSQ"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["rows"]:
        cells = [r["scheme"], r["label"]] + [f"{r[k]:.1f}" for k in METRIC_COLS]
        cells += [f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['rel_err_forced']:.4f}"]
        cells += [f"{r['final_loss']:.5f}" if "final_loss" in r else "-"]
        cells += [f"{r['step_time_s']:.3f}" if "step_time_s" in r else "-"]
        cells += [f"{r['step_time_vs_lsq']:.2f}x" if "step_time_vs_lsq" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    s = results["settings"]
    lines += [
        "",
        (
            f"{'SMOKE RUN (not a result): ' if s['smoke'] else ''}teacher={s['teacher']}, {s['steps']} QAT steps x "
            f"batch {s['batch_size']} per method (same data and noise for all), eval {s['eval']['prompts']} prompts "
            f"x {s['eval']['seeds']} seeds, {s['eval']['num_steps']} UniPC steps, CFG {s['eval']['guidance_scale']}. "
            "PSNR/SSIM and relative error vs the float teacher with the same noise."
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny configuration: proves the pipeline, not a result")
    ap.add_argument("--steps", type=int, default=None, help="QAT steps per method (default 240; smoke 8)")
    ap.add_argument("--batch-size", type=int, default=None, help="global batch (default 4; smoke 1)")
    ap.add_argument("--schemes", default="w4a4,w3a3")
    ap.add_argument("--prompts", type=int, default=None, help="evaluation prompts (default 12; smoke 2)")
    ap.add_argument("--sample-steps", type=int, default=None, help="UniPC steps (default 20; smoke 3)")
    ap.add_argument("--phi-rank", type=int, default=32)
    # One thread by default: on a shared 2-core machine two OpenMP workers spin against each other.
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--no-qvd", action="store_true")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run the schemes in this many parallel processes (one thread each) and merge their tables; "
        "on 2 cores, --jobs 2 halves the wall time",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    steps = args.steps or (8 if args.smoke else 240)
    batch = args.batch_size or (1 if args.smoke else 4)
    n_prompts = args.prompts or (2 if args.smoke else len(DEFAULT_PROMPTS))
    sample_steps = args.sample_steps or (3 if args.smoke else 20)
    phi_rank = 4 if args.smoke and args.phi_rank == 32 else args.phi_rank
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    for s in schemes:
        try:
            QuantConfig.preset(s)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or REPO / ("artifacts/bench_qat_smoke" if args.smoke else "artifacts/bench_qat"))
    out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1 and len(schemes) > 1:
        return _run_parallel(argv if argv is not None else sys.argv[1:], schemes, args.jobs, out)

    teacher, te, info, teacher_kind = load_teacher_or_random()
    from qvgen_tinyworld.teacher import latent_shape

    shape = latent_shape(info)
    settings = EvalSettings(
        prompts=DEFAULT_PROMPTS[:n_prompts], seeds=(0,), num_steps=sample_steps, guidance_scale=4.0, shift=3.0
    )
    calib = calibration_batches(te.encode, settings, clips_per_step=2)
    results: dict[str, Any] = {
        "settings": {
            "smoke": args.smoke,
            "teacher": teacher_kind,
            "steps": steps,
            "batch_size": batch,
            "phi_rank": phi_rank,
            "schemes": schemes,
            "eval": {
                "prompts": n_prompts,
                "seeds": 1,
                "num_steps": sample_steps,
                "guidance_scale": settings.guidance_scale,
            },
            "threads": torch.get_num_threads(),
        },
        "rows": [],
        "phi_events": {},
        "grad_norm": {},
    }
    t_all = time.time()
    for si, scheme in enumerate(schemes):
        models: dict[str, Any] = {"float": teacher}
        train_info: dict[str, dict[str, Any]] = {}
        t0 = time.time()
        models["ptq"] = ptq_quantize(copy.deepcopy(teacher), QuantConfig.preset(scheme), calib, progress=False)
        train_info["ptq"] = {"calib_s": time.time() - t0}
        runs: dict[str, TrainResult] = {}
        for method in QAT_METHODS:
            run_dir = out / "runs" / scheme / method.value
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resume of an old one
            cfg = TrainConfig(
                method=method,
                scheme=scheme,
                steps=steps,
                batch_size=batch,
                seed=0,
                phi_rank=phi_rank,
                teacher=teacher_kind,
                out_dir=str(run_dir),
                save_every=steps,
                progress=True,
            )
            res = train(cfg, teacher, te)
            runs[method.value] = res
            if res.checkpoint is not None:
                from qvgen_export.checkpoint import load_quantized_model

                # Evaluate what was saved (the deployable Phi-free checkpoint), not the in-memory model.
                models[method.value] = load_quantized_model(res.checkpoint)[0]
            else:
                models[method.value] = res.qmodel  # keep-Phi: PyTorch only, Phi hooks attached
            train_info[method.value] = {
                "final_loss": res.history[-1]["loss"],
                "step_time_s": res.mean_step_time,
            }
            if res.events:
                results["phi_events"][f"{scheme}/{method.value}"] = res.events
        lsq_t = train_info["lsq"]["step_time_s"]
        for m in QAT_METHODS:
            train_info[m.value]["step_time_vs_lsq"] = train_info[m.value]["step_time_s"] / lsq_t
        if si == 0 and not args.no_qvd:
            from trainer.qat.qvd import qvd_quantize

            models["qvd_w8a8"], choices = qvd_quantize(teacher, calib)
            results["qvd_choices"] = {k: v for k, v in choices.items() if "condition_embedder" in k}
        report = compare_models(models, te.encode, shape, settings, progress=True, keep_videos=False)
        results.setdefault("reports", {})[scheme] = json_report(report)
        for name, entry in report["models"].items():
            if name == "float":
                continue
            row_scheme = "w8a8" if name == "qvd_w8a8" else scheme
            results["rows"].append(_row(row_scheme, name, entry, train_info.get(name)))
        results["grad_norm"][scheme] = {
            # Drawn in this order: the partial norm first so the total stays visible on top of it.
            "qvgen (W/s/z/clips only)": [r["grad_norm_base"] for r in runs["qvgen"].history],
            "qvgen": [r["grad_norm"] for r in runs["qvgen"].history],
            "qdm": [r["grad_norm"] for r in runs["qdm"].history],
            "qvgen_rank": [r.get("rank", 0) for r in runs["qvgen"].history],
        }
        del models, runs
    results["wall_s"] = time.time() - t_all
    return _write(results, out)


def _write(results: dict[str, Any], out: Path) -> int:
    curves = {s: {k: v for k, v in c.items() if k != "qvgen_rank"} for s, c in results["grad_norm"].items()}
    png = _plot_grad_norms(curves, out / "grad_norm.png")
    (out / "grad_norm.json").write_text(json.dumps(results["grad_norm"], indent=1) + "\n")
    md = markdown(results)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(json.dumps({"settings": results["settings"], "rows": results["rows"], "wall_s": results["wall_s"]}, indent=1))
    print(md)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {png}, {out / 'grad_norm.json'}")
    return 0


def _run_parallel(argv: list[str], schemes: list[str], jobs: int, out: Path) -> int:
    """Each scheme in its own process (``--threads 1``), at most ``jobs`` at once; QVD runs with the
    first scheme only, as in a sequential run; the parts' results are merged into one table."""
    import subprocess

    t0 = time.time()
    pending = list(enumerate(schemes))
    running: list[tuple[subprocess.Popen, Path, Any]] = []
    parts: list[Path] = []
    failed = False
    while pending or running:
        while pending and len(running) < jobs:
            i, scheme = pending.pop(0)
            part = out / f"part-{scheme}"
            # argparse keeps the last value of a repeated option, so these override the user's.
            cmd = [sys.executable, __file__, *argv, "--jobs", "1", "--schemes", scheme, "--out", str(part)]
            cmd += ["--threads", "1"]
            if i > 0 and "--no-qvd" not in cmd:
                cmd.append("--no-qvd")
            part.mkdir(parents=True, exist_ok=True)
            log = (part / "log.txt").open("w")
            print(f"[{scheme}] {' '.join(cmd[1:])}  (log: {part / 'log.txt'})", flush=True)
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), part, log))
            parts.append(part)
        time.sleep(2)
        for job in list(running):
            proc, part, log = job
            if proc.poll() is not None:
                log.close()
                running.remove(job)
                print(f"[{part.name}] exit {proc.returncode} after {time.time() - t0:.0f}s", flush=True)
                failed |= proc.returncode != 0
    if failed:
        print("error: a scheme's run failed; see its log.txt", file=sys.stderr)
        return 1
    merged: dict[str, Any] = {}
    for part in parts:
        r = json.loads((part / "results.json").read_text())
        if not merged:
            merged = r
            merged["settings"]["schemes"] = list(schemes)
            merged["settings"]["jobs"] = jobs
            continue
        merged["rows"] += r["rows"]
        for key in ("phi_events", "grad_norm", "reports"):
            merged.setdefault(key, {}).update(r.get(key, {}))
    # Rows in a sequential run's order: per scheme, then QVD W8A8 after the first scheme's rows.
    order = {s: i for i, s in enumerate(schemes)}
    merged["rows"].sort(key=lambda row: order.get(row["scheme"], 0.5))
    merged["wall_s"] = time.time() - t0
    return _write(merged, out)


if __name__ == "__main__":
    raise SystemExit(main())
