"""Where does the tiny teacher fail? Prompt adherence by noise level, three ways.

    python benchmarks/teacher_diagnostics.py                      # the embedded teacher
    python benchmarks/teacher_diagnostics.py --teacher path.safetensors --clips 24

1. ``x0-hat``: training clips noised to ``sigma``, one denoiser call, ``x0_hat = x_sigma - sigma v``,
   scored by the quality harness's detectors against the clip's prompt. This is *reconstruction*:
   a posterior mean, blurry at high noise by design, but its direction should survive as long as
   the noisy clip still determines it.
2. ``restart``: the same noised clips, then the sampler (flow Euler on the shift-3 grid, CFG)
   runs from ``sigma`` to 0. This is *generation* from a partly known layout: if adherence drops
   below ``x0-hat``'s at the same ``sigma``, the model cannot finish a clip it was given a start on.
3. ``from noise``: ``restart`` at sigma = 1, i.e. plain text-to-video.

Prints one line per row and writes JSON (``--out``). Measurements, not tests: minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qvgen_eval import metrics as M
from qvgen_tinyworld.dataset import TinyVideoDataset, tensor_to_frames
from qvgen_tinyworld.teacher import load_teacher

KEYS = ("prompt_adherence", "color", "shape", "direction", "count")


def score(videos: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    agg = M.aggregate([M.evaluate_video(f, p) for f, p in zip(tensor_to_frames(videos), prompts)])
    return {k: round(agg[k], 1) for k in KEYS}


def shifted_grid(steps: int, shift: float) -> torch.Tensor:
    u = torch.linspace(1.0, 0.0, steps + 1)
    return shift * u / (1 + (shift - 1) * u)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=None, help="tiny-teacher file (default: the embedded asset)")
    ap.add_argument("--clips", type=int, default=16, help="training clips (data seed 77, never trained on)")
    ap.add_argument("--sigmas", default="0.3,0.5,0.7,0.8,0.9,0.95")
    ap.add_argument("--steps", type=int, default=30, help="sampler steps on the full shift-3 grid")
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "artifacts" / "teacher_diagnostics.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, te, info = load_teacher(args.teacher)
    data = TinyVideoDataset(seed=77)  # the teacher trains on seeds 0-2: these clips are unseen
    x0, prompts = data.batch(range(args.clips))
    n = len(prompts)
    cond, uncond = te.encode(prompts), te.encode([""] * n)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = torch.full((n,), 1000.0 * sigma)
        vc = model(x, t, cond, return_dict=False)[0]
        if args.guidance == 1.0:
            return vc
        vu = model(x, t, uncond, return_dict=False)[0]
        return vu + args.guidance * (vc - vu)

    rows = []
    t0 = time.time()
    grid = shifted_grid(args.steps, float(info["sampling"].get("shift", 3.0)))
    for s in [float(v) for v in args.sigmas.split(",")] + [1.0]:
        xs = (1 - s) * x0 + s * eps
        with torch.no_grad():
            x0_hat = xs - s * model(xs, torch.full((n,), 1000.0 * s), cond, return_dict=False)[0]
        sig = torch.cat([torch.tensor([s]), grid[grid < s - 1e-6]])
        x = xs
        for a, b in zip(sig[:-1].tolist(), sig[1:].tolist()):
            x = x + (b - a) * velocity(x, a)
        row = {
            "sigma": s,
            "x0_mse": float(((x0_hat - x0) ** 2).mean()),
            "x0_hat": score(x0_hat, prompts),
            "restart": score(x, prompts),
            "restart_steps": len(sig) - 1,
        }
        rows.append(row)
        print(
            f"sigma {s:.2f}: x0-hat mse {row['x0_mse']:.4f} {row['x0_hat']}  restart ({row['restart_steps']} steps) "
            f"{row['restart']}",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"teacher": args.teacher or "embedded", "clips": n, "guidance": args.guidance, "rows": rows}
    doc["wall_s"] = round(time.time() - t0, 1)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out} ({doc['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
