"""Whole-model parity along a real denoising trajectory, and of the sampled video.

Per transformer call of a PyTorch sampling run, both sides (``parity.sides``) get the identical
inputs through Polygraphy; the outputs are compared with statistical measures (cosine, PSNR,
max error) and, where both sides expose them, by the share of activation codes that agree: read
from a QDQ graph's activation QuantizeLinear nodes (extra outputs in a parity copy) and from
PyTorch hooks computing the same codes. A plugin graph or engine keeps its codes inside the
plugin; it is judged on the statistics alone. Inputs and outputs are saved in Polygraphy's JSON
formats (``step_inputs.json``, ``step_outputs.json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qvgen_export.artifact.contract import TIMESTEP, VELOCITY, feeds
from qvgen_export.export.onnx_export import quantized_layer_nodes
from qvgen_export.parity.measures import cosine, psnr
from qvgen_export.parity.sides import PYTORCH, Side, ort_runner, start_comparison, torch_runner, trt_runner
from qvgen_export.quant import functional as QF
from qvgen_export.quant.modules import QuantizedWan, QuantLinear

CODES_PREFIX = "codes/"


def add_code_outputs(onnx_path: Path, out_path: Path) -> list[str]:
    """Copy ``onnx_path`` with every layer's activation codes as an extra uint8 output."""
    import onnx_ir as ir

    model = ir.load(onnx_path)
    graph = model.graph
    names: list[str] = []
    for layer, (_, qnode) in quantized_layer_nodes(model).items():
        cast = ir.node("Cast", [qnode.outputs[0]], attributes={"to": ir.DataType.UINT8}, num_outputs=1)
        cast.outputs[0].name = CODES_PREFIX + layer
        cast.outputs[0].type = ir.TensorType(ir.DataType.UINT8)
        graph.insert_after(qnode, cast)
        graph.outputs.append(cast.outputs[0])
        names.append(layer)
    # Weights go to a data file beside the copy: the source may itself use external data, whose
    # relative path would not resolve from the copy's folder.
    ir.save(model, out_path, external_data=out_path.name + ".data")
    return names


