"""The ``trt`` target on CPU: plugin graph structure, the contract, ORT runs, parity, bad input.

TensorRT itself is absent here; the tests that need it are at the end, skipped with the reason.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from safetensors import safe_open

from qvgen_export.artifact.contract import INPUT_NAMES, OUTPUT_NAMES
from qvgen_export.artifact.manifest import verify_manifest, write_manifest
from qvgen_export.checkpoint import load_quantized_model
from qvgen_export.quant.packing import kernel_row_bytes
from qvgen_export.targets import TARGETS, get_target
from qvgen_export.targets.plugin_contract import load_contract

C = load_contract()


def _graph(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    return manifest, onnx.load(str(folder / manifest["model_file"]))


def test_registry_lists_targets_and_rejects_unknown():
    assert set(TARGETS) == {"onnx", "trt"}
    assert get_target("trt").quant_node == C.op_type
    with pytest.raises(ValueError, match="unknown target 'tensorrt'; expected one of onnx, trt"):
        get_target("tensorrt")


def test_one_plugin_node_per_quantized_linear(trt_export, w4a4_ckpt):
    manifest, model = _graph(trt_export)
    onnx.checker.check_model(model)
    nodes = [n for n in model.graph.node if n.op_type == C.op_type]
    assert len(nodes) == manifest["num_quantized_linears"] == manifest["num_quant_nodes"] == 26
    assert manifest["target"] == "trt" and manifest["plugin"] == C.to_manifest()
    # no Q/DQ and no float copy of a quantized weight: activation quantization lives in the node
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    assert not any(i.name.endswith(("to_q.weight", "ffn.net.0.proj.weight")) for i in model.graph.initializer)
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    inits = {i.name: i for i in model.graph.initializer}
    _, info = load_quantized_model(w4a4_ckpt)
    layers = {entry["name"]: entry for entry in info.layers}
    with safe_open(str(w4a4_ckpt), "pt") as f:
        for node in nodes:
            assert node.domain == C.onnx_domain
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs.pop("plugin_version") == C.version.encode()
            assert attrs.pop("plugin_namespace") == C.namespace.encode()
            assert set(attrs) == {f.name for f in C.fields}
            qw = inits[node.input[C.inputs.index("qweight")]]
            name = qw.name.removeprefix("model.transformer.").removesuffix(".qweight")
            k, n = layers[name]["in_features"], layers[name]["out_features"]
            assert (attrs["in_features"], attrs["out_features"], attrs["act_bits"]) == (k, n, 4)
            assert qw.data_type == onnx.TensorProto.INT32 and list(qw.dims) == [n, kernel_row_bytes(k) // 4]
            # the bytes are the checkpoint's packed codes, rows zero-padded to 16 bytes
            rows = onnx.numpy_helper.to_array(qw).view(np.uint8)
            packed = f.get_tensor(f"{name}.qweight").numpy()
            np.testing.assert_array_equal(rows[:, : packed.shape[1]], packed)
            assert not rows[:, packed.shape[1] :].any()


def test_plugin_graph_matches_pytorch_and_qdq_layer_by_layer(
    trt_export, w4a4_export, w4a4_ckpt, sample_inputs, tmp_path
):
    from qvgen_export.parity.layers import LAYER_TOLERANCE, check_layers
    from qvgen_export.parity.sides import parse_side

    model, _ = load_quantized_model(w4a4_ckpt)
    trt_side, qdq_side = parse_side(f"ort:{trt_export}"), parse_side(f"ort:{w4a4_export}")
    vs_torch = check_layers(model, sample_inputs, tmp_path / "a", trt_side, progress=False)
    assert len(vs_torch) == 26 and all(r.passed and r.polygraphy_passed for r in vs_torch)
    assert max(r.relative_error for r in vs_torch) <= LAYER_TOLERANCE
    assert any(r.max_abs_error > 0 for r in vs_torch)  # really a different computation (integer GEMM)
    vs_qdq = check_layers(model, sample_inputs, tmp_path / "b", trt_side, qdq_side, progress=False)
    assert all(r.passed for r in vs_qdq)
    # inputs and outputs saved in Polygraphy's formats, loadable elsewhere
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    saved = RunResults.load(str(tmp_path / "b" / "layer_outputs.json"))
    assert set(saved.keys()) == {"onnxruntime[trt]", "onnxruntime[onnx]"}
    assert len(load_json(tmp_path / "b" / "layer_inputs.json")) == 26


def test_plugin_graph_end_to_end_parity(trt_export, w4a4_ckpt, tmp_path):
    from qvgen_export.parity.report import SamplingSpec, run_parity

    model, _ = load_quantized_model(w4a4_ckpt)
    g = torch.Generator().manual_seed(0)
    spec = SamplingSpec(torch.randn(1, 6, 64, generator=g), torch.zeros(1, 6, 64), (3, 4, 16, 16), num_steps=2)
    report = run_parity(model, f"ort:{trt_export}", spec, tmp_path, progress=False)
    s = report["summary"]
    assert s["passed"], s
    assert s["test"] == "onnxruntime[trt]" and s["code_deviation_ratio"] is None
    assert s["layers_passed"] == s["layers"] == 26 and s["calls"] == 4


def test_qvgen_run_samples_the_trt_folder(trt_export, tmp_path):
    from qvgen_export.cli.run import main

    out = tmp_path / "run"
    rc = main(
        [
            "--model",
            str(trt_export),
            "--steps",
            "2",
            "--frames",
            "2",
            "--height",
            "16",
            "--width",
            "16",
            "--prompt",
            "a red circle moving right",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    assert list(out.glob("trt_ort_*.gif")) and (out / "trt_ort_latents.safetensors").is_file()


def test_cli_writes_folder_then_reports_missing_tensorrt(w4a4_ckpt, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed: the engine would be built")
    except ImportError:
        pass
    from qvgen_export.cli.export import main

    out = tmp_path / "d"
    assert main(["--ckpt", str(w4a4_ckpt), "--target", "trt", "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "engine not built: TensorRT is not installed" in err[0]
    assert verify_manifest(out)["target"] == "trt"  # the folder is complete
    assert (
        main(["--ckpt", str(w4a4_ckpt), "--target", "trt", "--out", str(tmp_path / "e"), "--quiet", "--no-engine"]) == 0
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scheme": "w8a8"}, "target 'trt' runs 2..4-bit codes"),
        ({"weight_granularity": "per_group", "group_size": 16}, "target 'trt' needs per-channel weight scales"),
    ],
)
def test_trt_refuses_schemes_the_plugin_cannot_run(make_quantized, tmp_path, capsys, overrides, message):
    from qvgen_export.checkpoint import save_checkpoint
    from qvgen_export.cli.export import main

    ckpt = save_checkpoint(make_quantized(overrides.pop("scheme", "w4a4"), **overrides), tmp_path / "c.safetensors")
    assert main(["--ckpt", str(ckpt), "--target", "trt", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def _edit_plugin_node(folder, dest, edit):
    shutil.copytree(folder, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    model = onnx.load(str(dest / manifest["model_file"]))
    edit(next(n for n in model.graph.node if n.op_type == C.op_type))
    onnx.save(model, str(dest / manifest["model_file"]))
    (dest / "manifest.json").unlink()
    write_manifest(dest, {k: v for k, v in manifest.items() if k not in ("manifest_version", "tools", "files")})


def _set_attr(name, value):
    def edit(node):
        for a in node.attribute:
            if a.name == name:
                node.attribute.remove(a)
                break
        node.attribute.append(onnx.helper.make_attribute(name, value))

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set_attr("act_bits", 5), "act_bits=5 not in"),
        (_set_attr("in_features", 96), "input qweight has shape"),
        (_set_attr("plugin_version", "2"), "version '2'"),
        (lambda node: node.input.pop(), "has 7 inputs"),
    ],
)
def test_corrupted_plugin_node_is_one_line(trt_export, tmp_path, capsys, edit, message):
    from qvgen_export.cli.run import main

    bad = tmp_path / "bad"
    _edit_plugin_node(trt_export, bad, edit)
    assert (
        main(["--model", str(bad), "--steps", "1", "--frames", "1", "--height", "16", "--width", "16", "--quiet"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plugin node" in err[0] and message in err[0]


def test_engine_stage_refuses_wrong_folders_and_records(w4a4_export, trt_export, tmp_path):
    from qvgen_export.runtime.trt_backend import TrtBackend
    from qvgen_export.targets import trt_engine

    with pytest.raises(ValueError, match="a 'onnx' folder; engines are built from 'trt' folders"):
        trt_engine.build_engine(w4a4_export)
    with pytest.raises(ValueError, match="TensorRT backend runs 'trt' folders"):
        TrtBackend(w4a4_export)
    with pytest.raises(ValueError, match="no TensorRT engine"):
        trt_engine.read_engine_record(trt_export)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "model.plan").write_bytes(b"plan")
    record = {"engine_file": "model.plan", "engine_sha256": trt_engine.sha256_file(folder / "model.plan")}
    (folder / "engine.json").write_text(json.dumps(record))
    assert trt_engine.read_engine_record(folder)["engine_file"] == "model.plan"
    (folder / "model.plan").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match engine.json"):
        trt_engine.read_engine_record(folder)
    gpu = {"name": "NVIDIA H100", "compute_capability": "9.0"}
    good = {"tensorrt_version": "11.1.0", "gpu": gpu, "plugin": {"library_sha256": "ab", "version": C.version}}
    trt_engine.check_engine_matches(good, "11.1.0", gpu, "ab")
    with pytest.raises(ValueError, match="TensorRT 11.1.0, this machine has 10.16.0"):
        trt_engine.check_engine_matches(good, "10.16.0", gpu, "ab")
    with pytest.raises(ValueError, match="built for NVIDIA H100"):
        trt_engine.check_engine_matches(good, "11.1.0", {"name": "NVIDIA A100", "compute_capability": "8.0"}, "ab")
    with pytest.raises(ValueError, match="another build of the plugin library"):
        trt_engine.check_engine_matches(good, "11.1.0", gpu, "cd")


def test_shape_profiles_from_the_io_contract():
    from qvgen_export.artifact.contract import PROFILES, parse_profile

    wan = {"patch_size": [1, 2, 2], "in_channels": 16, "text_dim": 4096}
    p = parse_profile(None, wan)
    assert p is PROFILES["480p"]
    assert p.shapes(wan)["hidden_states"] == ((1, 16, 1, 60, 104), (1, 16, 21, 60, 104), (2, 16, 21, 60, 104))
    assert parse_profile("720p,batch=1:2:2", wan).shapes(wan)["encoder_hidden_states"][1] == (2, 512, 4096)
    with pytest.raises(ValueError, match="height \\[61, 61, 61\\] not a multiple of the patch size 2"):
        parse_profile("height=61:61:61", wan)
    with pytest.raises(ValueError, match="unknown shape profile"):
        parse_profile("1080p", wan)


def _tensorrt_or_skip():
    from qvgen_export.targets import EngineUnavailableError
    from qvgen_export.targets.trt_engine import check_engine_prerequisites

    try:
        return check_engine_prerequisites()
    except EngineUnavailableError as e:
        pytest.skip(f"needs TensorRT, a CUDA GPU and the plugin library: {e}")


@pytest.mark.trt
@pytest.mark.gpu
def test_engine_builds_and_matches_the_plugin_graph_on_ort(trt_export, w4a4_ckpt, tmp_path):
    _tensorrt_or_skip()
    from qvgen_export.parity.report import SamplingSpec, run_parity
    from qvgen_export.targets.trt_engine import build_engine

    folder = tmp_path / "trt"
    shutil.copytree(trt_export, folder)
    record = build_engine(folder, profile="tiny,height=16:16:32,width=16:16:32,frames=1:4:8")
    assert record["plugin"]["version"] == C.version
    model, _ = load_quantized_model(w4a4_ckpt)
    g = torch.Generator().manual_seed(0)
    spec = SamplingSpec(torch.randn(1, 6, 64, generator=g), torch.zeros(1, 6, 64), (3, 4, 16, 16), num_steps=2)
    s = run_parity(model, f"trt:{folder}", spec, tmp_path / "p", progress=False, reference=f"ort:{folder}")["summary"]
    assert s["passed"], s
