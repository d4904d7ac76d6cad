"""The plugin node on ONNX Runtime (CPU): an onnxruntime-extensions custom op over the C++ reference.

``QvgenW4A4Linear`` nodes (domain ``ai.onnx.contrib``, see ``trt_plugin.json``) run through
onnxruntime-extensions' Python custom-op bridge, which calls the CPU reference library
(plugins/reference, through ``qvgen_export.native.ops``) with the same arguments the TensorRT
plugin passes to the CUDA kernels, so the graph that TensorRT builds is the graph checked here.
The bridge hands outputs back as Python lists: fine for the tiny models and per-layer checks,
slow for real sizes (a real-size plugin graph is TensorRT's to run).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from qvgen_export.targets.plugin_contract import load_contract


def _import_extensions() -> Any:
    try:
        import onnxruntime_extensions
    except ImportError:
        raise ImportError(
            "running the plugin graph on ONNX Runtime needs onnxruntime-extensions: pip install 'qvgen-export[cpu]'"
        ) from None
    return onnxruntime_extensions


def plugin_forward(
    x: np.ndarray,
    clip_lo: np.ndarray,
    clip_hi: np.ndarray,
    qweight: np.ndarray,
    w_scale: np.ndarray,
    w_zero: np.ndarray,
    w_sum: np.ndarray,
    bias: np.ndarray,
    in_features: int,
    out_features: int,
    act_bits: int,
    weight_bits: int,
) -> np.ndarray:
    """The node's computation: the reference act_quant + GEMM, as the plugin's enqueue calls the kernels."""
    import torch

    from qvgen_export.native import ops

    c = load_contract()
    c.field("act_bits").check(int(act_bits))
    k, n = int(in_features), int(out_features)
    if x.shape[-1] != k or qweight.shape[0] != n or qweight.dtype != np.int32:
        raise ValueError(
            f"{c.op_type}: x [..., {x.shape[-1]}] / qweight {qweight.dtype} {list(qweight.shape)} do not match "
            f"in_features={k}, out_features={n}"
        )
    lead = x.shape[:-1]
    b = x.shape[0]
    x2 = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, k)
    m = x2.shape[0]
    if m == 0:
        return np.zeros((*lead, n), dtype=np.float32)
    qx, xs, xz, xsum = ops.act_quant(
        x2,
        torch.from_numpy(np.ascontiguousarray(clip_lo, dtype=np.float32)).reshape(-1),
        torch.from_numpy(np.ascontiguousarray(clip_hi, dtype=np.float32)).reshape(-1),
        int(act_bits),
        m // b,
    )
    qw = torch.from_numpy(np.ascontiguousarray(qweight)).view(torch.uint8)  # [N, 4*LDW], the kernel rows
    y = ops.gemm(
        qx,
        xs,
        xz,
        xsum,
        qw,
        torch.from_numpy(np.ascontiguousarray(w_scale, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(w_zero, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(w_sum, dtype=np.int32)),
        torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32)),
        k,
    )
    return y.numpy().reshape(*lead, n)


@functools.cache
def register() -> str:
    """Register the custom op with onnxruntime-extensions (once); returns the library to load."""
    ext = _import_extensions()
    c = load_contract()
    dt = {"float32": ext.PyCustomOpDef.dt_float, "int32": ext.PyCustomOpDef.dt_int32}
    attrs = {f.name: ext.PyCustomOpDef.dt_int64 for f in c.fields}
    attrs.update(plugin_version=ext.PyCustomOpDef.dt_string, plugin_namespace=ext.PyCustomOpDef.dt_string)

    def run(*inputs: np.ndarray, **attributes: Any) -> np.ndarray:
        fields = {f.name: attributes[f.name] for f in c.fields}
        return plugin_forward(*inputs, **fields)

    ext.onnx_op(
        op_type=c.op_type,
        inputs=[dt[d[0]] for d in c.input_dtypes],  # x runs as float32 here (the exported graphs are float32)
        outputs=[ext.PyCustomOpDef.dt_float],
        attrs=attrs,
    )(run)
    return ext.get_library_path()


def add_to_session_options(so: Any) -> None:
    """Make an ``onnxruntime.SessionOptions`` able to run plugin nodes."""
    so.register_custom_ops_library(register())
