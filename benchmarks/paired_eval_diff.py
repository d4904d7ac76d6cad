"""Paired difference of two ``qvgen-eval`` reports of the same prompts and noise seeds.

    python benchmarks/paired_eval_diff.py artifacts/eval_old/report.json artifacts/eval_new/report.json

Each video of B is paired with the video of A with the same prompt and seed (same noise), and
the per-video differences B - A of every score are bootstrapped over videos (95% percentile
interval, seeded). Pairing removes the prompt-to-prompt and seed-to-seed spread that makes two
unpaired intervals overlap. ``--model NAME`` picks the model inside each report (default: the
reference, i.e. the float teacher); ``--model-b NAME`` another one in B, e.g. a quantized model
against the float teacher of the same report:

    python benchmarks/paired_eval_diff.py R/report.json R/report.json --model-b w4a4-ptq
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qvgen_eval.metrics import SCORE_KEYS, bootstrap_interval


def paired_rows(a: dict, b: dict, model: str | None, model_b: str | None = None) -> tuple[list[dict], list[dict]]:
    ra = a["models"][model or a["reference"]]["per_video"]
    rb = b["models"][model_b or model or b["reference"]]["per_video"]
    key = {(r["prompt"], r["seed"]): r for r in ra}
    pairs = [(key[(r["prompt"], r["seed"])], r) for r in rb if (r["prompt"], r["seed"]) in key]
    if not pairs:
        raise ValueError("the reports share no (prompt, seed) video")
    return [p for p, _ in pairs], [q for _, q in pairs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="report.json of the baseline")
    ap.add_argument("b", help="report.json of the candidate")
    ap.add_argument("--model", default=None, help="model name inside both reports (default: each reference)")
    ap.add_argument("--model-b", default=None, help="model name inside B (default: --model)")
    args = ap.parse_args(argv)
    try:
        a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
        ra, rb = paired_rows(a, b, args.model, args.model_b)
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(ra)} paired videos; B - A, mean [95% bootstrap interval]")
    for k in SCORE_KEYS:
        d = [y[k] - x[k] for x, y in zip(ra, rb)]
        lo, hi = bootstrap_interval(d)
        flag = "" if lo <= 0 <= hi else "  (resolved)"
        print(f"{k:24s} {sum(d) / len(d):+6.1f} [{lo:+.1f}, {hi:+.1f}]{flag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
