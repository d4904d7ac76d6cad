"""Score the bad-input corpus and the checkpoint fuzz against the checkout on PYTHONPATH.

    python scripts/hardening_counts.py --work artifacts/hardening [--fuzz 2000]
    PYTHONPATH=../old_worktree:tests/core python scripts/hardening_counts.py --work artifacts/hardening_before

Prints one JSON object: corpus counts (cases, clean, tracebacks, accepted_when_bad, other_exit,
leftovers) and fuzz counts by exception type. Training-state cases need --train (slower).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--fuzz", type=int, default=300)
    ap.add_argument("--train", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from hardening_corpus import build_corpus, run_fuzz, score, train_toml

    import qvgen_export
    from qvgen_export import QuantConfig
    from qvgen_export.checkpoint import save_checkpoint
    from qvgen_export.export.pipeline import export_checkpoint
    from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
    from qvgen_export.quant.ptq import ptq_quantize

    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    q = ptq_quantize(copy.deepcopy(build_wan(TINY_WAN_CONFIG, seed=0)), QuantConfig.preset("w4a4"), progress=False)
    ckpt = save_checkpoint(q, w / "base" / "wan_w4a4.safetensors")
    export_checkpoint(ckpt, w / "base" / "onnx_w4a4", overwrite=True)
    run = None
    if args.train:
        from trainer.qat.cli import main as train_main

        train_main(["--config", str(train_toml(w / "base" / "t.toml", w / "base" / "run")), "--stop-after", "1"])
        run = w / "base" / "run"
    counts, bad = score(build_corpus(ckpt, w / "base" / "onnx_w4a4", run, w / "corpus"))
    fuzz = run_fuzz(ckpt, w, args.fuzz, seed=1234) if args.fuzz else {}
    doc = {"code": qvgen_export.__file__, "corpus": counts, "fuzz": dict(fuzz)}
    doc["not_clean"] = [f"{n}: exit {o.code} {(o.stderr or [''])[-1][:120]}" for n, o in bad]
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
