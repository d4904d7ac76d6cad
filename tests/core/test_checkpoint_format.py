import json
import struct

import pytest
import torch
from ckpt_tools import rewrite
from safetensors import safe_open
from safetensors.torch import load_file

from qvgen_export.checkpoint import CheckpointError, load_quantized_model, read_info, save_checkpoint


def _outputs(model, inputs):
    with torch.no_grad():
        return model(*inputs, return_dict=False)[0]


@pytest.mark.parametrize(
    "scheme,overrides",
    [("w4a4", {}), ("w3a3", {}), ("w8a8", {}), ("w4a4", {"weight_granularity": "per_group", "group_size": 32})],
)
def test_roundtrip_is_bit_exact(tmp_path, make_quantized, sample_inputs, scheme, overrides):
    q = make_quantized(scheme, **overrides)
    path = save_checkpoint(q, tmp_path / "m.safetensors")
    q2, info = load_quantized_model(path)
    assert info.quant_config == q.qconfig
    assert torch.equal(_outputs(q, sample_inputs), _outputs(q2, sample_inputs))
    for name, layer in q.quant_linears().items():
        assert torch.equal(layer.codes(), q2.quant_linears()[name].codes())
    # the file holds no float copy of a quantized weight, and packed INT4 for W<=4
    keys = set(load_file(str(path)))
    assert "blocks.0.attn1.to_q.weight" not in keys and "blocks.0.attn1.to_q.qweight" in keys
    if q.qconfig.weight_bits <= 4:
        layer = q.quant_linears()["blocks.0.ffn.net.0.proj"]
        assert load_file(str(path))["blocks.0.ffn.net.0.proj.qweight"].shape == (
            layer.out_features,
            layer.in_features // 2,
        )


def test_metadata_describes_the_model(w4a4_ckpt):
    with safe_open(str(w4a4_ckpt), framework="pt") as f:
        meta = f.metadata()
    assert meta["format_version"] == "2"
    assert json.loads(meta["quant_config"])["weight_bits"] == 4
    assert json.loads(meta["model_config"])["num_layers"] == 2
    assert len(json.loads(meta["layers"])) == 26


# -- bad input: every case is one CheckpointError naming the file -------------------------------


def _rewrite(src, dst, tensors_fn=None, meta_fn=None):
    # Re-hashed: these cases check what the validation catches beyond the content digests.
    return rewrite(src, dst, tensors_fn, meta_fn)


def _set(d, k, v):
    d[k] = v


BAD_CASES = {
    "missing": (None, "file not found"),
    "truncated": ("truncate", "not a readable safetensors file"),
    "garbage": ("garbage", "not a readable safetensors file"),
    "bad header length": ("header", "not a readable safetensors file"),
    "wrong version": ((None, lambda m: _set(m, "format_version", "99")), "unsupported format version '99'"),
    "foreign file": ((None, lambda m: _set(m, "format", "something-else")), "not a qvgen-export checkpoint"),
    "bad quant config": (
        (None, lambda m: _set(m, "quant_config", '{"weight_bits": 11}')),
        "invalid quantization config",
    ),
    "config mismatch": (
        (
            None,
            lambda m: _set(m, "quant_config", m["quant_config"].replace('"exclude": []', '"exclude": ["proj_out"]')),
        ),
        "does not select it",
    ),
    "bits mismatch": (
        (None, lambda m: _set(m, "quant_config", m["quant_config"].replace('"weight_bits": 4', '"weight_bits": 8'))),
        "has shape",
    ),
    "nan scale": (
        (lambda t: t["blocks.0.attn1.to_q.w_scale"].view(-1).__setitem__(0, float("nan")), None),
        "NaN or Inf",
    ),
    "inf clip": ((lambda t: t["proj_out.clip_upper"].view(-1).__setitem__(3, float("inf")), None), "NaN or Inf"),
    "negative scale": ((lambda t: t["proj_out.w_scale"].view(-1).__setitem__(0, -1.0), None), "non-positive"),
    "missing tensor": ((lambda t: t.pop("blocks.1.ffn.net.2.w_zero"), None), "'blocks.1.ffn.net.2.w_zero' is missing"),
    "missing float tensor": ((lambda t: t.pop("patch_embedding.weight"), None), "'patch_embedding.weight' is missing"),
    "unknown tensor": ((lambda t: _set(t, "evil.payload", torch.zeros(3)), None), "unknown tensor 'evil.payload'"),
    "wrong dtype": ((lambda t: _set(t, "proj_out.w_zero", t["proj_out.w_zero"].double()), None), "dtype"),
    "wrong shape": ((lambda t: _set(t, "proj_out.clip_lower", torch.zeros(7)), None), "has shape (7,)"),
    "bad float shape": (
        (lambda t: _set(t, "scale_shift_table", torch.zeros(1, 3, 64)), None),
        "'scale_shift_table' has shape",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_checkpoints_fail_with_one_line(tmp_path, w4a4_ckpt, case):
    how, expected = BAD_CASES[case]
    path = tmp_path / "bad.safetensors"
    if how is None:
        path = tmp_path / "absent.safetensors"
    elif how == "truncate":
        data = w4a4_ckpt.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00not a safetensors file at all" * 10)
    elif how == "header":
        path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    else:
        _rewrite(w4a4_ckpt, path, *how)
    with pytest.raises(CheckpointError) as err:
        load_quantized_model(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert expected in msg


def test_codes_above_qmax_rejected_for_3_bit(tmp_path, make_quantized):
    q = make_quantized("w3a3")
    path = save_checkpoint(q, tmp_path / "w3.safetensors")

    def corrupt(t):
        t["proj_out.qweight"][0, 0] = 0xFF  # nibbles of 15 > 7

    bad = _rewrite(path, tmp_path / "w3bad.safetensors", corrupt)
    with pytest.raises(CheckpointError, match="codes above 7"):
        read_info(bad)


def test_save_is_atomic(tmp_path, make_quantized, monkeypatch):
    q = make_quantized()
    target = tmp_path / "out.safetensors"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("qvgen_export.checkpoint.stream_writer.StreamingSafetensorsWriter.write", boom)
    with pytest.raises(OSError):
        save_checkpoint(q, target)
    assert list(tmp_path.iterdir()) == []
