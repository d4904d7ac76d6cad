"""The TensorRT runtime backend: a ``trt`` folder's engine in the denoising loop (lazy ``tensorrt``).

torch CUDA tensors are the engine's I/O (``set_tensor_address`` + ``execute_async_v3`` on torch's
current stream, no host copies); with ``cuda_graph=True`` each input shape is captured once into a
CUDA graph and replayed (the denoising loop calls the same shapes at every step). The engine is
refused, in one line, when ``engine.json`` records another TensorRT version, GPU or plugin build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qvgen_export.artifact.contract import INPUT_NAMES, OUTPUT_NAMES
from qvgen_export.artifact.manifest import sha256_file, verify_manifest
from qvgen_export.targets import trt_engine


class TrtBackend:
    """A ``trt`` folder with a built engine (``model.plan`` + ``engine.json``), run by TensorRT."""

    def __init__(self, folder: str | Path, plugin_library: str | Path | None = None, cuda_graph: bool = False) -> None:
        folder = Path(folder)
        self.manifest = verify_manifest(folder)
        if self.manifest.get("target") != "trt":
            raise ValueError(
                f"{folder}: a {self.manifest.get('target')!r} folder; the TensorRT backend runs 'trt' folders "
                "(use the ONNX Runtime backend)"
            )
        self.name = "tensorrt"
        self.model_config = self.manifest["model_config"]
        record = trt_engine.read_engine_record(folder)
        trt, lib, gpu = trt_engine.check_engine_prerequisites(plugin_library)
        trt_engine.check_engine_matches(record, trt.__version__, gpu, sha256_file(lib))
        trt_engine.load_plugin_library(trt, lib)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine((folder / record["engine_file"]).read_bytes())
        if self.engine is None:
            raise ValueError(f"{folder / record['engine_file']}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple[tuple[int, ...], ...], tuple[Any, list[torch.Tensor], torch.Tensor]] = {}

    def _bind(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        for name, t in zip(INPUT_NAMES, inputs, strict=True):
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        out = torch.empty(
            tuple(self.context.get_tensor_shape(OUTPUT_NAMES[0])), dtype=torch.float32, device=self.device
        )
        self.context.set_tensor_address(OUTPUT_NAMES[0], out.data_ptr())
        return out

    def _execute(self) -> None:
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    @torch.no_grad()
    def run(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        inputs = [
            t.detach().to(self.device, torch.float32).contiguous()
            for t in (hidden_states, timestep.reshape(-1), encoder_hidden_states)
        ]
        if not self.cuda_graph:
            out = self._bind(inputs)
            self._execute()
            return out.to(hidden_states.device)
        key = tuple(tuple(t.shape) for t in inputs)
        if key not in self._graphs:
            static = [t.clone() for t in inputs]
            out = self._bind(static)
            self._execute()  # TensorRT must run once outside capture (lazy allocations)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._execute()
            self._graphs[key] = (graph, static, out)
        graph, static, out = self._graphs[key]
        for s, t in zip(static, inputs, strict=True):
            s.copy_(t)
        graph.replay()
        return out.clone().to(hidden_states.device)
