"""Export benchmark on the embedded tiny model: export time, ONNX size vs the float export,
per-step ONNX Runtime latency vs the float ONNX model, and the parity figures.

    python benchmarks/bench_export.py [--scheme w4a4] [--repeats 20] [--threads 2]

Prints JSON and writes it to artifacts/bench/export_<scheme>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from qvgen_export import QuantConfig
from qvgen_export.checkpoint import load_quantized_model, save_checkpoint
from qvgen_export.cli.demo import load_default_model
from qvgen_export.export.onnx_export import export_onnx
from qvgen_export.export.pipeline import ORT_SESSION_CONFIG, export_checkpoint
from qvgen_export.parity.report import SamplingSpec, json_safe, run_parity
from qvgen_export.quant.ptq import ptq_quantize
from qvgen_export.runtime.prompts import DEFAULT_PROMPTS, encode_prompts


def _latency(session, feeds, repeats: int) -> dict[str, float]:
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scheme", default="w4a4")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT default)")
    ap.add_argument("--parity-steps", type=int, default=8)
    args = ap.parse_args()

    model, shape, what = load_default_model()
    qcfg = QuantConfig.preset(args.scheme)
    work = Path(tempfile.mkdtemp(prefix="qvgen_bench_"))
    qmodel = ptq_quantize(copy.deepcopy(model), qcfg, progress=False)
    ckpt = save_checkpoint(qmodel, work / f"wan_{qcfg.name}.safetensors")

    t0 = time.perf_counter()
    export_checkpoint(ckpt, work / "quant")
    quant_export_s = time.perf_counter() - t0
    (work / "float").mkdir()
    t0 = time.perf_counter()
    float_res = export_onnx(model, work / "float", target="float")
    float_export_s = time.perf_counter() - t0

    pe, ne = encode_prompts(list(DEFAULT_PROMPTS), "", int(model.config.text_dim))
    # One CFG step's transformer call: cond and uncond batched, as a deployment would run it.
    x = torch.randn(2 * len(DEFAULT_PROMPTS), *shape, generator=torch.Generator().manual_seed(0))
    feeds = {
        "hidden_states": x.numpy(),
        "timestep": torch.full((x.shape[0],), 500.0).numpy(),
        "encoder_hidden_states": torch.cat([pe, ne]).numpy(),
    }

    def session(path: Path, cfg: dict[str, str]):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if args.threads:
            so.intra_op_num_threads = args.threads
        for k, v in cfg.items():
            so.add_session_config_entry(k, v)
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    q_lat = _latency(session(work / "quant" / "model.onnx", ORT_SESSION_CONFIG), feeds, args.repeats)
    f_lat = _latency(session(float_res.onnx_path, {}), feeds, args.repeats)

    loaded, _ = load_quantized_model(ckpt)
    spec = SamplingSpec(pe, ne, shape, num_steps=args.parity_steps)
    parity = run_parity(loaded, work / "quant", spec, work / "parity", progress=False)["summary"]

    q_bytes = (work / "quant" / "model.onnx").stat().st_size
    f_bytes = float_res.onnx_path.stat().st_size
    result = {
        "model": what,
        "params": sum(p.numel() for p in model.parameters()),
        "scheme": qcfg.name,
        "input": {k: list(v.shape) for k, v in feeds.items()},
        "torch_threads": torch.get_num_threads(),
        "export_seconds": {"quantized": round(quant_export_s, 2), "float": round(float_export_s, 2)},
        "onnx_bytes": {"quantized": q_bytes, "float": f_bytes, "ratio": round(q_bytes / f_bytes, 4)},
        "ort_step_latency_ms": {
            "quantized": {k: round(v, 3) for k, v in q_lat.items()},
            "float": {k: round(v, 3) for k, v in f_lat.items()},
            "quantized_over_float": round(q_lat["median_ms"] / f_lat["median_ms"], 3),
        },
        "parity": parity,
    }
    out = Path("artifacts/bench")
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(result), indent=2, allow_nan=False)
    (out / f"export_{qcfg.name}.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
