"""Weight form ``nbits`` of target ``onnx``: quantized linears as ONNX Runtime's 4-bit MatMulNBits.

Parity against the PyTorch reference and against the QDQ form, per layer and end to end; the
block-stitched export against a direct export; graph structure; manifest and form selection.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from qvgen_export import QuantConfig
from qvgen_export.checkpoint import load_quantized_model
from qvgen_export.export.nbits_lowering import NbitsQuantLinear, block_size
from qvgen_export.export.onnx_export import quantized_layer_nodes
from qvgen_export.export.pipeline import ORT_SESSION_CONFIG
from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
from qvgen_export.parity.layers import LAYER_TOLERANCE, check_layers
from qvgen_export.parity.sides import Side, parse_side
from qvgen_export.quant.ptq import ptq_quantize
from qvgen_export.runtime.backends import OrtBackend, ort_session
from qvgen_export.targets import get_target, manifest_spec


def _inputs(seed: int = 0, text_dim: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(2, 3, 4, 16, 16, generator=g), torch.tensor([900.0, 30.0])
    return x, t, torch.randn(2, 6, text_dim, generator=g)


def _feed(seed: int = 0, text_dim: int = 64) -> dict[str, np.ndarray]:
    x, t, e = _inputs(seed, text_dim)
    return {"hidden_states": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()}


def _run(path, feed):  # type: ignore[no-untyped-def]
    return ort_session(path, ORT_SESSION_CONFIG).run(None, feed)[0]


def _torch(model, feed):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        args = [torch.from_numpy(feed[k]) for k in ("hidden_states", "timestep", "encoder_hidden_states")]
        return model(*args, return_dict=False)[0].numpy()


# -- form selection ------------------------------------------------------------------------------


def test_target_specs_and_block_sizes():
    assert get_target("onnx").weight_form == "nbits" and get_target("onnx").quant_node == "MatMulNBits"
    assert get_target("onnx:qdq").quant_node == "QuantizeLinear" and get_target("onnx:qdq").spec == "onnx:qdq"
    assert get_target("trt").weight_form is None
    with pytest.raises(ValueError, match="unknown weight form 'int4' of target 'onnx'; expected one of nbits, qdq"):
        get_target("onnx:int4")
    with pytest.raises(ValueError, match="target 'trt' has no weight forms"):
        get_target("trt:nbits")
    # a folder written before weight forms existed is a QDQ graph
    assert manifest_spec({"target": "onnx"}) == "onnx:qdq"
    assert manifest_spec({"target": "onnx", "weight_form": "nbits"}) == "onnx:nbits"
    assert manifest_spec({"target": "trt"}) == "trt"
    w4 = QuantConfig.preset("w4a4")
    assert [block_size(k, w4) for k in (64, 1536, 8960, 200, 24)] == [64, 256, 256, None, None]
    assert block_size(256, QuantConfig.preset("w8a8")) is None  # 8-bit codes keep QDQ
    assert block_size(64, QuantConfig.preset("w3a3")) == 64  # 3-bit codes in the 4-bit container
    g32 = QuantConfig.preset("w4a4", weight_granularity="per_group", group_size=32)
    g24 = QuantConfig.preset("w4a4", weight_granularity="per_group", group_size=24)
    g8 = QuantConfig.preset("w4a4", weight_granularity="per_group", group_size=8)
    assert (block_size(256, g32), block_size(240, g24), block_size(64, g8)) == (32, None, None)


def _matmulnbits_alone(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.NodeProto]:
    """The one MatMulNBits node of a layer graph with its weight initializers, A as graph input."""
    (node,) = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    inits = [i for i in proto.graph.initializer if i.name in node.input[1:]]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    graph = onnx.helper.make_graph(
        [node],
        "matmulnbits",
        [onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, [None, attrs["K"]])],
        [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, [None, attrs["N"]])],
        inits,
    )
    return onnx.helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version), node


@pytest.mark.parametrize("scheme", [{}, {"weight_granularity": "per_group", "group_size": 16}])
def test_nbits_weight_is_the_reference_weight_bit_for_bit(sample_inputs, scheme):
    """MatMulNBits' weight, read back through an identity A, equals PyTorch's ``q*s - z*s``."""
    import onnx_ir as ir

    from qvgen_export.parity.layers import capture_layer_inputs, export_layer, layer_export_form

    cfg = {**TINY_WAN_CONFIG, "ffn_dim": 512, "num_layers": 1}
    q = ptq_quantize(build_wan(cfg, seed=1), QuantConfig.preset("w4a4", **scheme), progress=False)
    name = "blocks.0.ffn.net.2"  # K = 512: 2 blocks of 256 per channel (scales repeated), 32 per group
    layer = q.quant_linears()[name]
    x, group = capture_layer_inputs(q, sample_inputs)[name]
    harness = layer_export_form(layer, "onnx:nbits")
    assert isinstance(harness.layer, NbitsQuantLinear)
    model, node = _matmulnbits_alone(ir.to_proto(export_layer(harness, x, group, "onnx:nbits")))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"K": 512, "N": 64, "bits": 4, "block_size": 256 if not scheme else 16, "accuracy_level": 1}
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    w_ort = sess.run(None, {node.input[0]: np.eye(512, dtype=np.float32)})[0]  # [K, N]
    w_ref = layer.quantized_weight().detach().t().numpy()
    np.testing.assert_array_equal(w_ort, w_ref)


# -- the default onnx folder (conftest's w4a4_export) -----------------------------------------------


def test_nbits_graph_structure_and_manifest(w4a4_export):
    manifest = json.loads((w4a4_export / "manifest.json").read_text())
    assert manifest["target"] == "onnx" and manifest["weight_form"] == "nbits"
    assert manifest_spec(manifest) == "onnx:nbits"
    assert manifest["num_quant_nodes"] == manifest["num_quantized_linears"] == 26
    model = onnx.load(str(w4a4_export / manifest["model_file"]))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}["com.microsoft"] == 1
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulNBits"] == 26
    # no weight DequantizeLinear, no INT4 weight (the scalar UINT4 initializers are activation zero
    # points' types): every DQ is an activation's, right after its QuantizeLinear
    assert not [
        i.name
        for i in model.graph.initializer
        if ".codes_t" in i.name or len(i.dims) == 2 and i.data_type == onnx.TensorProto.UINT4
    ]
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(producers.get(n.input[0]) == "QuantizeLinear" for n in dq)
    packed = {i.name: i for i in model.graph.initializer if i.name.endswith(".nbits_b")}
    assert len(packed) == 26 and all(
        i.data_type == onnx.TensorProto.UINT8 and len(i.dims) == 3 for i in packed.values()
    )
    import onnx_ir as ir

    layers = quantized_layer_nodes(ir.load(str(w4a4_export / manifest["model_file"])))
    assert len(layers) == 26 and {m.op_type for m, _ in layers.values()} == {"MatMulNBits"}


def test_nbits_layers_match_pytorch_and_qdq(w4a4_export, w4a4_ckpt, sample_inputs, tmp_path):
    model, _ = load_quantized_model(w4a4_ckpt)
    side = parse_side(f"ort:{w4a4_export}")
    assert side.target_spec == "onnx:nbits"
    vs_torch = check_layers(model, sample_inputs, tmp_path / "a", side, progress=False)
    assert len(vs_torch) == 26 and all(r.passed and r.polygraphy_passed for r in vs_torch)
    assert max(r.relative_error for r in vs_torch) <= LAYER_TOLERANCE
    # Same dequantized weights (q*s - z*s, bit for bit) and the same MLAS SGEMM: the two weight
    # forms give identical layer outputs.
    vs_qdq = check_layers(model, sample_inputs, tmp_path / "b", side, Side.graph("onnx:qdq"), progress=False)
    assert len(vs_qdq) == 26 and all(r.max_abs_error == 0.0 for r in vs_qdq)
    # ... and each side really ran its own form's layer graph
    name = "blocks.1.ffn.net.2"
    nbits = Counter(n.op_type for n in onnx.load(str(tmp_path / "b" / f"{name}.onnx-nbits.onnx")).graph.node)
    qdq = Counter(n.op_type for n in onnx.load(str(tmp_path / "b" / f"{name}.onnx-qdq.onnx")).graph.node)
    assert (nbits["MatMulNBits"], nbits["DequantizeLinear"]) == (1, 1)  # the activation's DQ only
    assert (qdq["MatMulNBits"], qdq["DequantizeLinear"]) == (0, 2)


def test_nbits_end_to_end_equals_qdq(w4a4_export, qdq_export, w4a4_ckpt):
    feed = _feed(1)
    y_nbits, y_qdq = _run(w4a4_export / "model.onnx", feed), _run(qdq_export / "model.onnx", feed)
    np.testing.assert_array_equal(y_nbits, y_qdq)
    model, _ = load_quantized_model(w4a4_ckpt)
    y_torch = _torch(model, feed)
    assert np.abs(y_nbits - y_torch).max() <= 1e-4 * np.abs(y_torch).max()
    assert OrtBackend(w4a4_export).name == "onnxruntime"


# -- linears without a block size keep the QDQ form; block stitching ---------------------------------


def _check_stitched_equals_direct(pair, text_dim):  # type: ignore[no-untyped-def]
    """conftest's stitched and direct exports: same ops, same weights, same ORT outputs, PyTorch's."""
    a, b = onnx.load(str(pair.stitched / "model.onnx")), onnx.load(str(pair.direct))
    assert Counter(n.op_type for n in a.graph.node) == Counter(n.op_type for n in b.graph.node)
    names = {i.name for i in a.graph.initializer if i.name.startswith("model.")}
    assert names == {i.name for i in b.graph.initializer if i.name.startswith("model.")}
    feed = _feed(2, text_dim)
    y_stitched, y_direct = _run(pair.stitched / "model.onnx", feed), _run(pair.direct, feed)
    np.testing.assert_array_equal(y_stitched, y_direct)
    y_torch = _torch(pair.model, feed)
    assert np.abs(y_stitched - y_torch).max() <= 1e-4 * np.abs(y_torch).max()
    return a


def test_mixed_forms_stitched_equals_direct(stitched_and_direct):
    """conftest's ``stitch_ckpt``: 5 blocks whose ffn.net.2 has K = 200 (no power-of-two block
    >= 16): those stay QDQ; the text embedder's first linear has K = 512 (two blocks of 256,
    per-channel scales repeated). Per-layer parity of both forms is
    test_nbits_layers_match_pytorch_and_qdq's (and the demo's); here the whole mixed graph,
    stitched and direct, against each other and PyTorch."""
    pair = stitched_and_direct("onnx")
    num_blocks, text_dim = pair.model.config.num_layers, pair.model.config.text_dim
    assert (num_blocks, text_dim) == (5, 512)
    graph = _check_stitched_equals_direct(pair, text_dim)
    fields = pair.fields
    assert fields["weight_form"] == "nbits" and fields["num_quantized_linears"] == 5 + 5 * 10 + 1
    ops = Counter(n.op_type for n in graph.graph.node)
    assert ops["MatMulNBits"] == fields["num_quant_nodes"] == 56 - 5
    kept = [i.name for i in graph.graph.initializer if i.data_type == onnx.TensorProto.UINT4 and len(i.dims) == 2]
    assert sorted(kept) == [f"model.transformer.blocks.{b}.ffn.net.2.codes_t_u4" for b in range(num_blocks)]
    # blocks 3.. are instantiated from the template: their MatMulNBits weights come from the file
    inits = {i.name for i in graph.graph.initializer}
    assert {f"model.transformer.blocks.{b}.attn1.to_q.nbits_b" for b in (3, 4)} <= inits
    nbits = {n.input[1]: n for n in graph.graph.node if n.op_type == "MatMulNBits"}
    k512 = nbits["model.transformer.condition_embedder.text_embedder.linear_1.nbits_b"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in k512.attribute}["block_size"] == 256


def test_cli_weight_form(tmp_path, capsys, w4a4_ckpt, monkeypatch):
    from qvgen_export.cli import export as export_cli
    from qvgen_export.export import pipeline

    assert export_cli.main(["--ckpt", str(w4a4_ckpt), "--target", "trt", "--weight-form", "nbits", "--quiet"]) == 2
    assert "target 'trt' has no weight forms" in capsys.readouterr().err
    seen = []

    def fake_export(ckpt, out, target, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(target)
        return {}

    monkeypatch.setattr(pipeline, "export_checkpoint", fake_export)
    assert export_cli.main(["--ckpt", str(w4a4_ckpt), "--weight-form", "qdq", "--out", str(tmp_path), "--quiet"]) == 0
    assert export_cli.main(["--ckpt", str(w4a4_ckpt), "--out", str(tmp_path), "--quiet"]) == 0
    assert seen == ["onnx:qdq", "onnx"]
