"""The one table of export targets. Adding a target means adding one entry here (and its module).

Every hook is a ``"module:attribute"`` string resolved on first use, so importing the registry
(and ``qvgen_export``) imports no exporter, ONNX Runtime or TensorRT.

- ``export_form``: ``QuantizedWan -> QuantizedWan`` (in place) whose quantized linears each call
  one custom torch op;
- ``layer_form``: ``QuantLinear -> nn.Module``, the export form of one linear (per-layer parity);
- ``translation``: ``() -> {torch op: onnxscript function}`` for ``torch.onnx.export``;
- ``post_process``: ``(onnx_ir.Model) -> None`` after tracing (e.g. fold INT4 initializers);
- ``check_config``: ``(QuantConfig) -> None``, raises for a scheme the target cannot run;
- ``quant_node``: the op_type that marks a lowered quantized linear in the graph;
- ``ort_session_options``: ``(onnxruntime.SessionOptions) -> None`` so ONNX Runtime can run it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


class EngineUnavailableError(RuntimeError):
    """A target's hardware stage cannot run here (TensorRT, a GPU or the plugin library is missing).

    The CLIs report it in one line with exit code 3: the folder was written, the engine was not.
    """


def resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    export_form: str
    layer_form: str
    translation: str
    check_config: str
    quant_node: str
    post_process: str | None = None
    ort_session_options: str | None = None
    # A later stage that needs hardware this machine may lack (an engine build), or None.
    engine: str | None = None

    def hook(self, name: str) -> Any:
        ref = getattr(self, name)
        return None if ref is None else resolve(ref)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="onnx",
            summary="standard ONNX opset 21: INT4 weight initializers feeding DequantizeLinear, per-token dynamic "
            "activation QuantizeLinear/DequantizeLinear; runs on ONNX Runtime",
            export_form="qvgen_export.export.modules:to_export_form",
            layer_form="qvgen_export.export.modules:ExportQuantLinear",
            translation="qvgen_export.export.qdq_lowering:translation_table",
            check_config="qvgen_export.export.qdq_lowering:check_config",
            quant_node="QuantizeLinear",
            post_process="qvgen_export.export.onnx_export:fold_int4_casts",
        ),
        Target(
            name="trt",
            summary="one QvgenW4A4Linear plugin node per quantized linear (activation quantization fused with the "
            "INT4 GEMM), built into a TensorRT engine with the plugin library where TensorRT and a GPU are present; "
            "the same graph runs on ONNX Runtime (CPU) through onnxruntime-extensions",
            export_form="qvgen_export.targets.trt_plugin:to_plugin_form",
            layer_form="qvgen_export.targets.trt_plugin:PluginLinear",
            translation="qvgen_export.targets.trt_plugin:translation_table",
            check_config="qvgen_export.targets.trt_plugin:check_config",
            quant_node="QvgenW4A4Linear",
            ort_session_options="qvgen_export.targets.ort_plugin:add_to_session_options",
            engine="qvgen_export.targets.trt_engine:build_engine",
        ),
    )
}


def get_target(name: str) -> Target:
    """The registered target ``name``; ``ValueError`` naming the choices otherwise."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; expected one of {', '.join(TARGETS)}")
    return TARGETS[name]
