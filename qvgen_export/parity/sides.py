"""The two sides a parity check compares: the PyTorch reference or an exported folder on a backend.

A side is ``pytorch`` (the checkpoint's fake-quant model), ``ort:DIR`` (ONNX Runtime on either
target's graph; the plugin graph through onnxruntime-extensions) or ``trt:DIR`` (TensorRT: the
folder's engine for whole-model checks, and one engine per layer graph for layer checks).
Each side gives Polygraphy runners, so every comparison goes through Polygraphy's Comparator
and its saved JSON results, whatever the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

KINDS = ("pytorch", "ort", "trt")


@dataclass(frozen=True)
class Side:
    kind: str
    folder: Path | None = None
    manifest: Mapping[str, Any] | None = None

    @classmethod
    def graph(cls, target: str, kind: str = "ort") -> Side:
        """A side with no folder: layer graphs lowered for ``target`` (a target spec such as
        ``onnx`` or ``onnx:qdq``; per-layer checks only)."""
        from qvgen_export.export.pipeline import ORT_SESSION_CONFIG
        from qvgen_export.targets import get_target

        t = get_target(target)
        manifest: dict[str, Any] = {"target": t.name, "onnxruntime_session_config": ORT_SESSION_CONFIG}
        if t.weight_form is not None:
            manifest["weight_form"] = t.weight_form
        return cls(kind, None, manifest)

    @property
    def target(self) -> str | None:
        return None if self.manifest is None else str(self.manifest["target"])

    @property
    def target_spec(self) -> str | None:
        """Target and weight form the side's graphs are lowered with (``targets.manifest_spec``)."""
        from qvgen_export.targets import manifest_spec

        return None if self.manifest is None else manifest_spec(self.manifest)

    @property
    def label(self) -> str:
        if self.kind == "pytorch":
            return "pytorch"
        if self.kind != "ort":
            return "tensorrt"
        # onnxruntime[onnx] for the target's default weight form, onnxruntime[onnx:qdq] otherwise
        from qvgen_export.targets import get_target

        spec = self.target_spec
        assert spec is not None
        return f"onnxruntime[{self.target if get_target(spec) == get_target(str(self.target)) else spec}]"

    @property
    def has_codes(self) -> bool:
        """Whether the side's graph exposes activation codes (the QDQ graph's QuantizeLinear)."""
        return self.kind == "pytorch" or (self.kind == "ort" and self.target == "onnx")

    @property
    def session_config(self) -> dict[str, str]:
        return dict((self.manifest or {}).get("onnxruntime_session_config", {}))

    @property
    def onnx_path(self) -> Path:
        assert self.folder is not None and self.manifest is not None
        return self.folder / str(self.manifest["model_file"])


PYTORCH = Side("pytorch")


def start_comparison(test: Side, reference: Side, work_dir: Path) -> None:
    """What every parity check does first: refuse one side twice, quiet Polygraphy's logger
    (its per-run INFO lines would drown the progress bar), create the work folder."""
    if test.label == reference.label:
        raise ValueError(f"parity needs two different sides, got {test.label} twice")
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    work_dir.mkdir(parents=True, exist_ok=True)


def parse_side(spec: str | Path) -> Side:
    """``pytorch``, ``ort:DIR``, ``trt:DIR`` or a bare ``DIR`` (ONNX Runtime)."""
    from qvgen_export.runtime.backends import read_folder_manifest

    text = str(spec)
    if text == "pytorch":
        return Side("pytorch")
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS:
        kind, rest = "ort", text
    folder = Path(rest)
    manifest = read_folder_manifest(folder)
    if kind == "trt" and manifest["target"] != "trt":
        raise ValueError(f"{folder}: a {manifest['target']!r} folder; TensorRT runs 'trt' folders")
    return Side(kind, folder, manifest)


def ort_runner(side: Side, onnx_path: Path, name: str) -> Any:
    from polygraphy.backend.onnxrt import OnnxrtRunner

    from qvgen_export.runtime.backends import ort_session

    return OnnxrtRunner(ort_session(onnx_path, side.session_config, target=side.target or "onnx"), name=name)


def trt_runner(side: Side, onnx_path: Path | None, name: str, profile_shapes: Mapping[str, Any] | None = None) -> Any:
    """A Polygraphy TensorRT runner: the folder's built engine, or an engine built from ``onnx_path``."""
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromBytes,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        Profile,
        TrtRunner,
    )

    from qvgen_export.targets import trt_engine

    trt, lib, _ = trt_engine.check_engine_prerequisites()
    trt_engine.load_plugin_library(trt, lib)
    if onnx_path is None:
        assert side.folder is not None
        record = trt_engine.read_engine_record(side.folder)
        return TrtRunner(EngineFromBytes((side.folder / record["engine_file"]).read_bytes()), name=name)
    profiles = []
    if profile_shapes:
        prof = Profile()
        for input_name, shape in profile_shapes.items():
            prof.add(input_name, shape, shape, shape)
        profiles.append(prof)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    return TrtRunner(EngineFromNetwork(network, CreateConfig(profiles=profiles)), name=name)


def torch_runner(fn: Callable[..., Mapping[str, torch.Tensor]], feed: Mapping[str, np.ndarray], name: str) -> Any:
    from qvgen_export.parity.torch_runner import TorchRunner, metadata_from_feed

    return TorchRunner(fn, metadata_from_feed(feed), name=name)


def denoiser(side: Side, model: Any) -> Any:
    """Something with the transformer's call signature, for sampling a whole video on ``side``."""
    if side.kind == "pytorch":
        return model
    from qvgen_export.runtime.backends import Denoiser, open_backend

    assert side.folder is not None
    return Denoiser(open_backend(side.folder, side.kind))
