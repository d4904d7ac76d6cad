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

A target may offer several *weight forms* (how a quantized linear's weights are lowered): each
form replaces some hooks, the first is the default. A target *spec* names a target and, after a
colon, a form (``"onnx"``, ``"onnx:qdq"``); ``get_target`` resolves it and every consumer passes
specs through unchanged. Exported folders record the form as ``manifest["weight_form"]``
(:func:`manifest_spec` reads it back).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
    # {form: {hook: ref}}: alternative lowerings of the weights, the first the default (see above).
    weight_forms: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # The form of a folder whose manifest records none (exported before the target had forms).
    unrecorded_weight_form: str | None = None
    # The resolved form (set by ``get_target``; None for a target without forms).
    weight_form: str | None = None

    def hook(self, name: str) -> Any:
        ref = getattr(self, name)
        return None if ref is None else resolve(ref)

    @property
    def spec(self) -> str:
        """``name`` or ``name:form``: what ``get_target`` resolves back to this target."""
        return self.name if self.weight_form is None else f"{self.name}:{self.weight_form}"


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="onnx",
            summary="ONNX opset 21 for ONNX Runtime: per-token dynamic activation QuantizeLinear/DequantizeLinear; "
            "weights as 4-bit MatMulNBits (weight form 'nbits', the default: weights stay packed in memory) or as "
            "INT4 initializers feeding DequantizeLinear (weight form 'qdq': standard ONNX only)",
            export_form="qvgen_export.export.export_linear:to_export_form",
            layer_form="qvgen_export.export.export_linear:ExportQuantLinear",
            translation="qvgen_export.export.qdq_lowering:translation_table",
            check_config="qvgen_export.export.qdq_lowering:check_config",
            quant_node="QuantizeLinear",
            post_process="qvgen_export.export.onnx_export:fold_int4_casts",
            weight_forms={
                # Linears with no usable block size keep the QDQ form inside an nbits graph, so
                # the post-process (INT4 folding) stays; quant_node counts the MatMulNBits nodes.
                "nbits": {
                    "export_form": "qvgen_export.export.nbits_lowering:to_export_form",
                    "layer_form": "qvgen_export.export.nbits_lowering:layer_form",
                    "translation": "qvgen_export.export.nbits_lowering:translation_table",
                    "quant_node": "MatMulNBits",
                },
                "qdq": {},
            },
            unrecorded_weight_form="qdq",
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


def get_target(spec: str) -> Target:
    """The registered target of ``spec`` (``name`` or ``name:form``) with its weight form's hooks.

    ``ValueError`` naming the choices for an unknown target or form.
    """
    name, sep, form = spec.partition(":")
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; expected one of {', '.join(TARGETS)}")
    target = TARGETS[name]
    if not target.weight_forms:
        if sep:
            raise ValueError(f"target {name!r} has no weight forms (got {spec!r})")
        return target
    form = form if sep else next(iter(target.weight_forms))
    if form not in target.weight_forms:
        raise ValueError(
            f"unknown weight form {form!r} of target {name!r}; expected one of {', '.join(target.weight_forms)}"
        )
    return replace(target, weight_form=form, **target.weight_forms[form])


def manifest_spec(manifest: Mapping[str, Any]) -> str:
    """The target spec an exported folder was lowered with (its manifest's target and weight form)."""
    name = str(manifest["target"])
    target = get_target(name)
    form = manifest.get("weight_form") or target.unrecorded_weight_form
    return get_target(name if form is None else f"{name}:{form}").spec
