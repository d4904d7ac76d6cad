"""Do the quantization-math and PTQ tests guard what they claim? Break the code, run them, count.

Each mutation below is one deliberate bug in the library (a literal source edit) and the tests
that must fail on it. The script copies the sources to a temporary folder, checks that the tests
pass there unmutated, then applies each mutation alone and runs its tests with the copy first
on ``PYTHONPATH`` (so the editable install of the checkout is not what runs). A mutation that no
test catches is "survived": the test suite has a hole there.

    python scripts/mutation_check.py [--only NAME ...] [--out benchmarks/results/mutations.json]

Exit 0 when every mutation is caught, 1 otherwise (also when a mutation no longer applies
because the code changed: update its ``old`` text).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPY = ("qvgen_export", "qvgen_tinyworld", "qvgen_eval", "trainer", "tests", "pyproject.toml")
QM = "tests/core/test_quant_math.py"
PQ = "tests/core/test_ptq_quality.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids (or files) that must fail


MUTATIONS = (
    Mutation(
        "timestep group rounds instead of flooring",
        "qvgen_export/quant/functional.py",
        "k = torch.floor(t * float(num_groups) / float(num_train_timesteps))",
        "k = torch.round(t * float(num_groups) / float(num_train_timesteps))",
        (f"{QM}::test_timestep_group_boundaries",),
    ),
    Mutation(
        "rounding is floor",
        "qvgen_export/quant/functional.py",
        "return (torch.round(x) - x).detach() + x",
        "return (torch.floor(x) - x).detach() + x",
        (f"{QM}::test_weight_fake_quant_error_within_half_step", f"{QM}::test_ste_gradients"),
    ),
    Mutation(
        "activation codes not saturated",
        "qvgen_export/quant/functional.py",
        "return torch.clamp(round_ste(x / scale) + zp, 0, qmax)",
        "return round_ste(x / scale) + zp",
        (f"{QM}::test_ste_gradients",),
    ),
    Mutation(
        "activation clip factors ignored",
        "qvgen_export/quant/functional.py",
        "return xmin * _per_sample(clip_lo, x), xmax * _per_sample(clip_hi, x)",
        "return xmin, xmax",
        (f"{QM}::test_activation_fake_quant_properties", f"{PQ}::test_calibration_does_not_worsen_layer_error"),
    ),
    Mutation(
        "weight zero point not scaled in dequant",
        "qvgen_export/quant/functional.py",
        "zs = expand_groups(zero * scale, q.shape[1])",
        "zs = expand_groups(zero, q.shape[1])",
        (f"{QM}::test_weight_fake_quant_error_within_half_step", f"{PQ}::test_more_bits_track_the_float_model_better"),
    ),
    Mutation(
        "high nibble first",
        "qvgen_export/quant/packing.py",
        "return (c[:, 0::2] | (c[:, 1::2] << 4)).contiguous()",
        "return ((c[:, 0::2] << 4) | c[:, 1::2]).contiguous()",
        (f"{QM}::test_nibble_order_is_low_nibble_first", f"{QM}::test_pack_roundtrip"),
    ),
    Mutation(
        "bit widths not range-checked",
        "qvgen_export/quant/config.py",
        "or not 2 <= v <= 8:",
        "or not 1 <= v <= 9:",
        (f"{QM}::test_config_rejects_bad_values",),
    ),
    Mutation(
        "exclude patterns ignored",
        "qvgen_export/quant/config.py",
        "return inc and not exc",
        "return inc",
        (f"{QM}::test_config_roundtrip_and_selection", f"{PQ}::test_exclude_patterns_keep_layers_float"),
    ),
    Mutation(
        "range search keeps the full range",
        "qvgen_export/quant/range_search.py",
        "SHRINK_GRID = torch.arange(100, 20, -1, dtype=torch.float64) / 100.0",
        "SHRINK_GRID = torch.arange(100, 99, -1, dtype=torch.float64) / 100.0",
        (f"{QM}::test_mse_search_not_worse_than_full_range",),
    ),
    Mutation(
        "clip calibration writes nothing",
        "qvgen_export/quant/ptq.py",
        "            layer.clip_lower.data[gi] = logit\n            layer.clip_upper.data[gi] = logit\n",
        "            pass\n",
        (f"{PQ}::test_calibration_does_not_worsen_layer_error",),
    ),
    Mutation(
        "clip calibration picks the worst candidate",
        "qvgen_export/quant/ptq.py",
        "c = CLIP_GRID[int(torch.argmin(e))]",
        "c = CLIP_GRID[int(torch.argmax(e))]",
        (f"{PQ}::test_calibration_does_not_worsen_layer_error",),
    ),
)


@dataclass
class Outcome:
    name: str
    file: str
    caught_by: list[str]
    survived_in: list[str]
    status: str  # caught | survived | stale (the old text is gone)


def _pytest(root: Path, tests: tuple[str, ...]) -> dict[str, bool]:
    """``{test: passed}``, one pytest process per test so each verdict is its own."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    out = {}
    for t in tests:
        p = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", t],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        out[t] = p.returncode == 0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="run only the mutations whose name contains one of these")
    ap.add_argument("--out", type=Path, help="write the outcomes as JSON here")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="qvgen-mutants-") as tmp:
        root = Path(tmp)
        for name in COPY:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, root / name)
        probe = subprocess.run(
            [sys.executable, "-c", "import qvgen_export; print(qvgen_export.__file__)"],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
            check=True,
        )
        if not probe.stdout.strip().startswith(str(root)):
            print(f"the copy is not what runs: qvgen_export imports from {probe.stdout.strip()}", file=sys.stderr)
            return 2
        every_test = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        base = _pytest(root, every_test)
        if not all(base.values()):
            print(f"unmutated sources fail: {[t for t, ok in base.items() if not ok]}", file=sys.stderr)
            return 2
        outcomes = []
        for m in chosen:
            path = root / m.file
            text = path.read_text()
            if text.count(m.old) != 1:
                outcomes.append(Outcome(m.name, m.file, [], [], "stale"))
                continue
            path.write_text(text.replace(m.old, m.new))
            try:
                res = _pytest(root, m.tests)
            finally:
                path.write_text(text)
            caught = [t for t, ok in res.items() if not ok]
            survived = [t for t, ok in res.items() if ok]
            outcomes.append(Outcome(m.name, m.file, caught, survived, "caught" if not survived else "survived"))
            print(f"{outcomes[-1].status:9s} {m.name}", flush=True)
    report = {
        "command": "python scripts/mutation_check.py" + (f" --out {args.out}" if args.out else ""),
        "seconds": round(time.time() - t0, 1),
        "mutations": [asdict(o) for o in outcomes],
        "caught": sum(o.status == "caught" for o in outcomes),
        "total": len(outcomes),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("caught", "total", "seconds")}))
    return 0 if report["caught"] == report["total"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
