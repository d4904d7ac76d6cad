"""Whole-model parity along a real denoising trajectory, and of the sampled video.

Per transformer call of a PyTorch sampling run, ONNX Runtime gets the identical inputs; the
outputs are compared with statistical measures (cosine, PSNR, max error) and by the share of
activation codes that agree, read from the graph's activation QuantizeLinear nodes (exposed
as extra outputs in a parity copy) and from PyTorch hooks computing the same codes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qvgen_export.export.onnx_export import quantized_layer_nodes
from qvgen_export.quant import functional as QF
from qvgen_export.quant.modules import QuantizedWan, QuantLinear

CODES_PREFIX = "codes/"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    den = np.linalg.norm(a64) * np.linalg.norm(b64)
    return float(a64 @ b64 / den) if den > 0 else float(np.array_equal(a64, b64))


def psnr(ref: np.ndarray, test: np.ndarray, peak: float | None = None) -> float:
    ref64, test64 = ref.astype(np.float64), test.astype(np.float64)
    mse = float(np.mean((ref64 - test64) ** 2))
    if peak is None:
        peak = float(ref64.max() - ref64.min()) or 1.0
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


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
    code_agreement: float


def check_steps(
    model: QuantizedWan,
    onnx_path: Path,
    calls: list[dict[str, torch.Tensor]],
    work_dir: Path,
    session_config: dict[str, str],
    calls_per_step: int,
    progress: bool = True,
) -> list[StepParity]:
    """Feed every recorded transformer call to ONNX Runtime and PyTorch through Polygraphy."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    from qvgen_export.parity.torch_runner import TorchRunner, metadata_from_feed
    from qvgen_export.runtime.backends import ort_session

    G_LOGGER.module_severity = G_LOGGER.ERROR
    work_dir.mkdir(parents=True, exist_ok=True)
    codes_path = work_dir / "model_with_codes.onnx"
    layer_names = add_code_outputs(onnx_path, codes_path)
    recorder = CodeRecorder(model)

    def torch_model(
        hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        out = {"velocity": model(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]}
        out.update({CODES_PREFIX + n: recorder.codes[n] for n in layer_names})
        return out

    feeds = [
        {
            "hidden_states": c["hidden_states"].float().numpy(),
            "timestep": c["timestep"].float().reshape(-1).numpy(),
            "encoder_hidden_states": c["encoder_hidden_states"].float().numpy(),
        }
        for c in calls
    ]
    results: list[StepParity] = []
    try:
        runners = [
            OnnxrtRunner(ort_session(codes_path, session_config), name="onnxruntime"),
            TorchRunner(torch_model, metadata_from_feed(feeds[0]), name="pytorch"),
        ]
        it = tqdm(feeds, desc="step parity", disable=not progress)
        for i, feed in enumerate(it):
            # One Comparator run per call keeps memory flat on long trajectories.
            run = Comparator.run(runners, data_loader=[feed])
            ort_out, pt_out = run["onnxruntime"][0], run["pytorch"][0]
            v_ort, v_pt = np.asarray(ort_out["velocity"]), np.asarray(pt_out["velocity"])
            agree = total = 0
            for n in layer_names:
                a, b = np.asarray(ort_out[CODES_PREFIX + n]).ravel(), np.asarray(pt_out[CODES_PREFIX + n]).ravel()
                agree += int((a == b).sum())
                total += a.size
            results.append(
                StepParity(
                    call=i,
                    step=i // calls_per_step,
                    branch="cond" if i % calls_per_step == 0 else "uncond",
                    timestep=float(feed["timestep"][0]),
                    cosine=cosine(v_pt, v_ort),
                    psnr_db=psnr(v_pt, v_ort),
                    max_abs_error=float(np.abs(v_pt - v_ort).max()),
                    code_agreement=agree / total if total else 1.0,
                )
            )
    finally:
        recorder.close()
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