class CodeRecorder:
    """Forward hooks recording each QuantLinear's activation codes ``[T, K]`` (uint8)."""

    def __init__(self, model: QuantizedWan) -> None:
        self.codes: dict[str, torch.Tensor] = {}
        self.handles = [
            layer.register_forward_pre_hook(self._hook(name)) for name, layer in model.quant_linears().items()
        ]

    def _hook(self, name: str) -> Any:
        def hook(mod: QuantLinear, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].float()
            lo_f, hi_f = mod.act_clip()
            lo, hi = QF.act_range(x, lo_f, hi_f)
            s, zp = QF.act_qparams(lo, hi, mod.config.act_qmax)
            self.codes[name] = QF.act_codes(x, s, zp, mod.config.act_qmax).to(torch.uint8).reshape(-1, x.shape[-1])

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class RecordingDenoiser:
    """Wraps a denoiser and keeps every call's inputs and output."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config = getattr(model, "config", None)
        self.calls: list[dict[str, torch.Tensor]] = []

    def __call__(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = True,
        **kw: Any,
    ) -> Any:
        out = self.model(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]
        self.calls.append(
            {
                "hidden_states": hidden_states.clone(),
                "timestep": timestep.clone(),
                "encoder_hidden_states": encoder_hidden_states.clone(),
                "velocity": out.clone(),
            }
        )
        return (out,)


@dataclass
class StepParity:
    call: int
    step: int
    branch: str
    timestep: float
    cosine: float
    psnr_db: float
    max_abs_error: float
    code_agreement: float | None


def _side_runner(
    side: Side, model: QuantizedWan, work_dir: Path, first_feed: dict[str, np.ndarray]
) -> tuple[Any, list[str]]:
    """A whole-model runner for ``side`` and the layers whose codes it outputs (``codes/<layer>``)."""
    if side.kind == "pytorch":
        recorder = CodeRecorder(model)

        def torch_model(
            hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
        ) -> dict[str, torch.Tensor]:
            out = {VELOCITY: model(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]}
            out.update({CODES_PREFIX + n: c for n, c in recorder.codes.items()})
            return out

        runner = torch_runner(torch_model, first_feed, side.label)
        runner.recorder = recorder  # closed by the caller
        return runner, list(model.quant_linears())
    if side.kind == "trt":
        return trt_runner(side, None, side.label), []
    if side.has_codes:
        codes_path = work_dir / f"model_with_codes.{side.target}.onnx"
        layers = add_code_outputs(side.onnx_path, codes_path)
        return ort_runner(side, codes_path, side.label), layers
    return ort_runner(side, side.onnx_path, side.label), []


def check_steps(
    model: QuantizedWan,
    calls: list[dict[str, torch.Tensor]],
    work_dir: Path,
    calls_per_step: int,
    test: Side,
    reference: Side = PYTORCH,
    progress: bool = True,
) -> list[StepParity]:
    """Feed every recorded transformer call to both sides through Polygraphy."""
    from polygraphy.comparator import Comparator, RunResults
    from polygraphy.json import save_json

    start_comparison(test, reference, work_dir)
    call_feeds = [feeds(c["hidden_states"], c["timestep"], c["encoder_hidden_states"]) for c in calls]
    (t_runner, t_codes), (r_runner, r_codes) = (
        _side_runner(side, model, work_dir, call_feeds[0]) for side in (test, reference)
    )
    code_layers = [n for n in t_codes if n in set(r_codes)]
    # A QDQ graph quantizes below 4 bits in a 4-bit container: its QuantizeLinear codes saturate
    # at 15 and the graph clamps after dequantization, so clamp them to the scheme's qmax here.
    qmax = model.qconfig.act_qmax
    results: list[StepParity] = []
    saved: dict[str, list[Any]] = {test.label: [], reference.label: []}
    try:
        it = tqdm(call_feeds, desc="step parity", disable=not progress)
        for i, feed in enumerate(it):
            # One Comparator run per call keeps memory flat on long trajectories.
            run = Comparator.run([t_runner, r_runner], data_loader=[feed])
            t_out, r_out = run[test.label][0], run[reference.label][0]
            v_t, v_r = np.asarray(t_out[VELOCITY]), np.asarray(r_out[VELOCITY])
            agree = total = 0
            for n in code_layers:
                a = np.minimum(np.asarray(t_out[CODES_PREFIX + n]).ravel(), qmax)
                b = np.minimum(np.asarray(r_out[CODES_PREFIX + n]).ravel(), qmax)
                agree += int((a == b).sum())
                total += a.size
            for label, out in ((test.label, t_out), (reference.label, r_out)):
                out = {k: v for k, v in out.items() if not k.startswith(CODES_PREFIX)}
                saved[label].append(type(t_out)(out, runtime=None, runner_name=label))
            results.append(
                StepParity(
                    call=i,
                    step=i // calls_per_step,
                    branch="cond" if i % calls_per_step == 0 else "uncond",
                    timestep=float(feed[TIMESTEP][0]),
                    cosine=cosine(v_r, v_t),
                    psnr_db=psnr(v_r, v_t),
                    max_abs_error=float(np.abs(v_r - v_t).max()),
                    code_agreement=agree / total if total else None,
                )
            )
    finally:
        for runner in (t_runner, r_runner):
            if hasattr(runner, "recorder"):
                runner.recorder.close()
    save_json(call_feeds, work_dir / "step_inputs.json", description="per-call parity inputs")
    outputs = RunResults()
    for label, iters in saved.items():
        outputs.append((label, iters))
    outputs.save(str(work_dir / "step_outputs.json"))
    return results


def as_dicts(results: list[StepParity]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


@dataclass
class FloorCall:
    cosine: float
    code_agreement: float


@torch.no_grad()
def noise_floor(
    model: QuantizedWan, calls: list[dict[str, torch.Tensor]], rel: float, seed: int = 0
) -> list[FloorCall]:
    """How far the PyTorch model itself moves when each call's input is perturbed by ``rel``.

    A deep W4A4 network amplifies float noise: a 1e-7 difference flips an activation code and
    the flip propagates. Another runtime's deviation is judged against this floor, measured with
    the same statistics on the same calls.
    """
    recorder = CodeRecorder(model)
    gen = torch.Generator().manual_seed(seed)
    out: list[FloorCall] = []
    try:
        for c in calls:
            x, t, e = c["hidden_states"], c["timestep"], c["encoder_hidden_states"]
            ref = model(x, t, e, return_dict=False)[0]
            ref_codes = dict(recorder.codes)
            noisy = x * (1 + rel * torch.randn(x.shape, generator=gen))
            v = model(noisy, t, e, return_dict=False)[0]
            agree = sum(int((recorder.codes[n] == ref_codes[n]).sum()) for n in ref_codes)
            total = sum(ref_codes[n].numel() for n in ref_codes)
            out.append(FloorCall(cosine(ref.numpy(), v.numpy()), agree / total if total else 1.0))
    finally:
        recorder.close()
    return out


class PerturbOnce:
    """A denoiser whose first call sees its input perturbed by ``rel`` (i.e. perturbed noise)."""

    def __init__(self, model: Any, rel: float, seed: int = 0) -> None:
        self.model, self.rel, self.done = model, rel, False
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self.done:
            self.done = True
            hidden_states = hidden_states * (1 + self.rel * torch.randn(hidden_states.shape, generator=self.gen))
        return self.model(hidden_states, *args, **kwargs)
