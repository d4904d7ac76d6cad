"""Layer-by-layer parity: each quantized linear, fed the identical input, on two sides.

Deep W4A4 graphs cannot be compared end to end at 1e-5 (a 1e-7 float difference flips an INT4
activation code and the flip compounds with depth), so exactness is checked per layer: every
layer's input is captured from one PyTorch forward, the layer alone is exported with the same
lowering as the full model (the side's target: QDQ nodes or one plugin node), and Polygraphy
runs both sides on that input. Inputs and outputs are saved in Polygraphy's JSON formats
(``layer_inputs.json``, ``layer_outputs.json``) so a run made elsewhere can be compared here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from qvgen_export.export.onnx_export import IR_VERSION, OPSET, quiet_exporter
from qvgen_export.parity.sides import PYTORCH, Side, ort_runner, start_comparison, torch_runner, trt_runner
from qvgen_export.quant.modules import QuantContext, QuantizedWan, QuantLinear
from qvgen_export.targets import get_target

LAYER_TOLERANCE = 1e-5  # max |test - reference| relative to max |reference output|


class _LayerHarness(nn.Module):
    """One linear (fake-quant or an export form) with the timestep groups as an explicit input."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        object.__setattr__(self, "ctx", layer.ctx)

    def forward(self, x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        self.ctx.group = group
        try:
            return self.layer(x)
        finally:
            self.ctx.group = None


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


def layer_export_form(layer: QuantLinear, target: str) -> _LayerHarness:
    """``layer`` in ``target``'s export form, on a private context, inside a harness."""
    form = get_target(target).hook("layer_form")(layer)
    object.__setattr__(form, "ctx", QuantContext())
    return _LayerHarness(form).eval()


def export_layer(harness: _LayerHarness, x: torch.Tensor, group: torch.Tensor, target: str) -> Any:
    """ONNX (onnx_ir model) of one layer through ``target``'s lowering, as the full model gets it."""
    spec = get_target(target)
    dims = {i: torch.export.Dim.AUTO for i in range(x.dim() - 1)}
    with quiet_exporter():
        prog = torch.onnx.export(
            harness,
            (x, group),
            dynamo=True,
            opset_version=OPSET,
            input_names=["x", "group"],
            output_names=["y"],
            dynamic_shapes={"x": dims, "group": {0: torch.export.Dim.AUTO}},
            custom_translation_table=spec.hook("translation")(),
            optimize=False,
            verbose=False,
        )
    model = prog.model
    if spec.post_process:
        spec.hook("post_process")(model)
    model.ir_version = IR_VERSION
    return model


def _swap_weights(template: Any, layer: nn.Module) -> Any:
    """A copy of a same-signature layer graph with ``layer``'s tensors as initializers.

    Exporting through torch.export costs ~1-2 s per call; layers of one shape share a graph,
    so only the first of each signature is exported and the others reuse it. Initializers are
    named after the export form's attributes (``layer.<attr>``; ``_u4`` = folded INT4 codes).
    """
    import ml_dtypes
    import onnx_ir as ir

    model = ir.from_proto(ir.to_proto(template))
    for value in model.graph.initializers.values():
        attr = value.name.removeprefix("layer.layer.").removeprefix("layer.")
        if attr.endswith("_u4"):
            arr = getattr(layer, attr.removesuffix("_u4")).numpy().astype(ml_dtypes.uint4)
        elif hasattr(layer, attr) and isinstance(getattr(layer, attr), torch.Tensor):
            arr = getattr(layer, attr).detach().numpy()
        else:
            continue
        value.const_value = ir.tensor(arr, name=value.name)
    return model


class _LayerGraphs:
    """Per-side layer graphs, exported once per (shape signature) and re-weighted per layer."""

    def __init__(self, side: Side, work_dir: Path) -> None:
        self.side, self.work_dir = side, work_dir
        self.templates: dict[tuple[int, int, bool, int], Any] = {}

    def runner(self, name: str, layer: QuantLinear, x: torch.Tensor, group: torch.Tensor) -> Any:
        side = self.side
        if side.kind == "pytorch":
            harness = _LayerHarness(layer).eval()
            return torch_runner(lambda x, group: {"y": harness(x, group)}, _feed(x, group), side.label)
        spec = side.target_spec
        assert spec is not None
        form = layer_export_form(layer, spec)  # the folder's weight form, as its graph has it
        key = (layer.in_features, layer.out_features, layer.bias is None, x.dim())
        if key not in self.templates:
            self.templates[key] = export_layer(form, x, group, spec)
            model = self.templates[key]
        else:
            model = _swap_weights(self.templates[key], form.layer)
        import onnx_ir as ir

        path = self.work_dir / f"{name}.{spec.replace(':', '-')}.onnx"
        ir.save(model, path)
        if side.kind == "trt":
            return trt_runner(side, path, side.label, {k: v.shape for k, v in _feed(x, group).items()})
        return ort_runner(side, path, side.label)


def _feed(x: torch.Tensor, group: torch.Tensor) -> dict[str, np.ndarray]:
    return {"x": x.float().numpy(), "group": group.numpy()}


def check_layers(
    model: QuantizedWan,
    inputs: tuple[torch.Tensor, ...],
    work_dir: Path,
    test: Side,
    reference: Side = PYTORCH,
    progress: bool = True,
) -> list[LayerParity]:
    """Every quantized linear on ``test`` vs ``reference``, each fed its captured input."""
    from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
    from polygraphy.json import save_json

    start_comparison(test, reference, work_dir)
    captured = capture_layer_inputs(model, inputs)
    layers = model.quant_linears()
    graphs = [_LayerGraphs(test, work_dir), _LayerGraphs(reference, work_dir)]
    results: list[LayerParity] = []
    saved_feeds: list[dict[str, np.ndarray]] = []
    saved = RunResults()
    saved_runs: dict[str, list[Any]] = {test.label: [], reference.label: []}
    for name, layer in tqdm(list(layers.items()), desc="layer parity", disable=not progress):
        x, group = captured[name]
        feed = _feed(x, group)
        runners = [g.runner(name, layer, x, group) for g in graphs]
        run = Comparator.run(runners, data_loader=[feed])
        y_test = np.asarray(run[test.label][0]["y"])
        y_ref = np.asarray(run[reference.label][0]["y"])
        scale = float(np.abs(y_ref).max()) or 1.0
        err = float(np.abs(y_test - y_ref).max())
        verdict = Comparator.compare_accuracy(
            run, compare_func=SimpleCompareFunc(atol=LAYER_TOLERANCE * scale, rtol=0.0)
        )
        saved_feeds.append(feed)
        for label, iters in saved_runs.items():
            iters.append(run[label][0])
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
    for label, iters in saved_runs.items():
        saved.append((label, iters))
    save_json(saved_feeds, work_dir / "layer_inputs.json", description="per-layer parity inputs")
    saved.save(str(work_dir / "layer_outputs.json"))
    return results


def as_dicts(results: list[LayerParity]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
