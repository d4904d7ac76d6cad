"""QAT benchmark on the tiny teacher: QVGen against the QAT baselines (Q-DM, LSQ, EfficientDM) and
PTQ, several training seeds per (method, scheme), ranked by the teacher-forced error.

    python benchmarks/bench_qat.py --jobs 2                       # the default table (see below)
    python benchmarks/bench_qat.py --jobs 2 --steps 90 --seeds 0,1,2 --methods qvgen,qdm,lsq,qdm:cfg
    python benchmarks/bench_qat.py --smoke                        # proves the pipeline; not a result
    python benchmarks/bench_qat.py --jobs 2 --channel-spread      # on the representative testbed
    python benchmarks/bench_qat.py --merge-only --out DIR         # table from whatever runs finished

Design (issue 15):

- *Primary metric*: the teacher-forced relative error of the CFG-guided velocity, plus the
  conditional and unconditional branches (``qvgen_eval.forced``): the float teacher samples
  ``--eval-prompts`` prompts x ``--eval-seeds`` noise seeds with ``--sample-steps`` UniPC steps
  (CFG 4, shift 3) once, and every model is called on exactly those latents and timesteps.
- *Seeds, paired*: every method of a training seed gets the same seed, hence the same clips,
  caption dropout, noise levels and noise (``trainer.qat.data``), so seed-wise differences
  between methods cancel the data/noise draw. Each method's difference to the *best baseline*
  (lowest mean guided error among qdm / lsq / efficientdm in the run) is reported as the mean of
  the per-seed paired differences +- a 95% Student-t interval (``t_{0.975, n-1} sd / sqrt(n)``);
  a difference is *resolved* when its interval excludes 0.
- ``METHOD:cfg`` variants train with CFG-aware distillation (``--cfg-weights`` for the cond /
  uncond / guided terms) at *half* the global batch: each sample then runs both branches, so the
  forward/backward samples per step, and the steps, equal the plain variant's (compute-matched).
- PTQ (MSE init + clips calibrated at the sampler's timesteps) is deterministic: one row, no seed.
- ``--channel-spread``: the representative testbed (``qvgen_tinyworld.channel_spread``): the
  teacher's attention V/O pairs carry a function-preserving output-channel range spread, so
  ``W - Qw(W)`` has a steep spectrum like real DiT layers (docs/qat-trainer.md); the reference
  trajectory, PTQ and every student use that teacher.
- Optional secondary: ``--videos`` samples every model and adds PSNR/SSIM vs the float videos
  (the harness's ``compare_models``; slow), with each method's paired PSNR difference to the best
  baseline. Given an ``--out`` whose runs finished without it, it first fills in the finished
  runs from their saved checkpoints, so the secondary metric needs no retraining.

Each (scheme, seed, method) result is appended to ``<out>/part-<scheme>/runs.jsonl`` as soon as
it is evaluated, so an interrupted run still yields a (partial) table with ``--merge-only``. The
merged table goes to ``<out>/qat_table.json`` / ``results.md`` and, with ``--results``, to a
committed JSON (``benchmarks/results/qat_table.json``). One torch thread per process; ``--jobs 2``
runs the schemes in two processes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qvgen_eval.forced import ForcedSettings, forced_errors, reference_trajectory
from qvgen_eval.harness import DEFAULT_PROMPTS, EvalSettings, calibration_batches, compare_models
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.ptq import ptq_quantize
from trainer.qat.config import Method, TrainConfig
from trainer.qat.loop import train

BASELINES = ("qdm", "lsq", "efficientdm")
BRANCHES = ("guided", "cond", "uncond")
# Two-sided 95% Student-t quantiles t_{0.975, df}; larger df use the normal approximation.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_interval(diffs: list[float]) -> dict[str, Any]:
    """Mean of paired differences and its 95% t half-width (None with fewer than 2 seeds)."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "half_width": None, "resolved": None}
    half = T975.get(n - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(n)
    return {"n": n, "mean": mean, "half_width": half, "resolved": abs(mean) > half}


def parse_method(spec: str) -> tuple[Method, bool]:
    name, _, variant = spec.partition(":")
    if variant not in ("", "cfg"):
        raise ValueError(f"unknown method variant {spec!r} (only METHOD:cfg)")
    m = Method(name)
    if variant and m is Method.LSQ:
        raise ValueError("lsq has no teacher: no CFG-aware variant")
    return m, bool(variant)


def teacher_identity(path: str | None) -> dict:
    """Which teacher a table was measured on: its file hash and training record."""
    import hashlib

    from qvgen_tinyworld.teacher import ASSET_PATH, read_teacher_info

    p = Path(path) if path else ASSET_PATH
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no tiny-teacher file")
    training = read_teacher_info(p).get("training", {})
    return {
        "file": "embedded asset" if path is None else str(path),
        "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        "steps": training.get("steps"),
        "init_steps": (training.get("init") or {}).get("steps"),
    }


def run_dir_of(out: Path, seed: int, spec: str) -> Path:
    """Where one (seed, method) run of a scheme's part folder trains and saves its checkpoint."""
    return out / "runs" / f"seed{seed}" / spec.replace(":", "_")


def add_videos(
    out: Path, reference: Any, info: dict, text_encode: Any, shape: tuple, es: Any, make_ptq: Any, progress: bool
) -> int:
    """``--videos`` over a part folder whose runs finished without it: PSNR/SSIM against the float
    videos for every row of ``runs.jsonl`` that lacks them, from the checkpoint that row was
    evaluated on (PTQ is re-quantized: it is deterministic). One sampling pass over all of them
    (the float videos once); ``runs.jsonl`` is rewritten atomically. Returns the rows filled."""
    from qvgen_export.checkpoint import load_quantized_model
    from qvgen_export.utils.atomic import atomic_file
    from qvgen_tinyworld.teacher import teacher_denoiser

    log = out / "runs.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    todo = [r for r in rows if "psnr" not in r]
    if not todo:
        return 0
    models: dict[str, Any] = {"float": reference}
    for r in todo:
        if r["method"] == "ptq":
            model = make_ptq()
        else:
            ckpt = run_dir_of(out, r["seed"], r["method"]) / "model.safetensors"
            if not ckpt.is_file():
                raise FileNotFoundError(f"{ckpt}: the checkpoint of {r['method']} seed {r['seed']} is gone")
            model = load_quantized_model(ckpt)[0]
        models[f"{r['method']}@{r['seed']}"] = teacher_denoiser(model, info)
    rep = compare_models(models, text_encode, shape, es, progress=progress, keep_videos=False)
    for r in todo:
        fid = rep["models"][f"{r['method']}@{r['seed']}"]["fidelity"]
        r["psnr"], r["ssim"] = fid["psnr"], fid["ssim"]
    with atomic_file(log, "runs.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"[{out.name}] videos added to {len(todo)} finished runs", flush=True)
    return len(todo)


def run_scheme(args: argparse.Namespace, scheme: str, out: Path) -> int:
    """Train and evaluate every (seed, method) of one scheme, seed-major, appending to runs.jsonl."""
    from qvgen_export.checkpoint import load_quantized_model
    from qvgen_tinyworld.teacher import latent_shape, load_teacher, teacher_denoiser

    teacher, te, info = load_teacher(args.teacher)
    condition = info.get("condition")  # a conditioned teacher: every model call appends it
    if args.channel_spread:  # the reference, PTQ and every student use the spread teacher
        from qvgen_tinyworld.channel_spread import apply_channel_spread

        apply_channel_spread(teacher)
    shape = latent_shape(info)
    prompts = DEFAULT_PROMPTS[: args.eval_prompts]
    seeds = tuple(int(s) for s in args.eval_seeds.split(","))
    fs = ForcedSettings(prompts=prompts, seeds=seeds, num_steps=args.sample_steps, guidance_scale=4.0, shift=3.0)
    es = EvalSettings(prompts=prompts, seeds=seeds, num_steps=args.sample_steps, guidance_scale=4.0, shift=3.0)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done = set()
    if log.exists():
        done = {(r["seed"], r["method"]) for r in map(json.loads, log.read_text().splitlines()) if r}
    t0 = time.time()
    ref = reference_trajectory(teacher_denoiser(teacher, info), te.encode, shape, fs)
    print(f"[{scheme}] reference trajectory {time.time() - t0:.0f}s", flush=True)

    def record(rec: dict[str, Any], model: Any) -> None:
        model = teacher_denoiser(model, info)
        rec.update(scheme=scheme, forced=forced_errors(model, ref))
        if args.videos:
            models = {"float": teacher_denoiser(teacher, info), "m": model}
            rep = compare_models(models, te.encode, shape, es, progress=False)
            rec["psnr"] = rep["models"]["m"]["fidelity"]["psnr"]
            rec["ssim"] = rep["models"]["m"]["fidelity"]["ssim"]
        with log.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"[{scheme}] {rec['method']} seed {rec['seed']}: guided {rec['forced']['guided']:.5f}", flush=True)

    def make_ptq() -> Any:
        calib = calibration_batches(te.encode, es, clips_per_step=2, condition=condition)
        return ptq_quantize(copy.deepcopy(teacher), QuantConfig.preset(scheme), calib, progress=False)

    if args.videos and done:
        add_videos(out, teacher_denoiser(teacher, info), info, te.encode, shape, es, make_ptq, not args.quiet)
    if (-1, "ptq") not in done:
        ptq = make_ptq()
        record({"seed": -1, "method": "ptq"}, ptq)
        del ptq
    for seed in args.seed_list:
        for spec in args.method_list:
            if (seed, spec) in done:
                continue
            method, cfg_aware = parse_method(spec)
            run_dir = run_dir_of(out, seed, spec)
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resume of an old one
            extra: dict[str, Any] = {}
            batch = args.batch_size
            if cfg_aware:
                extra["distill_weights"] = tuple(float(w) for w in args.cfg_weights.split(","))
                batch = max(1, batch // 2)  # both branches per sample: same samples per step
            cfg = TrainConfig(
                method=method,
                scheme=scheme,
                steps=args.steps,
                batch_size=batch,
                seed=seed,
                phi_rank=args.phi_rank,
                phi_rank_frac=args.phi_rank_frac,
                lr_min_frac=args.lr_min_frac,
                channel_spread=args.channel_spread,
                out_dir=str(run_dir),
                save_every=args.steps,
                keep_states=1,
                progress=not args.quiet,
                **extra,
            )
            t1 = time.time()
            res = train(cfg, teacher, te, condition=condition)
            train_s = time.time() - t1
            # Evaluate what was saved (the deployable Phi-free checkpoint), not the in-memory model.
            model = load_quantized_model(res.checkpoint)[0] if res.checkpoint is not None else res.qmodel
            losses = [r["loss"] for r in res.history]
            tail = losses[-max(1, len(losses) // 10) :]
            rec = {
                "seed": seed,
                "method": spec,
                "train_s": train_s,
                "step_time_s": res.mean_step_time,
                "final_loss": statistics.fmean(tail),
                "batch_size": batch,
            }
            if seed == args.seed_list[0] and method in (Method.QVGEN, Method.QDM) and not cfg_aware:
                rec["grad_norm"] = [r["grad_norm"] for r in res.history]
            record(rec, model)
            del res, model
    return 0


def summarize(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per scheme: each method's mean errors over seeds, and its paired difference to the best baseline."""
    table: dict[str, Any] = {}
    for scheme in sorted({r["scheme"] for r in rows}, key=lambda s: -int(s[1])):
        rs = [r for r in rows if r["scheme"] == scheme]
        by: dict[str, dict[int, dict[str, Any]]] = {}
        for r in rs:
            by.setdefault(r["method"], {})[r["seed"]] = r
        trained = [m for m in methods if m in by]
        entry: dict[str, Any] = {"methods": {}}
        for m in ["ptq", *trained]:
            if m not in by:
                continue
            runs = [by[m][s] for s in sorted(by[m])]
            e: dict[str, Any] = {"n": len(runs), "seeds": sorted(by[m])}
            for b in BRANCHES:
                vals = [r["forced"][b] for r in runs]
                e[b] = {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else None}
                e[b]["per_seed"] = vals
            for k in ("step_time_s", "final_loss", "psnr", "ssim"):
                vals = [r[k] for r in runs if k in r]
                if vals:
                    e[k] = statistics.fmean(vals)
                    if k in ("psnr", "ssim"):
                        e[f"{k}_per_seed"] = vals
            entry["methods"][m] = e
        base = [m for m in BASELINES if m in entry["methods"]]
        if base:
            best = min(base, key=lambda m: entry["methods"][m]["guided"]["mean"])
            entry["best_baseline"] = best
            for m in trained:
                # Paired: the seeds both finished (a partial run still compares like with like).
                paired = sorted(set(by[m]) & set(by[best]))
                if m == best or not paired:
                    continue
                d = {
                    b: t_interval([by[m][s]["forced"][b] - by[best][s]["forced"][b] for s in paired]) for b in BRANCHES
                }
                if all("psnr" in by[x][s] for x in (m, best) for s in paired):  # the secondary metric
                    d["psnr"] = t_interval([by[m][s]["psnr"] - by[best][s]["psnr"] for s in paired])
                entry["methods"][m]["vs_best_baseline"] = {"seeds": paired, **d}
        # Every pair too (JSON only), e.g. QVGen against each baseline, not only the best one.
        entry["pairwise"] = {
            f"{a} - {b}": {
                "seeds": (ps := sorted(set(by[a]) & set(by[b]))),
                **{br: t_interval([by[a][s]["forced"][br] - by[b][s]["forced"][br] for s in ps]) for br in BRANCHES},
            }
            for i, a in enumerate(trained)
            for b in trained[i + 1 :]
            if set(by[a]) & set(by[b])
        }
        for m in trained:  # METHOD:cfg against METHOD itself: the compute-matched objective comparison
            plain = m.partition(":")[0]
            if m.endswith(":cfg") and plain in by:
                paired = sorted(set(by[m]) & set(by[plain]))
                d = {
                    b: t_interval([by[m][s]["forced"][b] - by[plain][s]["forced"][b] for s in paired]) for b in BRANCHES
                }
                entry["methods"][m]["vs_plain_objective"] = {"seeds": paired, **d}
        table[scheme] = entry
    return table


def markdown(table: dict[str, Any]) -> str:
    head = ["scheme", "method", "n", "guided err", "cond err", "uncond err", "guided - best baseline (95% t)"]
    head += ["resolved", "step s"]
    videos = any("psnr" in e for entry in table.values() for e in entry["methods"].values())
    if videos:
        head += ["PSNR dB", "SSIM", "PSNR - best baseline (95% t)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scheme, entry in table.items():
        for m, e in entry["methods"].items():
            label = m + (" (best baseline)" if m == entry.get("best_baseline") else "")
            cells = [scheme, label, str(e["n"])]
            for b in BRANCHES:
                sd = e[b]["sd"]
                cells.append(f"{e[b]['mean']:.4f}" + (f" +- {sd:.4f}" if sd is not None else ""))
            d = e.get("vs_best_baseline", {}).get("guided")
            if d is None:
                cells += ["-", "-"]
            else:
                hw = "n/a" if d["half_width"] is None else f"{d['half_width']:.4f}"
                cells += [f"{d['mean']:+.4f} +- {hw}", {True: "yes", False: "no", None: "-"}[d["resolved"]]]
            cells.append(f"{e['step_time_s']:.2f}" if "step_time_s" in e else "-")
            if videos:
                cells += [f"{e['psnr']:.2f}" if "psnr" in e else "-", f"{e['ssim']:.4f}" if "ssim" in e else "-"]
                p = e.get("vs_best_baseline", {}).get("psnr")
                hw = "n/a" if p is None or p["half_width"] is None else f"{p['half_width']:.2f}"
                cells.append("-" if p is None else f"{p['mean']:+.2f} +- {hw}")
            lines.append("| " + " | ".join(cells) + " |")
    cmp = [(sc, m, e.get("vs_plain_objective")) for sc, en in table.items() for m, e in en["methods"].items()]
    cmp = [c for c in cmp if c[2]]
    if cmp:
        lines += [
            "",
            "| scheme | CFG-aware - plain objective | seeds | guided | cond | uncond |",
            "|---|---|---|---|---|---|",
        ]
        for sc, m, d in cmp:
            cells = [sc, m, str(len(d["seeds"]))]
            for b in BRANCHES:
                hw = "n/a" if d[b]["half_width"] is None else f"{d[b]['half_width']:.4f}"
                cells.append(f"{d[b]['mean']:+.4f} +- {hw}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merge(out: Path, settings: dict[str, Any], results: Path | None, status: str) -> int:
    rows = []
    for part in sorted(out.glob("part-*/runs.jsonl")):
        rows += [json.loads(x) for x in part.read_text().splitlines() if x.strip()]
    if not rows:
        print(f"error: no finished runs under {out}", file=sys.stderr)
        return 1
    table = summarize(rows, settings["methods"])
    doc = {"status": status, "settings": settings, "table": table, "runs": rows}
    (out / "qat_table.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(table)
    (out / "results.md").write_text(md)
    if results is not None:
        from qvgen_export.utils.atomic import atomic_file

        slim = {**doc, "runs": [{k: v for k, v in r.items() if k != "grad_norm"} for r in rows]}
        with atomic_file(results, "the results JSON") as tmp:
            tmp.write_text(json.dumps(slim, indent=1) + "\n")
    print(md)
    print(f"wrote {out / 'qat_table.json'}" + (f" and {results}" if results else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="8 steps, 1 seed, 2 prompts x 3 steps: not a result")
    ap.add_argument("--schemes", default="w4a4,w3a3")
    ap.add_argument("--methods", default="qvgen,qdm,lsq,efficientdm", help="comma list; METHOD:cfg = CFG-aware")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (paired across methods)")
    ap.add_argument("--steps", type=int, default=None, help="QAT steps per run (default 120; smoke 8)")
    ap.add_argument("--batch-size", type=int, default=4, help="global batch (CFG-aware variants use half)")
    ap.add_argument("--phi-rank", type=int, default=32)
    ap.add_argument("--phi-rank-frac", type=float, default=None)
    ap.add_argument("--lr-min-frac", type=float, default=0.1, help="cosine floor (the 2026-12-03 table: 0)")
    ap.add_argument(
        "--channel-spread", action="store_true", help="the representative testbed: teacher with its V/O channel spread"
    )
    ap.add_argument("--teacher", default=None, help="tiny-teacher file (default: the embedded asset)")
    ap.add_argument("--cfg-weights", default="1,1,0.0625", help="cond,uncond,guided weights of METHOD:cfg")
    ap.add_argument("--eval-prompts", type=int, default=None, help="first N harness prompts (default 6; smoke 2)")
    ap.add_argument("--eval-seeds", default="0,1", help="noise seeds of the reference trajectories")
    ap.add_argument("--sample-steps", type=int, default=None, help="UniPC steps (default 10; smoke 3)")
    ap.add_argument("--videos", action="store_true", help="also PSNR/SSIM of sampled videos (slow)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="schemes run in this many parallel processes")
    ap.add_argument("--out", default=None)
    ap.add_argument("--results", default=None, help="also write the table JSON here (e.g. benchmarks/results/...)")
    ap.add_argument("--merge-only", action="store_true", help="only merge the finished runs under --out")
    ap.add_argument("--status", default=None, help="with --merge-only: the status line to record")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: one scheme's process
    args = ap.parse_args(argv)
    args.steps = args.steps or (8 if args.smoke else 120)
    args.eval_prompts = args.eval_prompts or (2 if args.smoke else 6)
    args.sample_steps = args.sample_steps or (3 if args.smoke else 10)
    if args.smoke:
        given = argv if argv is not None else sys.argv[1:]
        args.seeds, args.batch_size, args.phi_rank = args.seeds if "--seeds" in given else "0", 1, 4
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    try:
        for s in schemes:
            QuantConfig.preset(s)
        for m in args.method_list:
            parse_method(m)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = Path(args.out or REPO / ("artifacts/bench_qat_smoke" if args.smoke else "artifacts/bench_qat"))
    if args.part:
        return run_scheme(args, args.part, out / f"part-{args.part}")
    settings = {
        k: getattr(args, k)
        for k in ("steps", "batch_size", "phi_rank", "phi_rank_frac", "lr_min_frac", "channel_spread", "cfg_weights")
        + ("eval_prompts", "eval_seeds", "sample_steps", "smoke", "threads", "jobs")
    }
    settings.update(schemes=schemes, methods=args.method_list, seeds=args.seed_list, guidance_scale=4.0)
    try:
        settings["teacher"] = teacher_identity(args.teacher)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.channel_spread:
        from qvgen_tinyworld.channel_spread import ChannelSpread

        settings["channel_spread_spec"] = ChannelSpread().to_dict()
    settings["command"] = "python benchmarks/bench_qat.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = Path(args.results) if args.results else None
    if args.merge_only:
        saved = out / "settings.json"  # the run's own settings, not this merge command's
        settings = json.loads(saved.read_text()) if saved.is_file() else settings
        return merge(
            out, settings, results, args.status or "partial: merged from the runs that finished (--merge-only)"
        )
    if not any(a.startswith("--out") for a in (argv or sys.argv[1:])):
        shutil.rmtree(out, ignore_errors=True)  # the default folder starts fresh
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")
    t0 = time.time()
    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    pending, running, failed = list(schemes), [], False
    while pending or running:
        while pending and len(running) < max(1, args.jobs):
            scheme = pending.pop(0)
            part = out / f"part-{scheme}"
            part.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, *base, "--out", str(out), "--part", scheme, "--threads", str(args.threads)]
            logf = (part / "log.txt").open("a")
            print(f"[{scheme}] log: {part / 'log.txt'}", flush=True)
            running.append((subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT), scheme, logf))
        time.sleep(2)
        for job in list(running):
            proc, scheme, logf = job
            if proc.poll() is not None:
                logf.close()
                running.remove(job)
                print(f"[{scheme}] exit {proc.returncode} after {time.time() - t0:.0f}s", flush=True)
                failed |= proc.returncode != 0
    settings["wall_s"] = round(time.time() - t0, 1)
    status = "complete" if not failed else "a scheme's process failed: partial (see part-*/log.txt)"
    return max(merge(out, settings, results, status), 1 if failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
