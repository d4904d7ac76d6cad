"""Structure-aware export: three traced blocks + per-block instantiation equals a direct export."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from qvgen_export import QuantConfig
from qvgen_export.checkpoint import load_quantized_model, save_checkpoint
from qvgen_export.checkpoint.format import read_info
from qvgen_export.export.onnx_export import export_onnx
from qvgen_export.export.pipeline import ORT_SESSION_CONFIG, export_checkpoint
from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
from qvgen_export.quant.ptq import ptq_quantize
from qvgen_export.runtime.backends import ort_session


@pytest.fixture(scope="module")
def deep_ckpt(tmp_path_factory):
    """5 blocks (the last two instantiated from the template), every layer with its own clip tables."""
    cfg = {**TINY_WAN_CONFIG, "num_layers": 5, "ffn_dim": 128}
    q = ptq_quantize(build_wan(cfg, seed=3), QuantConfig.preset("w4a4"), progress=False)
    with torch.no_grad():
        for i, layer in enumerate(q.quant_linears().values()):
            layer.clip_upper.add_(0.01 * i)
            layer.clip_lower.sub_(0.005 * i)
    return save_checkpoint(q, tmp_path_factory.mktemp("deep") / "deep.safetensors")


def _run(path, target, feed):
    return ort_session(path, ORT_SESSION_CONFIG, target=target).run(None, feed)[0]


@pytest.mark.parametrize("target", ["onnx", "trt"])
def test_stitched_export_equals_direct_export(deep_ckpt, tmp_path, target, monkeypatch):
    from qvgen_export.export import block_stitch, onnx_export

    stitched = tmp_path / "stitched"
    # Weights streamed to external data, the path real models take. Saving visits the blocks
    # twice (external tensors, then the small inline ones), yet each instantiated layer is read
    # from the file once.
    reads = []
    read_layer = block_stitch.read_layer_tensors
    monkeypatch.setattr(
        block_stitch, "read_layer_tensors", lambda p, i, t, e: reads.append(e["name"]) or read_layer(p, i, t, e)
    )
    with monkeypatch.context() as m:
        m.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
        export_checkpoint(deep_ckpt, stitched, target=target)
    assert (stitched / "model.onnx.data").is_file()
    names = [e["name"] for e in read_info(deep_ckpt)[0].layers]
    instantiated = [n for n in names if n.startswith("blocks.") and int(n.split(".")[1]) >= 3]
    assert sorted(reads) == sorted(instantiated) and instantiated
    monkeypatch.setattr(block_stitch, "read_layer_tensors", read_layer)
    model, _ = load_quantized_model(deep_ckpt)
    (tmp_path / "direct").mkdir()
    direct = export_onnx(model, tmp_path / "direct", target=target).onnx_path
    a, b = onnx.load(str(stitched / "model.onnx")), onnx.load(str(direct))
    assert Counter(n.op_type for n in a.graph.node) == Counter(n.op_type for n in b.graph.node)
    names_a = {i.name for i in a.graph.initializer if i.name.startswith("model.")}
    assert names_a == {i.name for i in b.graph.initializer if i.name.startswith("model.")}
    per_block = Counter(n.split(".")[3] for n in names_a if n.startswith("model.transformer.blocks."))
    assert sorted(per_block) == ["0", "1", "2", "3", "4"] and len(set(per_block.values())) == 1
    g = torch.Generator().manual_seed(0)
    x, t, e = torch.randn(2, 3, 4, 16, 16, generator=g), torch.tensor([900.0, 30.0]), torch.randn(2, 6, 64, generator=g)
    feed = {"hidden_states": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()}
    y_stitched, y_direct = _run(stitched / "model.onnx", target, feed), _run(direct, target, feed)
    np.testing.assert_array_equal(y_stitched, y_direct)
    with torch.no_grad():
        y_torch = model(x, t, e, return_dict=False)[0].numpy()
    assert np.abs(y_stitched - y_torch).max() <= 1e-4 * np.abs(y_torch).max()
