"""Streaming model I/O: lazy diffusers folders (2 shards + index), meta-skeleton checkpoint loading,
block-streaming PTQ equal to whole-model PTQ, and the bad folders."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from qvgen_export import QuantConfig
from qvgen_export.checkpoint import load_quantized_model, save_checkpoint
from qvgen_export.models.diffusers_folder import DiffusersFolderError
from qvgen_export.models.wan import load_diffusers_transformer
from qvgen_export.quant.ptq import ptq_quantize
from qvgen_export.quant.ptq_stream import ptq_quantize_folder


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory, float_model):
    """The tiny Wan as diffusers writes it: bf16, two shards and an index."""
    out = tmp_path_factory.mktemp("wan_bf16")
    copy.deepcopy(float_model).to(torch.bfloat16).save_pretrained(out, safe_serialization=True, max_shard_size="300KB")
    assert (
        len(list(out.glob("*.safetensors"))) == 2 and (out / "diffusion_pytorch_model.safetensors.index.json").is_file()
    )
    return out


def _copy_folder(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _split(path):
    """(parsed header, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_lazy_load_of_a_two_shard_folder(wan_folder, float_model):
    loaded = load_diffusers_transformer(wan_folder)
    ref = float_model.state_dict()
    sd = loaded.state_dict()
    assert list(sd) == list(ref)
    for k, t in sd.items():
        assert t.dtype == torch.float32, k
        assert torch.equal(t, ref[k].to(torch.bfloat16).float()), k
    kept = load_diffusers_transformer(wan_folder, dtype=None)
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}


def test_lazy_load_reads_each_tensor_once_and_never_whole_files(wan_folder, monkeypatch):
    import safetensors.torch

    from qvgen_export.utils.lazy_safetensors import LazySafetensors

    def no_whole_file(*a, **k):
        raise AssertionError("a whole-file read")

    reads = []
    orig = LazySafetensors.get
    monkeypatch.setattr(safetensors.torch, "load_file", no_whole_file)
    monkeypatch.setattr(LazySafetensors, "get", lambda self, key: reads.append(key) or orig(self, key))
    model = load_diffusers_transformer(wan_folder)
    assert sorted(reads) == sorted(model.state_dict())


def _rewrite_index(folder, fn):
    idx = folder / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(idx.read_text())
    fn(data["weight_map"])
    idx.write_text(json.dumps(data))


