"""Layer-by-layer parity: each quantized linear, fed the identical input, in ONNX Runtime vs PyTorch.

Deep W4A4 graphs cannot be compared end to end at 1e-5 (a 1e-7 float difference flips an INT4
activation code and the flip compounds with depth), so exactness is checked per layer: every
layer's input is captured from one PyTorch forward, the layer alone is exported with the same
lowering as the full model, and Polygraphy runs both sides on that input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from qvgen_export.export.modules import ExportQuantLinear
from qvgen_export.export.onnx_export import IR_VERSION, OPSET, _fold_int4_casts, _lowering, _quiet_exporter
from qvgen_export.quant.modules import QuantContext, QuantizedWan

LAYER_TOLERANCE = 1e-5  # max |ORT - PyTorch| relative to max |PyTorch output|


class _LayerHarness(nn.Module):
    """One export-form linear with the timestep groups as an explicit input."""

    def __init__(self, layer: ExportQuantLinear) -> None:
        super().__init__()
        self.layer = layer
        object.__setattr__(self, "ctx", layer.ctx)

    def forward(self, x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        self.ctx.group = group
        return self.layer(x)


@dataclass
class LayerParity:
    name: str
    shape: list[int]
    max_abs_error: float
    output_scale: float
    relative_error: float
    passed: bool
    polygraphy_passed: bool


def capture_layer_inputs(
    model: QuantizedWan, inputs: tuple[torch.Tensor, ...]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """First input ``x`` and timestep groups seen by each quantized linear in one forward."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name, layer in model.quant_linears().items():

        def hook(mod: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
            if name not in seen:
                assert mod.ctx.group is not None
                seen[name] = (args[0].detach().clone(), mod.ctx.group.detach().clone())

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*inputs, return_dict=False)
    finally:
        for h in handles:
            h.remove()
    return seen


def _export_layer(harness: _LayerHarness, x: torch.Tensor, group: torch.Tensor) -> Any:
    """ONNX (onnx_ir model) of one layer through the same lowering as the full model."""
    dims = {i: torch.export.Dim.AUTO for i in range(x.dim() - 1)}
    with _quiet_exporter():
        prog = torch.onnx.export(
            harness,
            (x, group),
            dynamo=True,
            opset_version=OPSET,
            input_names=["x", "group"],
            output_names=["y"],
            dynamic_shapes={"x": dims, "group": {0: torch.export.Dim.AUTO}},
            custom_translation_table=_lowering("onnx"),
            optimize=False,
            verbose=False,
        )
    model = prog.model
    _fold_int4_casts(model)
    model.ir_version = IR_VERSION
    return model


def _swap_weights(template: Any, layer: ExportQuantLinear) -> Any:
    """A copy of a same-signature layer graph with ``layer``'s tensors as initializers.

    Exporting through torch.export costs ~1-2 s per call; layers of one shape share a graph,
    so only the first of each signature is exported and the others reuse it.
    """
    import ml_dtypes
    import onnx_ir as ir

    model = ir.from_proto(ir.to_proto(template))
    for value in model.graph.initializers.values():
        attr = value.name.removeprefix("layer.")
        if attr.endswith("_u4"):
            arr = getattr(layer, attr.removesuffix("_u4")).numpy().astype(ml_dtypes.uint4)
        elif hasattr(layer, attr) and isinstance(getattr(layer, attr), torch.Tensor):
            arr = getattr(layer, attr).detach().numpy()
        else:
            continue
        value.const_value = ir.tensor(arr, name=value.name)
    return model


def check_layers(
    model: QuantizedWan,
    inputs: tuple[torch.Tensor, ...],
    work_dir: Path,
    session_config: dict[str, str],
    progress: bool = True,
) -> list[LayerParity]:
    import onnx_ir as ir
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    from qvgen_export.parity.torch_runner import TorchRunner, metadata_from_feed
    from qvgen_export.runtime.backends import ort_session

    G_LOGGER.module_severity = G_LOGGER.ERROR
    work_dir.mkdir(parents=True, exist_ok=True)
    captured = capture_layer_inputs(model, inputs)
    results: list[LayerParity] = []
    layers = model.quant_linears()
    templates: dict[tuple[int, int, bool, int], Any] = {}
    for name in tqdm(list(layers), desc="layer parity", disable=not progress):
        x, group = captured[name]
        ctx = QuantContext()
        export_layer = ExportQuantLinear(layers[name])
        object.__setattr__(export_layer, "ctx", ctx)
        harness = _LayerHarness(export_layer).eval()
        path = work_dir / f"{name}.onnx"
        key = (export_layer.in_features, export_layer.out_features, export_layer.bias is None, x.dim())
        if key not in templates:
            templates[key] = _export_layer(harness, x, group)
            onnx_model = templates[key]
        else:
            onnx_model = _swap_weights(templates[key], export_layer)
        ir.save(onnx_model, path)
        feed = {"x": x.float().numpy(), "group": group.numpy()}

        def torch_layer(x: torch.Tensor, group: torch.Tensor, harness: _LayerHarness = harness) -> dict[str, Any]:
            return {"y": harness(x, group)}

        runners = [
            OnnxrtRunner(ort_session(path, session_config), name="onnxruntime"),
            TorchRunner(torch_layer, metadata_from_feed(feed), name="pytorch"),
        ]
        run = Comparator.run(runners, data_loader=[feed])
        y_ort = np.asarray(run["onnxruntime"][0]["y"])
        y_pt = np.asarray(run["pytorch"][0]["y"])
        scale = float(np.abs(y_pt).max()) or 1.0
        err = float(np.abs(y_ort - y_pt).max())
        verdict = Comparator.compare_accuracy(
            run, compare_func=SimpleCompareFunc(atol=LAYER_TOLERANCE * scale, rtol=0.0)
        )
        results.append(
            LayerParity(
                name=name,
                shape=list(x.shape),
                max_abs_error=err,
                output_scale=scale,
                relative_error=err / scale,
                passed=err / scale <= LAYER_TOLERANCE,
                polygraphy_passed=bool(verdict),
            )
        )
    return results


def as_dicts(results: list[LayerParity]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
