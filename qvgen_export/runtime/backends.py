"""Inference backends behind one interface, and the drop-in denoiser that wraps them.

A backend maps ``(hidden_states, timestep, encoder_hidden_states)`` to the velocity tensor.
``Denoiser`` gives any backend diffusers' ``WanTransformer3DModel`` call signature, so the
sampling loop (``sampler.sample_video``) or a diffusers pipeline runs it unchanged.
ONNX Runtime is imported lazily; TensorRT and torch-int4 backends plug in the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import torch

from qvgen_export.export.manifest import verify_manifest


class Backend(Protocol):
    name: str
    model_config: dict[str, Any]

    def run(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor: ...


class TorchBackend:
    """Any PyTorch module with the Wan transformer signature (float or fake-quant)."""

    def __init__(self, model: torch.nn.Module, name: str = "torch") -> None:
        from qvgen_export.models.wan import model_config_dict

        self.model = model.eval()
        self.name = name
        inner = getattr(model, "transformer", model)
        self.model_config = model_config_dict(inner)

    @torch.no_grad()
    def run(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.model(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("the ONNX Runtime backend needs onnxruntime: pip install 'qvgen-export[cpu]'") from None
    return onnxruntime


def ort_session(
    onnx_path: str | Path, session_config: dict[str, str] | None = None, providers: list[str] | None = None
) -> Any:
    ort = _import_onnxruntime()
    so = ort.SessionOptions()
    for k, v in (session_config or {}).items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(str(onnx_path), so, providers=providers or ["CPUExecutionProvider"])


class OrtBackend:
    """An exported folder (``manifest.json`` + ``model.onnx``) run by ONNX Runtime."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None, verify: bool = True) -> None:
        folder = Path(folder)
        self.manifest = verify_manifest(folder) if verify else json.loads((folder / "manifest.json").read_text())
        self.name = "onnxruntime"
        self.model_config = self.manifest["model_config"]
        self.session = ort_session(
            folder / self.manifest["model_file"], self.manifest.get("onnxruntime_session_config"), providers
        )

    def run(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        feeds = {
            "hidden_states": hidden_states.detach().float().cpu().numpy(),
            "timestep": timestep.detach().float().reshape(-1).cpu().numpy(),
            "encoder_hidden_states": encoder_hidden_states.detach().float().cpu().numpy(),
        }
        (out,) = self.session.run(["velocity"], feeds)
        return torch.from_numpy(out).to(hidden_states.device)


class Denoiser:
    """Drop-in for ``WanTransformer3DModel.__call__`` backed by any :class:`Backend`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.config = SimpleNamespace(**backend.model_config)
        self.dtype = torch.float32

    def __call__(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        unsupported = {k for k, v in kwargs.items() if v is not None and k != "attention_kwargs"}
        if unsupported:
            raise ValueError(f"{self.backend.name} backend does not support arguments {sorted(unsupported)}")
        timestep = timestep.reshape(-1).expand(hidden_states.shape[0]) if timestep.numel() == 1 else timestep
        out = self.backend.run(hidden_states, timestep, encoder_hidden_states)
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)
