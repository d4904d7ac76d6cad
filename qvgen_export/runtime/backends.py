"""Inference backends behind one interface, and the drop-in denoiser that wraps them.

A backend maps ``(hidden_states, timestep, encoder_hidden_states)`` to the velocity tensor.
``Denoiser`` gives any backend diffusers' ``WanTransformer3DModel`` call signature, so the
sampling loop (``sampler.sample_video``) or a diffusers pipeline runs it unchanged.
ONNX Runtime and TensorRT are imported lazily. Which backend runs an exported folder follows from
its target (``qvgen_export.targets``): ONNX Runtime runs both targets' graphs (the plugin graph
through onnxruntime-extensions), TensorRT runs a ``trt`` folder's engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import torch

from qvgen_export.artifact.contract import OUTPUT_NAMES, feeds
from qvgen_export.artifact.manifest import verify_manifest
from qvgen_export.targets import get_target, manifest_spec


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
    onnx_path: str | Path,
    session_config: dict[str, str] | None = None,
    providers: list[str] | None = None,
    target: str = "onnx",
) -> Any:
    """An ONNX Runtime session for a graph of ``target`` (which may register custom ops)."""
    ort = _import_onnxruntime()
    so = ort.SessionOptions()
    for k, v in (session_config or {}).items():
        so.add_session_config_entry(k, v)
    extra = get_target(target).hook("ort_session_options")
    if extra is not None:
        extra(so)
    try:
        return ort.InferenceSession(str(onnx_path), so, providers=providers or ["CPUExecutionProvider"])
    except (
        ort.capi.onnxruntime_pybind11_state.Fail,
        ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
        ort.capi.onnxruntime_pybind11_state.InvalidGraph,
        ort.capi.onnxruntime_pybind11_state.NoSuchFile,
    ) as e:
        # An unreadable or malformed graph (its hash may still match the manifest: a bad export).
        raise ValueError(f"{onnx_path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]})") from None


def read_folder_manifest(folder: str | Path) -> dict[str, Any]:
    """An exported folder's manifest, with hashes checked and the fields every backend needs."""
    folder = Path(folder)
    manifest = verify_manifest(folder)
    for key in ("model_file", "model_config", "target"):
        if key not in manifest:
            raise ValueError(f"{folder / 'manifest.json'}: no {key!r} (not a complete qvgen-export folder)")
    try:
        manifest_spec(manifest)  # a known target and weight form (ONNX Runtime runs every form)
    except ValueError as e:
        raise ValueError(f"{folder / 'manifest.json'}: {e}") from None
    return manifest


class OrtBackend:
    """An exported folder (``manifest.json`` + ``model.onnx``) run by ONNX Runtime, either target."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None) -> None:
        folder = Path(folder)
        self.manifest = read_folder_manifest(folder)
        self.target = self.manifest["target"]
        self.name = "onnxruntime" if self.target == "onnx" else f"onnxruntime-{self.target}"
        self.model_config = self.manifest["model_config"]
        if self.target == "trt":
            from qvgen_export.targets.plugin_contract import check_plugin_nodes

            check_plugin_nodes(folder / self.manifest["model_file"])
        self.session = ort_session(
            folder / self.manifest["model_file"],
            self.manifest.get("onnxruntime_session_config"),
            providers,
            self.target,
        )

    def run(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        (out,) = self.session.run(list(OUTPUT_NAMES), feeds(hidden_states, timestep, encoder_hidden_states))
        return torch.from_numpy(out).to(hidden_states.device)


BACKEND_KINDS = ("auto", "ort", "trt")


def open_backend(folder: str | Path, kind: str = "auto", **kwargs: Any) -> Backend:
    """The backend for an exported folder: ``ort``, ``trt``, or ``auto`` (TensorRT for a ``trt``
    folder that holds an engine on a machine that can run it, ONNX Runtime otherwise)."""
    if kind not in BACKEND_KINDS:
        raise ValueError(f"unknown backend {kind!r}; expected one of {', '.join(BACKEND_KINDS)}")
    folder = Path(folder)
    if kind == "auto":
        manifest = read_folder_manifest(folder)
        kind = "ort"
        if manifest["target"] == "trt" and (folder / "engine.json").is_file():
            from qvgen_export.targets.trt_engine import EngineUnavailableError, check_engine_prerequisites

            try:
                check_engine_prerequisites(kwargs.get("plugin_library"))
                kind = "trt"
            except EngineUnavailableError:
                pass
    if kind == "trt":
        from qvgen_export.runtime.trt_backend import TrtBackend

        return TrtBackend(folder, **kwargs)
    return OrtBackend(folder)


class Denoiser:
    """Drop-in for ``WanTransformer3DModel`` in diffusers' ``WanPipeline``, backed by any :class:`Backend`.

    It has the call signature and the model surface the pipeline reads: ``config``
    (``in_channels``, ``patch_size``, ...), ``dtype`` (float32: the exported graph's I/O),
    ``device`` (where the backend's outputs live) and ``cache_context``. It is not an
    ``nn.Module``: ``pipe.to(...)`` leaves it alone, and diffusers' caching hooks do not apply
    to a compiled graph (``cache_context`` is accepted and does nothing).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.config = SimpleNamespace(**backend.model_config)
        self.dtype = torch.float32
        self.device = torch.device(getattr(backend, "device", "cpu"))

    @contextlib.contextmanager
    def cache_context(self, name: str, **kwargs: Any) -> Iterator[None]:
        yield

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
        # The graph's inputs are float32 (a bf16 pipeline hands bf16 latents); outputs come back
        # in the caller's dtype, as a model of that dtype would return them.
        out = self.backend.run(hidden_states.float(), timestep.float(), encoder_hidden_states.float())
        out = out.to(hidden_states.dtype)
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)