def _bad_missing_shard(d):
    (d / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()


def _bad_index_tensor(d):
    _rewrite_index(
        d, lambda m: m.__setitem__("blocks.0.ghost.weight", "diffusion_pytorch_model-00001-of-00002.safetensors")
    )


def _bad_config(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_layers"] = 3
    (d / "config.json").write_text(json.dumps(cfg))


def _bad_width(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["ffn_dim"] = 128
    (d / "config.json").write_text(json.dumps(cfg))


def _bad_pickle(d):
    for f in list(d.glob("*.safetensors*")):
        f.unlink()
    (d / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")


def _bad_truncated_shard(d):
    f = d / "diffusion_pytorch_model-00001-of-00002.safetensors"
    f.write_bytes(f.read_bytes()[:200])


BAD_FOLDERS = {
    "missing shard": (_bad_missing_shard, "00002-of-00002.safetensors: shard named by", "missing"),
    "index names a missing tensor": (
        _bad_index_tensor,
        "00001-of-00002.safetensors: tensor 'blocks.0.ghost.weight'",
        "not in it",
    ),
    "config has more blocks": (_bad_config, "wan: weights do not match config.json", "missing ['blocks.2"),
    "config has another width": (
        _bad_width,
        "tensor 'blocks.0.ffn.net.0.proj.weight' has shape",
        "config.json implies",
    ),
    "pickled weights": (_bad_pickle, "diffusion_pytorch_model.bin: pickled weights are refused", "safetensors"),
    "truncated shard": (_bad_truncated_shard, "00001-of-00002.safetensors: not a readable safetensors file", ""),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
@pytest.mark.parametrize("reader", ["load", "ptq"])
def test_bad_folders_fail_with_one_line(tmp_path, wan_folder, case, reader):
    spoil, where, what = BAD_FOLDERS[case]
    folder = _copy_folder(wan_folder, tmp_path / "wan")
    spoil(folder)
    out = tmp_path / "out" / "q.safetensors"
    with pytest.raises(DiffusersFolderError) as err:
        if reader == "load":
            load_diffusers_transformer(folder)
        else:
            ptq_quantize_folder(folder, out, QuantConfig.preset("w4a4"))
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg
    assert where in msg and what in msg, msg
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    "scheme,overrides,ranges",
    [
        ("w4a4", {}, "mse"),
        ("w3a3", {"weight_granularity": "per_group", "group_size": 32}, "mse"),
        ("w8a8", {"exclude": ("proj_out",)}, "minmax"),
        ("w4a4", {"weight_granularity": "per_group", "group_size": 32}, "mse-fast"),
    ],
)
def test_streaming_ptq_equals_whole_model_ptq(tmp_path, wan_folder, scheme, overrides, ranges):
    cfg = QuantConfig.preset(scheme, **overrides)
    whole = ptq_quantize(load_diffusers_transformer(wan_folder), cfg, progress=False, weight_ranges_method=ranges)
    a = save_checkpoint(whole, tmp_path / "whole.safetensors", extra={"method": "ptq"})
    b = ptq_quantize_folder(wan_folder, tmp_path / "stream.safetensors", cfg, ranges, extra={"method": "ptq"})
    (ha, da), (hb, db) = _split(a), _split(b)
    assert ha == hb  # metadata, names, dtypes, shapes and offsets
    assert da == db  # every tensor byte
    loaded, _ = load_quantized_model(b)
    assert len(loaded.quant_linears()) == len(json.loads(ha["__metadata__"]["layers"]))


def test_streaming_ptq_failure_leaves_nothing(tmp_path, wan_folder, monkeypatch):
    from qvgen_export.checkpoint.stream_writer import StreamingSafetensorsWriter

    calls = {"n": 0}
    orig = StreamingSafetensorsWriter.write

    def fill_up(self, name, t):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError(28, "No space left on device")
        orig(self, name, t)

    monkeypatch.setattr(StreamingSafetensorsWriter, "write", fill_up)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError, match="No space left"):
        ptq_quantize_folder(wan_folder, out / "q.safetensors", QuantConfig.preset("w4a4"))
    assert list(out.iterdir()) == []


def test_streaming_ptq_refuses_non_finite_weights(tmp_path, wan_folder):
    folder = _copy_folder(wan_folder, tmp_path / "wan")
    shard = folder / "diffusion_pytorch_model-00001-of-00002.safetensors"
    tensors = load_file(str(shard))
    key = next(k for k in tensors if k.endswith("to_q.weight"))
    tensors[key][0, 0] = float("inf")
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"tensor '{key}' contains NaN or Inf"):
        ptq_quantize_folder(folder, tmp_path / "q.safetensors", QuantConfig.preset("w4a4"))
    assert not (tmp_path / "q.safetensors").exists()


def test_checkpoint_load_builds_no_float_model_and_reads_each_tensor_once(w4a4_ckpt, monkeypatch):
    from qvgen_export.models import wan
    from qvgen_export.utils.lazy_safetensors import LazySafetensors

    def no_random_init(*a, **k):
        raise AssertionError("the loader built a random-init float model")

    reads = []
    orig = LazySafetensors.get
    monkeypatch.setattr(wan, "build_wan", no_random_init)
    monkeypatch.setattr(LazySafetensors, "get", lambda self, key: reads.append(key) or orig(self, key))
    model, _ = load_quantized_model(w4a4_ckpt)
    assert sorted(reads) == sorted(load_file(str(w4a4_ckpt)))  # every tensor, once
    assert not any(p.is_meta for p in model.parameters())


def test_stream_writer_matches_save_file(tmp_path):
    from qvgen_export.checkpoint.stream_writer import StreamingSafetensorsWriter

    g = torch.Generator().manual_seed(0)
    tensors = {
        "z.bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "a.f32": torch.randn(7, generator=g),
        "m.u8": torch.randint(0, 255, (4, 3), generator=g).to(torch.uint8),
        "b.i64": torch.arange(5),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "c.f64": torch.randn(2, generator=g).double(),
    }
    meta = {"format": "x", "model_config": json.dumps({"a": [1, 2]})}
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata=meta)
    w = StreamingSafetensorsWriter(
        tmp_path / "s.safetensors", {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}, meta
    )
    for k in reversed(list(tensors)):  # any order
        w.write(k, tensors[k])
    w.close()
    assert _split(tmp_path / "ref.safetensors") == _split(tmp_path / "s.safetensors")
    w = StreamingSafetensorsWriter(tmp_path / "t.safetensors", {"a": (torch.float32, (2,))}, meta)
    with pytest.raises(ValueError, match="declared torch.float32"):
        w.write("a", torch.zeros(3))
    with pytest.raises(ValueError, match="never written"):
        w.close()


def _calibration_loop(model_config):
    """A short CFG sampling run, the loop ``qvgen-quantize --calib-embeds`` runs."""
    from qvgen_export.runtime.sampler import sample_video

    g = torch.Generator().manual_seed(3)
    pe = torch.randn(1, 4, int(model_config.text_dim), generator=g)
    ne = torch.zeros_like(pe)
    shape = (int(model_config.in_channels), 2, 8, 8)

    def loop(m):
        sample_video(m, pe, ne, latent_shape=shape, num_steps=3, progress=False)

    return loop


@pytest.mark.parametrize("scheme", ["w4a4", "w3a3"])
def test_streaming_calibrated_ptq_equals_whole_model_calibration(tmp_path, wan_folder, scheme):
    from qvgen_export.quant.ptq import calibrate_act_clips_loop

    cfg = QuantConfig.preset(scheme)
    whole = ptq_quantize(load_diffusers_transformer(wan_folder), cfg, progress=False, weight_ranges_method="mse-fast")
    loop = _calibration_loop(whole.config)
    assert calibrate_act_clips_loop(whole, loop) > 0
    a = save_checkpoint(whole, tmp_path / "whole.safetensors", extra={"method": "ptq", "calibration": "x"})
    extra = {"method": "ptq", "calibration": "x"}
    b = ptq_quantize_folder(wan_folder, tmp_path / "stream.safetensors", cfg, "mse-fast", extra=extra, calibrate=loop)
    (ha, da), (hb, db) = _split(a), _split(b)
    assert ha == hb
    assert da == db
    # the calibration moved clips away from the initial value (else the comparison proves little)
    plain = ptq_quantize_folder(wan_folder, tmp_path / "plain.safetensors", cfg, "mse-fast", extra=extra)
    assert _split(plain)[1] != db
    model, _ = load_quantized_model(b)
    clips = torch.stack([m.clip_upper for m in model.quant_linears().values()])
    assert len(set(clips.flatten().tolist())) > 1


def test_calibration_needs_a_float_reference_for_packed_layers(w4a4_ckpt):
    from qvgen_export.quant.ptq import calibrate_act_clips_loop

    model, _ = load_quantized_model(w4a4_ckpt)
    with pytest.raises(ValueError, match="packed codes, no float weight"):
        calibrate_act_clips_loop(model, lambda m: None)


def test_streaming_calibration_that_never_runs_the_model_fails_and_leaves_nothing(tmp_path, wan_folder):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="never called the model"):
        ptq_quantize_folder(
            wan_folder, out / "q.safetensors", QuantConfig.preset("w4a4"), "minmax", calibrate=lambda m: None
        )
    assert list(out.iterdir()) == []


