import json

import numpy as np
import onnx
import pytest
import torch

from qvgen_export import QuantConfig
from qvgen_export.artifact.manifest import verify_manifest
from qvgen_export.checkpoint import load_quantized_model
from qvgen_export.parity.steps import cosine
from qvgen_export.quant.ptq import ptq_quantize
from qvgen_export.runtime.backends import Denoiser, OrtBackend


def test_graph_structure(qdq_export):
    manifest = json.loads((qdq_export / "manifest.json").read_text())
    assert manifest["weight_form"] == "qdq"
    model = onnx.load(str(qdq_export / manifest["model_file"]))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10
    assert {o.domain: o.version for o in model.opset_import}[""] == 21
    n_layers = manifest["num_quantized_linears"]
    int4 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.UINT4 and len(i.dims) == 2]
    assert len(int4) == n_layers == 26
    # every INT4 weight feeds a DequantizeLinear; no float copy of a quantized weight survives
    consumers = {n.input[0]: n.op_type for n in model.graph.node if n.input}
    assert all(consumers[i.name] == "DequantizeLinear" for i in int4)
    assert not any(i.name.endswith("to_q.weight") for i in model.graph.initializer)
    ops = [n.op_type for n in model.graph.node]
    # every layer reaches its INT4 weight and its activation codes; linears reading the same
    # input with identical clip tables (q/k/v after PTQ) share one activation quantization,
    # which is two QuantizeLinear nodes: the codes and the integer zero point
    import onnx_ir as ir

    from qvgen_export.export.onnx_export import quantized_layer_nodes

    layer_map = quantized_layer_nodes(ir.load(str(qdq_export / manifest["model_file"])))
    assert len(layer_map) == n_layers
    act_q = {q.name for _, q in layer_map.values()}
    assert ops.count("QuantizeLinear") == 2 * len(act_q)
    assert [i.name for i in model.graph.input] == ["hidden_states", "timestep", "encoder_hidden_states"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and isinstance(dims[2], str) and isinstance(dims[3], str)


def test_manifest_hashes(w4a4_export, tmp_path):
    doc = verify_manifest(w4a4_export)
    assert doc["opset"] == 21 and doc["target"] == "onnx"
    assert set(doc["files"]) == {"model.onnx", "model.onnx.data"}
    assert doc["external_data"] == "model.onnx.data"
    assert doc["tools"]["onnx"] == onnx.__version__
    tampered = tmp_path / "copy"
    import shutil

    shutil.copytree(w4a4_export, tampered)
    with open(tampered / "model.onnx.data", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="SHA-256 does not match"):
        verify_manifest(tampered)


@pytest.mark.parametrize("shape", [(1, 2, 8, 8, 3), (3, 5, 12, 20, 11)])
def test_dynamic_shapes_match_pytorch(w4a4_ckpt, w4a4_export, shape):
    b, f, h, w, L = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(b, 3, f, h, w, generator=g)
    t = torch.rand(b, generator=g) * 1000
    e = torch.randn(b, L, 64, generator=g)
    model, _ = load_quantized_model(w4a4_ckpt)
    with torch.no_grad():
        ref = model(x, t, e, return_dict=False)[0]
    out = Denoiser(OrtBackend(w4a4_export))(x, t, e, return_dict=False)[0]
    assert out.shape == ref.shape
    # deep W4A4 graphs are compared statistically (code flips compound); per-layer exactness is
    # covered by the parity tests
    assert cosine(ref.numpy(), out.numpy()) > 0.999


def test_scalar_timestep_is_broadcast(w4a4_export):
    den = Denoiser(OrtBackend(w4a4_export))
    x = torch.randn(2, 3, 2, 8, 8)
    e = torch.randn(2, 4, 64)
    a = den(x, torch.tensor(500.0), e).sample
    b = den(x, torch.tensor([500.0, 500.0]), e).sample
    assert torch.equal(a, b)


def test_w3a3_grouped_layers_exact(tmp_path, make_quantized, sample_inputs):
    """3-bit codes in 4-bit containers, per-group weights: layer-level exactness in ORT."""
    from qvgen_export.parity.layers import check_layers
    from qvgen_export.parity.sides import Side

    q = make_quantized("w3a3", weight_granularity="per_group", group_size=32)
    results = check_layers(q, sample_inputs, tmp_path, Side.graph("onnx"), progress=False)
    assert len(results) == 26
    assert all(r.passed and r.polygraphy_passed for r in results), max(r.relative_error for r in results)


def test_float_export_for_baselines(tmp_path, float_model, sample_inputs):
    from qvgen_export.export.onnx_export import export_onnx
    from qvgen_export.runtime.backends import ort_session

    res = export_onnx(float_model, tmp_path, target="float")
    assert res.data_path is None and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    sess = ort_session(res.onnx_path)
    x, t, e = sample_inputs
    out = sess.run(None, {"hidden_states": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()})[0]
    with torch.no_grad():
        ref = float_model(x, t, e, return_dict=False)[0].numpy()
    assert np.abs(out - ref).max() < 1e-4


def test_temporal_patch_export_keeps_frames_dynamic(tmp_path):
    """A temporal patch > 1 (Wan and the embedded teacher use 1): frames stay dynamic in
    multiples of the patch, and the W4A4 graph matches PyTorch at several frame counts."""
    from qvgen_export.checkpoint import save_checkpoint
    from qvgen_export.export.pipeline import export_checkpoint
    from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan

    float_model = build_wan(dict(TINY_WAN_CONFIG, patch_size=(2, 4, 4)), seed=1)
    q = ptq_quantize(float_model, QuantConfig.preset("w4a4"), progress=False)
    ckpt = save_checkpoint(q, tmp_path / "pt2.safetensors")
    export_checkpoint(ckpt, tmp_path / "onnx", target="onnx")
    den = Denoiser(OrtBackend(tmp_path / "onnx"))
    model, _ = load_quantized_model(ckpt)
    for frames in (2, 6):
        g = torch.Generator().manual_seed(frames)
        x, t, e = torch.randn(2, 3, frames, 8, 12, generator=g), torch.tensor([700.0, 90.0]), torch.randn(2, 5, 64)
        with torch.no_grad():
            ref = model(x, t, e, return_dict=False)[0]
        got = den(x, t, e, return_dict=False)[0]
        assert got.shape == ref.shape == x.shape
        assert cosine(ref.numpy(), got.numpy()) > 0.999
