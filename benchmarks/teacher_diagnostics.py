"""Where does the tiny teacher fail? Prompt adherence by noise level, and what the network reads.

    python benchmarks/teacher_diagnostics.py                      # the embedded teacher
    python benchmarks/teacher_diagnostics.py --teacher path.safetensors --clips 24
    python benchmarks/teacher_diagnostics.py --threads 1 --word-gain --probe --skip-adherence

Prompt adherence by noise level, three ways (skip with ``--skip-adherence``):

1. ``x0-hat``: training clips noised to ``sigma``, one denoiser call, ``x0_hat = x_sigma - sigma v``,
   scored by the quality harness's detectors against the clip's prompt. This is *reconstruction*:
   a posterior mean, blurry at high noise by design, but its direction should survive as long as
   the noisy clip still determines it.
2. ``restart``: the same noised clips, then the sampler (flow Euler on the shift-3 grid, CFG)
   runs from ``sigma`` to 0. This is *generation* from a partly known layout: if adherence drops
   below ``x0-hat``'s at the same ``sigma``, the model cannot finish a clip it was given a start on.
3. ``from noise``: ``restart`` at sigma = 1, i.e. plain text-to-video.

Two optional measurements of what the network uses (JSON keys ``word_gain`` and ``probe``):

- ``--word-gain`` (sigmas ``--gain-sigmas``, clips ``--gain-clips``, default ``--clips``): the conditional velocity loss
  ``mean((v(x_sigma, prompt) - (eps - x0))^2)`` with each clip's true prompt and with one word of
  its first clause swapped (direction -> the opposite one, color -> a color absent from the clip,
  shape -> another shape), same clips and noise. ``gain % = 100 (loss_swapped - loss_true) /
  loss_true`` (+- the standard error over clips) is how much the model *uses* that word at that
  noise level: ~0 % means the word is ignored (a teacher that never reads the direction word
  shows ~0 for direction), large means the prediction depends on it.
- ``--probe`` (sigmas ``--probe-sigmas``): a ridge regression (closed form, standardised
  features, ``--probe-lambda``) from each token's hidden state to its frame index 0..F'-1, fitted
  on the tokens of the first half of the clips and scored (R^2) on the second half, for the
  output of each transformer block and, as a baseline, of the patch embedding. R^2 ~ 1: the
  frame is linearly readable from the token; R^2 ~ 0: the network cannot tell which frame a
  token is in (RoPE only acts inside attention, so any frame signal in the residual stream is
  something the blocks wrote there).

Prints one line per row and writes JSON (``--out``). Measurements, not tests: minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qvgen_eval import metrics as M
from qvgen_tinyworld.dataset import ClipSpec, TinyVideoDataset, tensor_to_frames
from qvgen_tinyworld.grammar import COLORS, SHAPES
from qvgen_tinyworld.teacher import POSITION_CHANNELS, load_teacher, position_channels, teacher_denoiser, with_condition
from qvgen_tinyworld.text_encoder import TinyTextEncoder

KEYS = ("prompt_adherence", "color", "shape", "direction", "count")


def score(videos: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    agg = M.aggregate([M.evaluate_video(f, p) for f, p in zip(tensor_to_frames(videos), prompts)])
    return {k: round(agg[k], 1) for k in KEYS}


def shifted_grid(steps: int, shift: float) -> torch.Tensor:
    u = torch.linspace(1.0, 0.0, steps + 1)
    return shift * u / (1 + (shift - 1) * u)


# ---------------------------------------------------------------------------------------------
# --word-gain: how much the velocity loss rises when one prompt word is swapped.

WORD_CLASSES = ("direction", "color", "shape")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def swap_word(spec: ClipSpec, word_class: str, index: int = 0, new: str | None = None) -> ClipSpec:
    """``spec`` with one word of its first object replaced (the first clause of the prompt).

    ``direction`` -> the opposite direction; ``color`` -> a color no object of the clip has;
    ``shape`` -> another shape. ``index`` (the clip index) rotates through the alternatives so that
    a batch does not always swap in the same word; ``new`` forces the replacement.
    """
    if word_class not in WORD_CLASSES:
        raise ValueError(f"word_class must be one of {WORD_CLASSES}, got {word_class!r}")
    first = spec.objects[0]
    if new is None:
        if word_class == "direction":
            new = OPPOSITE[first.direction]
        elif word_class == "color":
            used = {o.color for o in spec.objects}
            others = [c for c in COLORS if c not in used]
            new = others[index % len(others)]
        else:
            others = [s for s in SHAPES if s != first.shape]
            new = others[index % len(others)]
    swapped = dataclasses.replace(first, **{word_class: new})
    return dataclasses.replace(spec, objects=(swapped, *spec.objects[1:]))


def swapped_prompts(specs: list[ClipSpec], word_class: str) -> list[str]:
    return [swap_word(s, word_class, index=i).prompt for i, s in enumerate(specs)]


@torch.no_grad()
def velocity_mse(
    model: torch.nn.Module,
    ctx: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    sigma: float,
    batch: int = 8,
) -> torch.Tensor:
    """Per-clip conditional flow-matching loss ``mean((v(x_sigma) - (eps - x0))^2)``, shape ``[B]``."""
    out = []
    for i in range(0, x0.shape[0], batch):
        a, e = x0[i : i + batch], eps[i : i + batch]
        xs = (1 - sigma) * a + sigma * e
        v = model(xs, torch.full((a.shape[0],), 1000.0 * sigma), ctx[i : i + batch], return_dict=False)[0]
        out.append(((v - (e - a)) ** 2).flatten(1).mean(1))
    return torch.cat(out)


def word_gain(
    model: torch.nn.Module,
    te: TinyTextEncoder,
    x0: torch.Tensor,
    prompts: list[str],
    swapped: dict[str, list[str]],
    sigmas: list[float],
    eps: torch.Tensor,
    batch: int = 8,
) -> list[dict[str, Any]]:
    """Per sigma: the loss with the true prompts and, per key of ``swapped``, with those prompts instead.

    ``gain_pct = 100 (loss_swapped - loss_true) / loss_true`` on the same clips and noise ``eps``;
    ``se_pct`` is the standard error of that figure from the per-clip paired differences.
    """
    n = len(prompts)
    ctx_true = te.encode(prompts)
    ctx_swap = {k: te.encode(p) for k, p in swapped.items()}
    rows = []
    for s in sigmas:
        lt = velocity_mse(model, ctx_true, x0, eps, s, batch)
        row: dict[str, Any] = {"sigma": s, "loss_true": float(lt.mean())}
        for k, ctx in ctx_swap.items():
            ls = velocity_mse(model, ctx, x0, eps, s, batch)
            d = ls - lt
            se = float(d.std() / n**0.5) if n > 1 else float("nan")
            row[k] = {
                "loss": float(ls.mean()),
                "gain_pct": 100.0 * float(d.mean() / lt.mean()),
                "se_pct": 100.0 * se / float(lt.mean()),
            }
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# --position-use: does a teacher with the positions condition use where a pixel is?


class _FixedPositions:
    """Calls ``raw`` on latents with the position channels made by ``edit`` (e.g. mirrored)."""

    def __init__(self, raw: torch.nn.Module, edit: Any) -> None:
        self.raw, self.edit = raw, edit

    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, return_dict: bool = False) -> Any:
        b, _, f, h, w = x.shape
        pos = self.edit(position_channels(f, h, w).to(x.dtype)).expand(b, -1, -1, -1, -1)
        return self.raw(torch.cat([x, pos], dim=1), t, ctx, return_dict=False)


POSITION_EDITS = {
    "true": lambda p: p,
    "columns_mirrored": lambda p: torch.stack([p[0], p[1].flip(-1), p[2]]),
    "frames_reversed": lambda p: torch.stack([p[0].flip(0), p[1], p[2]]),
    "zeroed": torch.zeros_like,
}


@torch.no_grad()
def position_use(
    raw: torch.nn.Module, ctx: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, sigmas: list[float], batch: int = 8
) -> list[dict[str, Any]]:
    """Per sigma: the conditional loss with the true position channels and with each lie of
    ``POSITION_EDITS`` (in % of the true loss, + = worse; with its standard error over clips), and ``output_change``: how far zeroing
    the channels moves the output, ``||v_true - v_zeroed|| / ||v_true||``. A network that uses
    where and when a pixel is loses when the channels lie; one that ignores them does not."""
    rows, n = [], x0.shape[0]
    for s in sigmas:
        xs, target = (1 - s) * x0 + s * eps, eps - x0
        t = torch.full((n,), 1000.0 * s)
        # One forward pass per edit: the losses and the output change come from the same outputs.
        v = {
            k: torch.cat([_FixedPositions(raw, e)(xs[i : i + batch], t[i : i + batch], ctx[i : i + batch])[0]
                          for i in range(0, n, batch)])
            for k, e in POSITION_EDITS.items()
        }  # fmt: skip
        losses = {k: ((o - target) ** 2).flatten(1).mean(1) for k, o in v.items()}
        lt = float(losses["true"].mean())
        row: dict[str, Any] = {"sigma": s, "loss_true": lt}
        for k, loss in losses.items():
            if k != "true":  # paired per clip, as word_gain
                d = loss - losses["true"]
                se = float(d.std() / n**0.5) if n > 1 else float("nan")
                row[k] = {"pct": 100.0 * float(d.mean()) / lt, "se_pct": 100.0 * se / lt}
        row["output_change"] = float((v["true"] - v["zeroed"]).norm() / v["true"].norm())
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# --probe: can a linear read-out of a token's hidden state tell which frame the token is in?


def ridge_r2(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, lam: float
) -> float:
    """R^2 on the test set of a ridge regression ``y ~ x`` (features standardised on the train set).

    Closed form in float64: ``w = (X'X + lam N I)^-1 X'(y - mean y)``; ``lam`` is relative to the
    unit diagonal of standardised features. R^2 = 1 - SS_res / SS_tot around the test mean, so a
    read-out that knows nothing scores ~0 (slightly below, from overfitting).
    """
    xtr, xte = x_train.double(), x_test.double()
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-8)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ytr, yte = y_train.double(), y_test.double()
    ym = ytr.mean()
    a = xtr.T @ xtr + lam * xtr.shape[0] * torch.eye(xtr.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(a, xtr.T @ (ytr - ym))
    pred = xte @ w + ym
    ss_tot = float(((yte - yte.mean()) ** 2).sum())
    return 1.0 - float(((yte - pred) ** 2).sum()) / max(ss_tot, 1e-12)


@torch.no_grad()
def hidden_states(
    model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, condition: str | None = None
) -> dict[str, torch.Tensor]:
    """Token features ``[B, tokens, dim]`` (frame-major) of the patch embedding and of each block;
    ``condition``: the teacher's, appended to the latents ``x`` as the model takes it."""
    got: dict[str, torch.Tensor] = {}

    def keep(name: str, tokens_first: bool) -> Any:
        def hook(_m: torch.nn.Module, _i: Any, out: Any) -> None:
            h = out[0] if isinstance(out, tuple) else out
            # patch_embedding: [B, dim, F, H, W] -> [B, F*H*W, dim], as the model flattens it.
            got[name] = (h if tokens_first else h.flatten(2).transpose(1, 2)).detach().float()

        return hook

    handles = [model.patch_embedding.register_forward_hook(keep("patch_embedding", False))]
    handles += [b.register_forward_hook(keep(f"block{i}", True)) for i, b in enumerate(model.blocks)]
    try:
        model(with_condition(x, condition), t, ctx, return_dict=False)
    finally:
        for h in handles:
            h.remove()
    return got


def frame_probe(
    model: torch.nn.Module,
    te: TinyTextEncoder,
    x0: torch.Tensor,
    prompts: list[str],
    sigmas: list[float],
    eps: torch.Tensor,
    lam: float = 1e-3,
    batch: int = 8,
    condition: str | None = None,
) -> list[dict[str, Any]]:
    """Per sigma: R^2 of a ridge probe token -> frame index, trained on the first half of the clips.

    Every token of a clip is a sample; the clips split in halves (train, test), so the test tokens
    come from clips the probe never saw.
    """
    n, frames = x0.shape[0], x0.shape[2]
    p_t = int(model.config.patch_size[0])
    if n < 2:
        raise ValueError(f"the probe needs at least 2 clips (half to fit, half to test), got {n}")
    ctx = te.encode(prompts)
    half = n // 2
    rows = []
    for s in sigmas:
        feats: dict[str, list[torch.Tensor]] = {}
        for i in range(0, n, batch):
            a, e = x0[i : i + batch], eps[i : i + batch]
            xs = (1 - s) * a + s * e
            t = torch.full((a.shape[0],), 1000.0 * s)
            for k, h in hidden_states(model, xs, t, ctx[i : i + batch], condition).items():
                feats.setdefault(k, []).append(h)
        r2 = {}
        for k, parts in feats.items():
            h = torch.cat(parts)  # [B, tokens, dim]
            tokens = h.shape[1]
            frame = torch.arange(frames // p_t).repeat_interleave(tokens // (frames // p_t)).float()  # [tokens]
            y = frame.expand(n, tokens)
            r2[k] = ridge_r2(
                h[:half].reshape(-1, h.shape[2]),
                y[:half].reshape(-1),
                h[half:].reshape(-1, h.shape[2]),
                y[half:].reshape(-1),
                lam,
            )
        rows.append({"sigma": s, "r2": r2})
    return rows


def ideal_word_gain(clips: int, seed: int = 11) -> dict[str, float]:
    """What each prompt word is worth to an *ideal* denoiser at sigma = 1, from the data alone.

    At sigma = 1 the best velocity prediction is ``eps - E[x0 | what is known]`` and its error is
    the variance of ``x0`` given what is known. For ``clips`` one-object clips this compares the
    leave-one-out group-mean error given the background, colour and direction with the error when
    one of them is hidden (shape: when it is added): the gain (%) is the loss a model loses by
    ignoring that word. The group
    mean is a function of absolute pixel position, so this is the gain for a model that knows
    where (and in which frame) each pixel is; a model that cannot tell gains less."""
    import numpy as np

    from qvgen_tinyworld.dataset import TinyVideoDataset, VideoConfig

    data = TinyVideoDataset(seed=seed, config=VideoConfig(max_objects=1))
    xs, keys = [], []
    for i in range(clips):
        spec = data.spec(i)
        o = spec.objects[0]
        xs.append(data[i][0].numpy())
        keys.append({"color": o.color, "shape": o.shape, "direction": o.direction, "bg": spec.background})
    x = np.stack(xs)

    def loo_error(group: list[str]) -> float:
        total = 0.0
        for g in set(group):
            m = np.asarray([k == g for k in group])
            n = int(m.sum())
            if n < 2:
                continue
            r = x[m] - x[m].mean(axis=0)
            total += float((r**2).sum()) * (n / (n - 1)) ** 2  # leave-one-out residuals
        return total / x.size

    def err(words: tuple[str, ...]) -> float:
        return loo_error(["|".join(k[w] for w in words) for k in keys])

    # Known: background, colour, direction (60 groups, so every group mean rests on many clips);
    # colour and direction are left out of it, shape is added to it (180 groups: needs more clips).
    known = ("bg", "color", "direction")
    base = err(known)
    out = {"clips": clips, "error_bg_color_direction": base}
    for word in ("color", "direction"):
        out[word] = 100.0 * (err(tuple(w for w in known if w != word)) - base) / base
    with_shape = err((*known, "shape"))
    out["shape"] = 100.0 * (base - with_shape) / with_shape
    return out


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=None, help="tiny-teacher file (default: the embedded asset)")
    ap.add_argument("--clips", type=int, default=16, help="training clips (data seed 77, never trained on)")
    ap.add_argument("--sigmas", default="0.3,0.5,0.7,0.8,0.9,0.95")
    ap.add_argument("--steps", type=int, default=30, help="sampler steps on the full shift-3 grid")
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--skip-adherence", action="store_true", help="skip the x0-hat / restart adherence rows")
    ap.add_argument("--word-gain", action="store_true", help="loss gain when a prompt word is swapped")
    ap.add_argument(
        "--ideal-gain", type=int, default=0, metavar="CLIPS",
        help="each word's worth to an ideal position-aware denoiser at sigma 1, from CLIPS data clips",
    )  # fmt: skip
    ap.add_argument("--gain-sigmas", default="0.3,0.5,0.7,0.8,0.9,0.95,0.99")
    ap.add_argument("--gain-clips", type=int, default=0, help="clips for --word-gain (default: --clips)")
    ap.add_argument("--probe", action="store_true", help="linear probe hidden state -> frame index")
    ap.add_argument(
        "--position-use", action="store_true",
        help="(positions teachers) loss with the position channels mirrored, reversed or zeroed",
    )  # fmt: skip
    ap.add_argument("--probe-sigmas", default="0.5,0.9,1.0")
    ap.add_argument("--probe-lambda", type=float, default=1e-3, help="ridge penalty (features standardised)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "artifacts" / "teacher_diagnostics.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    raw, te, info = load_teacher(args.teacher)
    if args.position_use and (info.get("condition") != "positions" or raw.config.in_channels != 3 + POSITION_CHANNELS):
        print(
            f"error: {args.teacher or 'the embedded teacher'}: --position-use needs a positions teacher",
            file=sys.stderr,
        )
        return 2
    model = teacher_denoiser(raw, info)  # takes latents; appends a conditioned teacher's channels
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
    for s in [] if args.skip_adherence else floats(args.sigmas) + [1.0]:
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
    doc: dict[str, Any] = {"teacher": args.teacher or "embedded", "clips": n, "guidance": args.guidance, "rows": rows}

    if args.ideal_gain:
        doc["ideal_word_gain"] = ideal = ideal_word_gain(args.ideal_gain)
        cells = "  ".join(f"{k} {ideal[k]:+.1f}%" for k in WORD_CLASSES)
        print(f"ideal word gain at sigma 1 ({args.ideal_gain} clips): {cells}", flush=True)

    if args.word_gain:
        ng = args.gain_clips or n
        gx0, gprompts = data.batch(range(ng))
        specs = [data.spec(i) for i in range(ng)]
        geps = torch.randn(gx0.shape, generator=torch.Generator().manual_seed(0))  # == eps when the counts match
        swapped = {k: swapped_prompts(specs, k) for k in WORD_CLASSES}
        print(f"word gain ({ng} clips): e.g. {gprompts[0]!r} -> " + ", ".join(repr(v[0]) for v in swapped.values()))
        gain_rows = word_gain(model, te, gx0, gprompts, swapped, floats(args.gain_sigmas), geps)
        for r in gain_rows:
            cells = "  ".join(f"{k} {r[k]['gain_pct']:+7.2f}% (+-{r[k]['se_pct']:.2f})" for k in WORD_CLASSES)
            print(f"word gain sigma {r['sigma']:.2f}: loss true {r['loss_true']:.4f}  {cells}", flush=True)
        doc["word_gain"] = {"clips": ng, "noise_seed": 0, "rows": gain_rows}

    if args.probe:
        probe_rows = frame_probe(
            raw, te, x0, prompts, floats(args.probe_sigmas), eps, lam=args.probe_lambda, condition=info.get("condition")
        )
        for r in probe_rows:
            cells = "  ".join(f"{k} {v:.3f}" for k, v in r["r2"].items())
            print(f"probe sigma {r['sigma']:.2f}: R^2 {cells}", flush=True)
        doc["probe"] = {
            "clips_fit": n // 2,
            "clips_test": n - n // 2,
            "lambda": args.probe_lambda,
            "target": "frame index of each token (0..F'-1)",
            "rows": probe_rows,
        }

    if args.position_use:
        pos_rows = position_use(raw, cond, x0, eps, floats(args.gain_sigmas))
        for r in pos_rows:
            cells = "  ".join(
                f"{k} {r[k]['pct']:+.2f}% (+-{r[k]['se_pct']:.2f})" for k in POSITION_EDITS if k != "true"
            )
            print(f"position use sigma {r['sigma']:.2f}: loss true {r['loss_true']:.4f}  {cells}  "
                  f"output change when zeroed {r['output_change']:.3f}", flush=True)  # fmt: skip
        doc["position_use"] = {"clips": n, "noise_seed": 0, "rows": pos_rows}

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc["wall_s"] = round(time.time() - t0, 1)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out} ({doc['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