def test_streaming_calibration_holds_one_block_of_codes_at_a_time(tmp_path, wan_folder):
    """Between blocks no block's packed codes are in memory; inside a block only its own are."""
    seen = {"calls": 0, "resident": []}

    def loop(m):
        blocks = m.transformer.blocks
        resident = lambda: [i for i, b in enumerate(blocks) if not b.attn1.to_q.qweight.is_meta]

        def inside(i):
            def hook(mod, args):
                seen["resident"].append((i, resident()))

            return hook

        handles = [b.register_forward_pre_hook(inside(i)) for i, b in enumerate(blocks)]
        try:
            assert resident() == []
            _calibration_loop(m.config)(m)
            seen["calls"] += 1
            assert resident() == []
        finally:
            for h in handles:
                h.remove()

    ptq_quantize_folder(wan_folder, tmp_path / "q.safetensors", QuantConfig.preset("w4a4"), "minmax", calibrate=loop)
    assert seen["calls"] == 1 and seen["resident"]
    # the user's pre-hook runs after BlockCodes' (registered first): the block's own codes only
    assert all(r == [i] for i, r in seen["resident"])


def test_stream_writer_reads_back_what_it_wrote(tmp_path):
    from qvgen_export.checkpoint.stream_writer import StreamingSafetensorsWriter

    a, b = torch.arange(12, dtype=torch.uint8).reshape(3, 4), torch.randn(5)
    specs = {"a": (torch.uint8, (3, 4)), "b": (torch.float32, (5,)), "e": (torch.float32, (0,))}
    w = StreamingSafetensorsWriter(tmp_path / "f.safetensors", specs, {"k": "v"})
    w.write("b", b)
    with pytest.raises(KeyError, match="'a' was not written yet"):
        w.read_back("a")
    w.write("a", a)
    w.write("e", torch.empty(0))
    assert torch.equal(w.read_back("a"), a) and torch.equal(w.read_back("b"), b)
    assert w.read_back("e").shape == (0,)
    w.close()
