#!/usr/bin/env python
"""Benchmark the native W4A4 kernels against cuBLAS bf16 and INT8 on the same GPU, in one run.

Per linear shape of Wan 2.1 (1.3B: hidden 1536, FFN 8960; 14B: hidden 5120, FFN 13824) with
M = 32760 tokens (81 frames at 480x832 -> 21 x 30 x 52 latent patches):
  - ``w4a4_total``: activation quantization (bf16 in) + W4A4 GEMM (bf16 out), i.e. what
    ``torch.ops.qvgen.w4a4_linear`` runs, ctypes overhead and allocations included;
  - ``act_quant`` and ``gemm`` alone (per GEMM path where several exist for the device);
  - ``bf16_cublas``: ``torch.nn.functional.linear`` in bf16;
  - ``int8_int_mm``: ``torch._int_mm`` on int8 operands (GEMM only, no quantization);
  effective TOPS = 2*M*N*K / time, weight bytes (packed INT4 + per-channel qparams) vs bf16.
Then one end-to-end transformer forward (Wan 1.3B shape, random weights): the torch-int4
backend (every linear an Int4Linear) versus the bf16 model.

Prints one JSON document (with the device name) and writes it under artifacts/.
Needs a CUDA GPU and the CUDA library (``bash scripts/build_native.sh``); without them it prints
one line saying so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOKENS = 32760
SHAPES: dict[str, list[tuple[int, int]]] = {  # (K, N) = (in_features, out_features)
    "wan2.1-1.3b": [(1536, 1536), (1536, 8960), (8960, 1536)],
    "wan2.1-14b": [(5120, 5120), (5120, 13824), (13824, 5120)],
}
# diffusers WanTransformer3DModel config of Wan 2.1 T2V 1.3B.
WAN_1_3B_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}


def _fail(msg: str) -> int:
    print(f"bench_gemm.py: {msg}", file=sys.stderr)
    return 2


def _time_ms(fn: Any, warmup: int, iters: int, device: str = "cuda") -> float:
    """Median milliseconds of ``fn()`` over ``iters`` runs, timed with CUDA events.

    ``device="cpu"`` (wall clock) only exists so that the script's logic can be smoke-tested
    on a machine without a GPU; CPU numbers mean nothing.
    """
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device == "cpu":
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def bench_shape(m: int, k: int, n: int, warmup: int, iters: int, device: str = "cuda") -> dict[str, Any]:
    import torch

    from qvgen_export.native import ops
    from qvgen_export.quant import functional as QF

    dev = torch.device(device)
    torch.manual_seed(0)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    bias = torch.randn(n, device=dev, dtype=torch.float32)
    # Per-channel asymmetric 4-bit weights (min/max ranges; the numbers do not matter for speed).
    wf = w.float()
    w_lo, w_hi = wf.amin(1, keepdim=True), wf.amax(1, keepdim=True)
    w_scale = ((w_hi - w_lo) / 15).clamp_min(1e-8)
    w_zero = -w_lo / w_scale
    codes = QF.weight_codes(wf, w_scale, w_zero, 15).to(torch.uint8)
    packed = torch.zeros(n, ops.packed_row_bytes(k), dtype=torch.uint8, device=dev)
    packed[:, : (k + 1) // 2] = codes[:, 0::2] | (codes[:, 1::2] << 4)
    w_sum = ops.code_sums(packed, k)
    ws, wz = w_scale.reshape(-1).contiguous(), w_zero.reshape(-1).contiguous()
    clip = torch.full((1,), 0.9, device=dev)
    del wf, codes

    r: dict[str, Any] = {"M": m, "K": k, "N": n}
    flops = 2.0 * m * n * k

    def tops(ms: float) -> float:
        return flops / (ms * 1e-3) / 1e12

    qx, xs, xz, xsum = ops.act_quant(x, clip, clip, 4, m)
    r["act_quant_ms"] = _time_ms(lambda: ops.act_quant(x, clip, clip, 4, m), warmup, iters, device)
    # auto = the path the library picks for this GPU; the others are measured for comparison
    # (on sm_90 mma_u4 is the emulated 4-bit MMA, imma_u8 the unpack-to-INT8 path, wgmma_u8 the
    # CUTLASS sm_90a path from packed operands, i.e. with both unpacks per call).
    from qvgen_export.native import _lib

    wgmma = (
        device == "cuda"
        and bool(_lib.cuda_library().qvgen_cuda_has_wgmma())
        and (torch.cuda.get_device_capability(dev) == (9, 0))
    )
    paths = ["auto", "mma_u4", "imma_u8"] + (["wgmma_u8"] if wgmma else []) if device == "cuda" else ["auto"]
    for p in paths:
        ms = _time_ms(
            lambda p=p: ops.gemm(
                qx, xs, xz, xsum, packed, ws, wz, w_sum, bias, k, torch.bfloat16, path=p if device == "cuda" else None
            ),
            warmup,
            iters,
            device,
        )
        r[f"gemm_{p}_ms"] = ms
        r[f"gemm_{p}_tops"] = tops(ms)
    if device == "cuda":
        r["gemm_auto_path"] = _lib.PATH_NAMES[ops.cuda_gemm_path(dev)]
    if wgmma:
        # The Hopper deployment: weights unpacked to one byte per code once at load, activations
        # quantized straight to bytes, the CUTLASS GEMM with the epilogue tree (bf16 out).
        qw8 = ops.unpack_u8(packed, k)
        a8 = ops.act_quant_u8(x, clip, clip, 4, m)
        r["act_quant_u8_ms"] = _time_ms(lambda: ops.act_quant_u8(x, clip, clip, 4, m), warmup, iters, device)
        r["gemm_u8_ms"] = _time_ms(
            lambda: ops.gemm_u8(*a8, qw8, ws, wz, w_sum, bias, k, torch.bfloat16), warmup, iters, device
        )
        r["gemm_u8_tops"] = tops(r["gemm_u8_ms"])

        def hopper_total() -> Any:
            q = ops.act_quant_u8(x, clip, clip, 4, m)
            return ops.gemm_u8(*q, qw8, ws, wz, w_sum, bias, k, torch.bfloat16)

        r["w4a4_hopper_total_ms"] = _time_ms(hopper_total, warmup, iters, device)
        r["w4a4_hopper_total_tops"] = tops(r["w4a4_hopper_total_ms"])
        # Bit-exactness of the wgmma path against the packed mma.sync path at full size.
        y_w = ops.gemm_u8(*a8, qw8, ws, wz, w_sum, bias, k, torch.bfloat16)
        y_i = ops.gemm(qx, xs, xz, xsum, packed, ws, wz, w_sum, bias, k, torch.bfloat16, path="imma_u8")
        r["wgmma_equals_imma_bits"] = bool(torch.equal(y_w, y_i))
        r["act_quant_u8_equals_packed"] = bool(
            torch.equal(a8[1], xs) and torch.equal(a8[2], xz) and torch.equal(a8[3], xsum)
        )
        del qw8, a8, y_w, y_i
    x3 = x.reshape(1, m, k)
    r["w4a4_total_ms"] = _time_ms(
        lambda: torch.ops.qvgen.w4a4_linear(x3, clip, clip, packed, ws, wz, w_sum, bias, k, 4), warmup, iters, device
    )
    r["w4a4_total_tops"] = tops(r["w4a4_total_ms"])

    bias_bf16 = bias.to(torch.bfloat16)
    r["bf16_cublas_ms"] = _time_ms(lambda: torch.nn.functional.linear(x, w, bias_bf16), warmup, iters, device)
    r["bf16_cublas_tflops"] = tops(r["bf16_cublas_ms"])
    a8 = torch.randint(-128, 127, (m, k), device=dev, dtype=torch.int8)
    b8 = torch.randint(-128, 127, (n, k), device=dev, dtype=torch.int8)
    try:
        r["int8_int_mm_ms"] = _time_ms(lambda: torch._int_mm(a8, b8.t()), warmup, iters, device)
        r["int8_int_mm_tops"] = tops(r["int8_int_mm_ms"])
    except RuntimeError as e:  # shape/arch constraints of _int_mm
        r["int8_int_mm_error"] = str(e).splitlines()[0]
    r["speedup_total_vs_bf16"] = r["bf16_cublas_ms"] / r["w4a4_total_ms"]
    if "w4a4_hopper_total_ms" in r:
        r["speedup_hopper_total_vs_bf16"] = r["bf16_cublas_ms"] / r["w4a4_hopper_total_ms"]

    int4_bytes = n * ((k + 1) // 2) + n * 12  # codes + scale, zero point, code sum (fp32/fp32/int32)
    r["weight_bytes_int4"] = int4_bytes
    r["weight_bytes_bf16"] = 2 * n * k
    r["weight_bytes_ratio_bf16_over_int4"] = (2 * n * k) / int4_bytes

    # Sanity: the kernel's output against PyTorch fake quant on the first rows.
    rows = 256
    y = torch.ops.qvgen.w4a4_linear(x3[:, :rows], clip, clip, packed, ws, wz, w_sum, bias, k, 4).float()[0]
    xh = QF.fake_quant_act(x[:rows].float(), clip, clip, 15)
    y_ref = torch.nn.functional.linear(xh, QF.weight_dequant(packed_codes(packed, k), w_scale, w_zero), bias)
    r["check_max_abs_err"] = float((y - y_ref).abs().max())
    r["check_cosine"] = float(torch.nn.functional.cosine_similarity(y.flatten(), y_ref.flatten(), dim=0))
    return r


def packed_codes(packed: Any, k: int) -> Any:
    import torch

    out = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.float32, device=packed.device)
    out[:, 0::2] = (packed & 0x0F).float()
    out[:, 1::2] = (packed >> 4).float()
    return out[:, :k]


def bench_e2e(
    warmup: int,
    iters: int,
    device: str = "cuda",
    config: dict[str, Any] | None = None,
    latent: tuple[int, ...] = (1, 16, 21, 60, 104),  # 81 frames at 480x832
    text: tuple[int, ...] = (1, 512, 4096),
) -> dict[str, Any]:
    """One transformer forward of the Wan 1.3B shape: torch-int4 backend vs bf16."""
    import copy

    import torch

    from qvgen_export.models.wan import build_wan
    from qvgen_export.quant.config import QuantConfig
    from qvgen_export.quant.modules import QuantizedWan
    from qvgen_export.runtime.torch_int4 import convert_to_int4

    dev = torch.device(device)
    t0 = time.perf_counter()
    base = build_wan(config or WAN_1_3B_CONFIG, seed=0)
    build_s = time.perf_counter() - t0
    cfg = QuantConfig()
    qmodel = QuantizedWan.from_float(copy.deepcopy(base), cfg, init=False)
    with torch.no_grad():  # min/max weight ranges: speed does not depend on the values
        for m in qmodel.quant_linears().values():
            lo, hi = m.weight.amin(1, keepdim=True), m.weight.amax(1, keepdim=True)
            m.w_scale.copy_((hi - lo).clamp_min(1e-8) / cfg.weight_qmax)
            m.w_zero.copy_(-lo / m.w_scale)
    qmodel = qmodel.to(dev)
    n_int4 = len(convert_to_int4(qmodel))
    # Everything that is not an Int4Linear runs in bf16, as in the bf16 model.
    for mod in qmodel.modules():
        if type(mod).__name__ != "Int4Linear":
            for p in mod.parameters(recurse=False):
                p.data = p.data.to(torch.bfloat16)
    ref = base.to(dev, torch.bfloat16)

    torch.manual_seed(0)
    hs = torch.randn(*latent, device=dev, dtype=torch.bfloat16)
    enc = torch.randn(*text, device=dev, dtype=torch.bfloat16)
    t = torch.tensor([500.0], device=dev)
    with torch.no_grad():
        bf16_ms = _time_ms(lambda: ref(hs, t, enc, return_dict=False), warmup, iters, device)
        int4_ms = _time_ms(lambda: qmodel(hs, t, enc, return_dict=False), warmup, iters, device)
        a = ref(hs, t, enc, return_dict=False)[0].float()
        b = qmodel(hs, t, enc, return_dict=False)[0].float()
    return {
        "model": "wan2.1-1.3b (random init)" if config is None else "custom config (random init)",
        "latent": list(latent),
        "text_tokens": text[1],
        "int4_linears": n_int4,
        "bf16_forward_ms": bf16_ms,
        "int4_forward_ms": int4_ms,
        "speedup": bf16_ms / int4_ms,
        "cosine_int4_vs_bf16": float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "model_build_s": build_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=TOKENS, help="M, the number of tokens (default 32760)")
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end transformer forward")
    ap.add_argument("--compact", action="store_true", help="print the JSON on one line")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default artifacts/bench_gemm-<gpu>.json)")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        return _fail("a CUDA GPU is required (torch.cuda.is_available() is False); nothing to measure on CPU")
    from qvgen_export.native import NativeLibraryNotFoundError, cuda_library

    try:
        cuda_library()
    except NativeLibraryNotFoundError as e:
        return _fail(str(e))

    props = torch.cuda.get_device_properties(0)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "compute_capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "timing": f"median of {args.iters} runs after {args.warmup} warm-up runs, CUDA events, warm L2",
        "shapes": {},
    }
    for model in args.models:
        result["shapes"][model] = []
        for k, n in SHAPES[model]:
            r = bench_shape(args.tokens, k, n, args.warmup, args.iters)
            result["shapes"][model].append(r)
            print(
                f"{model} M={args.tokens} K={k} N={n}: w4a4 {r['w4a4_total_ms']:.3f} ms "
                f"(act {r['act_quant_ms']:.3f} + gemm {r['gemm_auto_ms']:.3f}), bf16 {r['bf16_cublas_ms']:.3f} ms, "
                f"int8 {r.get('int8_int_mm_ms', float('nan')):.3f} ms",
                file=sys.stderr,
            )
            torch.cuda.empty_cache()
    if not args.no_e2e:
        result["end_to_end"] = bench_e2e(warmup=1, iters=3)

    text = json.dumps(result, indent=None if args.compact else 2)
    print(text)
    out = args.out
    if out is None:
        slug = "".join(c if c.isalnum() else "-" for c in result["device"]).strip("-").lower()
        out = REPO / "artifacts" / f"bench_gemm-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"bench_gemm.py: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
