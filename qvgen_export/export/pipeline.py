"""``checkpoint -> exported folder``: validation, lowering, manifest, all-or-nothing write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qvgen_export.artifact.manifest import sha256_file, write_manifest
from qvgen_export.checkpoint.format import read_info
from qvgen_export.export.onnx_export import IR_VERSION, OPSET
from qvgen_export.targets import TARGETS, get_target
from qvgen_export.utils.atomic import atomic_dir, ensure_writable_dir

EXPORT_FORMAT = "qvgen-export/onnx-export"
# Exact ONNX Runtime numerics need this session option (see docs/onnx-export.md).
ORT_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0"}


def check_target(target: str) -> None:
    """Raise ``ValueError`` for a target the registry does not know (before any work is done)."""
    get_target(target)


def export_checkpoint(
    ckpt: str | Path, out_dir: str | Path, target: str = "onnx", overwrite: bool = False, progress: bool = False
) -> dict[str, Any]:
    """Export a quantized checkpoint to ``out_dir``; returns the manifest fields written.

    ``target`` is a target spec: a name of :data:`qvgen_export.targets.TARGETS`, optionally with
    ``:form`` for a weight form (``onnx:qdq``; the target's default form otherwise). The ``trt``
    target writes the plugin graph; building its engine is
    :func:`qvgen_export.targets.trt_engine.build_engine`.

    Raises ``CheckpointError`` for a bad checkpoint, ``ValueError`` for a bad target,
    ``NotImplementedError`` for a scheme the target cannot run, ``FileExistsError``/
    ``PermissionError`` for an unusable output folder. On any failure no ``out_dir`` is left
    behind (or the previous one is kept intact).
    """
    spec = get_target(target)
    out_dir = Path(out_dir)
    ensure_writable_dir(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (use --overwrite to replace it)")
    # Header checks only; every tensor's values are checked as the export reads it (once).
    info, tensors = read_info(ckpt, check_values=False)
    spec.hook("check_config")(info.quant_config)
    from qvgen_export.export.block_stitch import export_checkpoint_blocks

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        # Three blocks traced, the rest instantiated from the file block by block (block_stitch.py).
        result = export_checkpoint_blocks(info, tensors, tmp, spec.spec, progress=progress)
        fields: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "target": spec.name,
            "opset": OPSET,
            "ir_version": IR_VERSION,
            "model_file": result.onnx_path.name,
            "external_data": result.data_path.name if result.data_path else None,
            "model_class": info.model_class,
            "model_config": info.model_config,
            "quant_config": info.quant_config.to_dict(),
            "num_quantized_linears": len(info.layers),
            "num_quant_nodes": result.num_quant_nodes,
            "source_checkpoint": {"name": Path(ckpt).name, "sha256": sha256_file(ckpt)},
            "inputs": result.inputs,
            "outputs": result.outputs,
            "onnxruntime_session_config": ORT_SESSION_CONFIG,
            "export_seconds": round(result.seconds, 2),
        }
        if spec.weight_form is not None:
            # How the weights were lowered (targets/registry.py: weight forms); readers default
            # a manifest without it to the target's unrecorded_weight_form.
            fields["weight_form"] = spec.weight_form
        if spec.name == "trt":
            from qvgen_export.targets.plugin_contract import load_contract

            fields["plugin"] = load_contract().to_manifest()
        write_manifest(tmp, fields)
    return fields


__all__ = ["TARGETS", "check_target", "export_checkpoint"]
