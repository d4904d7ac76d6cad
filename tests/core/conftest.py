"""Shared fixtures: a tiny random-init Wan, quantized, saved and exported once per session."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch

from qvgen_export import QuantConfig
from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
from qvgen_export.quant.ptq import ptq_quantize

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session")
def float_model() -> torch.nn.Module:
    return build_wan(TINY_WAN_CONFIG, seed=0)


@pytest.fixture()
def make_quantized(float_model):
    def make(scheme: str = "w4a4", **overrides):
        return ptq_quantize(copy.deepcopy(float_model), QuantConfig.preset(scheme, **overrides), progress=False)

    return make


@pytest.fixture(scope="session")
def sample_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(2, 3, 4, 16, 16, generator=g)
    t = torch.tensor([937.0, 41.0])
    e = torch.randn(2, 6, 64, generator=g)
    return x, t, e


@pytest.fixture(scope="session")
def w4a4_ckpt(tmp_path_factory, float_model) -> Path:
    from qvgen_export.checkpoint import save_checkpoint

    q = ptq_quantize(copy.deepcopy(float_model), QuantConfig.preset("w4a4"), progress=False)
    return save_checkpoint(q, tmp_path_factory.mktemp("ckpt") / "wan_w4a4.safetensors")


@pytest.fixture(scope="session")
def w4a4_export(tmp_path_factory, w4a4_ckpt) -> Path:
    from qvgen_export.export import onnx_export
    from qvgen_export.export.pipeline import export_checkpoint

    out = tmp_path_factory.mktemp("export") / "onnx_w4a4"
    # Force the >2 GiB layout (weights as external data) so the path real Wan models take is the
    # one every export test exercises; the float export test covers the single-file layout.
    threshold = onnx_export.EXTERNAL_DATA_THRESHOLD
    onnx_export.EXTERNAL_DATA_THRESHOLD = 0
    try:
        export_checkpoint(w4a4_ckpt, out, target="onnx")
    finally:
        onnx_export.EXTERNAL_DATA_THRESHOLD = threshold
    return out


@pytest.fixture(scope="session")
def qdq_export(tmp_path_factory, w4a4_ckpt) -> Path:
    """The same checkpoint's ``onnx`` folder in the standard-ONNX weight form (``onnx:qdq``);
    ``w4a4_export`` has the default form (MatMulNBits)."""
    from qvgen_export.export.pipeline import export_checkpoint

    out = tmp_path_factory.mktemp("export") / "qdq_w4a4"
    export_checkpoint(w4a4_ckpt, out, target="onnx:qdq")
    return out


@pytest.fixture(scope="session")
def trt_export(tmp_path_factory, w4a4_ckpt) -> Path:
    """The plugin-graph (--target trt) folder of the same checkpoint as ``w4a4_export``."""
    from qvgen_export.export.pipeline import export_checkpoint

    out = tmp_path_factory.mktemp("export") / "trt_w4a4"
    export_checkpoint(w4a4_ckpt, out, target="trt")
    return out
