import imageio.v3 as iio
import pytest
import torch

from qvgen_export.checkpoint import load_quantized_model
from qvgen_export.parity.report import SamplingSpec, run_parity, to_markdown, write_report
from qvgen_export.parity.steps import add_code_outputs
from qvgen_export.runtime.backends import Denoiser, OrtBackend, TorchBackend
from qvgen_export.runtime.generate import GenerationSpec, generate
from qvgen_export.runtime.sampler import sample_video

SHAPE = (3, 2, 8, 8)


@pytest.fixture(scope="module")
def embeds():
    g = torch.Generator().manual_seed(7)
    return torch.randn(2, 5, 64, generator=g), torch.zeros(2, 5, 64)


def test_parity_report_on_exported_model(tmp_path, w4a4_ckpt, w4a4_export, embeds):
    model, _ = load_quantized_model(w4a4_ckpt)
    spec = SamplingSpec(embeds[0], embeds[1], SHAPE, num_steps=3, guidance_scale=4.0)
    report = run_parity(model, w4a4_export, spec, tmp_path / "work", progress=False)
    s = report["summary"]
    assert s["layers"] == s["layers_passed"] == 26
    assert s["layer_max_relative_error"] <= 1e-5
    assert s["calls"] == 6 and [r["branch"] for r in report["steps"][:2]] == ["cond", "uncond"]
    assert s["passed"], s
    assert s["cosine_deviation_ratio"] <= 2 and s["code_deviation_ratio"] <= 2
    jp, mp = write_report(report, tmp_path)
    assert "Parity report" in mp.read_text() and jp.stat().st_size > 0


def test_parity_detects_a_mismatched_model(tmp_path, w4a4_ckpt, w4a4_export, embeds):
    model, _ = load_quantized_model(w4a4_ckpt)
    with torch.no_grad():  # a different activation clip than the exported graph holds
        model.quant_linears()["blocks.0.attn1.to_q"].clip_upper.fill_(-2.0)
    spec = SamplingSpec(embeds[0], embeds[1], SHAPE, num_steps=2, guidance_scale=1.0)
    report = run_parity(model, w4a4_export, spec, tmp_path / "work", progress=False)
    assert report["summary"]["code_deviation_ratio"] > 2
    assert not report["summary"]["passed"]
    assert "FAIL" in to_markdown(report)


def test_code_outputs_one_per_layer(tmp_path, w4a4_export):
    names = add_code_outputs(w4a4_export / "model.onnx", tmp_path / "codes.onnx")
    assert len(names) == len(set(names)) == 26
    assert "blocks.1.ffn.net.2" in names and "condition_embedder.time_proj" in names


def test_denoiser_signature(w4a4_export):
    den = Denoiser(OrtBackend(w4a4_export))
    x, t, e = torch.randn(1, *SHAPE), torch.tensor([10.0]), torch.randn(1, 3, 64)
    assert torch.equal(den(x, t, e).sample, den(x, t, e, return_dict=False)[0])
    assert den.config.patch_size == [1, 4, 4]
    with pytest.raises(ValueError, match="does not support"):
        den(x, t, e, encoder_hidden_states_image=torch.zeros(1))


def test_sampling_is_deterministic_and_seeded(float_model, embeds):
    den = Denoiser(TorchBackend(float_model))
    kw = {"latent_shape": SHAPE, "num_steps": 2, "progress": False}
    a = sample_video(den, embeds[0], embeds[1], seed=1, **kw)
    b = sample_video(den, embeds[0], embeds[1], seed=1, **kw)
    c = sample_video(den, embeds[0], embeds[1], seed=2, scheduler="euler", **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generate_writes_videos(tmp_path, float_model, embeds):
    spec = GenerationSpec(["a red circle moving left", "x"], latent_shape=SHAPE, num_steps=2)
    res = generate(Denoiser(TorchBackend(float_model)), spec, embeds[0], embeds[1], tmp_path, "t", progress=False)
    assert len(res["videos"]) == 2
    frames = iio.imread(res["videos"][0], index=None)
    assert frames.shape[0] == SHAPE[1]
    assert iio.imread(res["contact_sheet"]).ndim == 3


def test_w3a3_export_passes_its_own_code_agreement(tmp_path, make_quantized, embeds):
    """QDQ graphs carry 3-bit codes in 4-bit containers: codes saturate at 15 in the graph and are
    clamped after dequantization, so the parity copy must compare them clamped to qmax (7)."""
    from qvgen_export.checkpoint import save_checkpoint
    from qvgen_export.export.pipeline import export_checkpoint
    from qvgen_export.parity.sides import parse_side
    from qvgen_export.parity.steps import RecordingDenoiser, check_steps

    ckpt = save_checkpoint(make_quantized("w3a3"), tmp_path / "w3a3.safetensors")
    export_checkpoint(ckpt, tmp_path / "onnx")
    model, _ = load_quantized_model(ckpt)
    rec = RecordingDenoiser(model)
    sample_video(rec, embeds[0], embeds[1], latent_shape=SHAPE, num_steps=1, progress=False)
    steps = check_steps(model, rec.calls, tmp_path / "work", 2, parse_side(tmp_path / "onnx"))
    assert min(r.code_agreement for r in steps) >= 0.999, [r.code_agreement for r in steps]


def test_parity_of_a_latent_space_model(tmp_path, embeds):
    """A 16-channel latent model (real Wan's layout) gets its video check on latents, not pixels."""
    from qvgen_export import QuantConfig
    from qvgen_export.checkpoint import save_checkpoint
    from qvgen_export.export.pipeline import export_checkpoint
    from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
    from qvgen_export.quant.ptq import ptq_quantize

    cfg = {**TINY_WAN_CONFIG, "in_channels": 16, "out_channels": 16, "num_layers": 1, "patch_size": (1, 2, 2)}
    q = ptq_quantize(build_wan(cfg, seed=0), QuantConfig.preset("w4a4"), progress=False)
    ckpt = save_checkpoint(q, tmp_path / "latent.safetensors")
    export_checkpoint(ckpt, tmp_path / "onnx")
    model, _ = load_quantized_model(ckpt)
    spec = SamplingSpec(embeds[0][:1], embeds[1][:1], (16, 2, 4, 4), num_steps=1)
    s = run_parity(model, tmp_path / "onnx", spec, tmp_path / "work", progress=False)["summary"]
    assert s["video_space"] == "latents" and s["passed"], s


def test_parity_refuses_one_side_twice(tmp_path):
    # Both checks go through sides.start_comparison before any model work.
    pytest.importorskip("polygraphy")
    from qvgen_export.parity.layers import check_layers
    from qvgen_export.parity.sides import Side
    from qvgen_export.parity.steps import check_steps

    side = Side("pytorch")
    with pytest.raises(ValueError, match="two different sides, got pytorch twice"):
        check_steps(None, [], tmp_path / "s", 2, side, side)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two different sides, got pytorch twice"):
        check_layers(None, (), tmp_path / "l", side, side)  # type: ignore[arg-type]
    assert not (tmp_path / "s").exists() and not (tmp_path / "l").exists()
