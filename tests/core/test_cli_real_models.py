"""The commands for real (latent-space, on-disk) Wan models: qvgen-quantize and latent qvgen-run."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from qvgen_export import QuantConfig
from qvgen_export.checkpoint import load_quantized_model, save_checkpoint
from qvgen_export.cli.quantize import main as quantize_main
from qvgen_export.cli.run import main as run_main
from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
from qvgen_export.quant.ptq import ptq_quantize

LATENT_CONFIG = {**TINY_WAN_CONFIG, "in_channels": 16, "out_channels": 16, "patch_size": (1, 2, 2)}


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("wan") / "transformer"
    build_wan(TINY_WAN_CONFIG, seed=0).save_pretrained(d)
    return d


def _codes(ckpt):
    return {k: v for k, v in load_file(str(ckpt)).items() if k.endswith(".qweight")}


def test_quantize_folder_equals_library_ptq(wan_folder, float_model, tmp_path, capsys):
    out = tmp_path / "q.safetensors"
    assert quantize_main(["--model", str(wan_folder), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    ref = save_checkpoint(
        ptq_quantize(copy.deepcopy(float_model), QuantConfig.preset("w4a4")), tmp_path / "r.safetensors"
    )
    a, b = load_file(str(out)), load_file(str(ref))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_quantize_single_file_patterns_and_scheme(wan_folder, tmp_path, capsys):
    out = tmp_path / "q.safetensors"
    argv = ["--single-file", str(wan_folder / "diffusion_pytorch_model.safetensors")]
    argv += ["--config", str(wan_folder / "config.json"), "--out", str(out), "--scheme", "w3a3", "--ranges", "minmax"]
    argv += ["--exclude", "condition_embedder.*", "proj_out"]
    assert quantize_main(argv) == 0
    err = capsys.readouterr().err
    assert "w3a3" in err and "streaming" in err  # progress/status lines go to stderr
    _, info = load_quantized_model(out)
    names = [e["name"] for e in info.layers]
    assert info.quant_config.weight_bits == 3 and len(names) == 20
    assert info.extra == {"method": "ptq", "weight_ranges": "minmax"}  # how the ranges were chosen
    assert not any(n.startswith("condition_embedder.") or n == "proj_out" for n in names)


def test_quantize_default_output_name(wan_folder, tmp_path, monkeypatch):
    pipeline = tmp_path / "Wan2.1-T2V-Tiny-Diffusers"
    pipeline.mkdir()
    (pipeline / "transformer").symlink_to(wan_folder)
    monkeypatch.setenv("QVGEN_ARTIFACTS", str(tmp_path / "art"))
    assert quantize_main(["--model", str(pipeline), "--quiet", "--ranges", "minmax"]) == 0
    assert (tmp_path / "art" / "Wan2.1-T2V-Tiny-Diffusers_w4a4.safetensors").is_file()


def test_quantize_with_calibration(wan_folder, tmp_path):
    embeds = tmp_path / "e.safetensors"
    save_file({"prompt_embeds": torch.randn(1, 4, 64), "negative_prompt_embeds": torch.zeros(1, 4, 64)}, str(embeds))
    out = tmp_path / "c.safetensors"
    argv = ["--model", str(wan_folder), "--out", str(out), "--quiet", "--calib-embeds", str(embeds)]
    argv += ["--calib-steps", "2", "--calib-frames", "2", "--calib-height", "8", "--calib-width", "8"]
    assert quantize_main(argv) == 0
    model, _ = load_quantized_model(out)
    clips = model.quant_linears()["blocks.0.ffn.net.0.proj"].clip_upper
    assert len(set(clips.tolist())) > 1  # some timestep groups were calibrated away from the init


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "/nonexistent/wan"], "no diffusers config.json"),
        (["--single-file", "x.safetensors"], "needs --config"),
        (["--model", "DIR", "--scheme", "w9a9"], "must be an integer in 2..8"),
        (["--model", "DIR", "--exclude", "*"], "selects no nn.Linear"),
    ],
)
def test_quantize_errors_are_one_line(wan_folder, tmp_path, capsys, argv, message):
    argv = [str(wan_folder) if a == "DIR" else a for a in argv] + ["--out", str(tmp_path / "o.safetensors"), "--quiet"]
    assert quantize_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qvgen-quantize: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o.safetensors").exists()


@pytest.fixture(scope="module")
def latent_ckpt(tmp_path_factory):
    q = ptq_quantize(build_wan(LATENT_CONFIG, seed=0), QuantConfig.preset("w4a4"), progress=False)
    return save_checkpoint(q, tmp_path_factory.mktemp("latent") / "wan16.safetensors")


def _run_latent(latent_ckpt, out, *extra):
    argv = ["--ckpt", str(latent_ckpt), "--out", str(out), "--steps", "2", "--frames", "2"]
    argv += ["--height", "8", "--width", "8", "--quiet", *extra]
    return run_main(argv)


def test_run_latent_model_writes_latents(latent_ckpt, tmp_path):
    assert _run_latent(latent_ckpt, tmp_path) == 0
    lat = load_file(str(tmp_path / "torch_latents.safetensors"))["latents"]
    assert lat.shape == (2, 16, 2, 8, 8) and torch.isfinite(lat).all()
    assert not list(tmp_path.glob("*.gif"))


def test_run_latent_model_decodes_with_a_local_vae(latent_ckpt, tmp_path):
    import imageio.v3 as iio
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    vae.save_pretrained(tmp_path / "vae")
    assert _run_latent(latent_ckpt, tmp_path / "out", "--vae", str(tmp_path / "vae")) == 0
    gifs = sorted((tmp_path / "out").glob("torch_*.gif"))
    assert len(gifs) == 2
    frames = iio.imread(gifs[0], index=None)
    assert frames.shape[0] == 5 and frames.shape[1] == 64 * 4  # 2 latent frames -> 5; 8 px latents -> 64 px, GIF x4
    sheet = iio.imread(tmp_path / "out" / "torch_sheet.png")
    assert sheet.shape[0] > 2 * 64 * 2  # rows plus their labels and the title


def test_run_latent_vae_with_wrong_channels_is_one_line(latent_ckpt, tmp_path, capsys):
    from diffusers import AutoencoderKLWan

    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1).save_pretrained(tmp_path / "vae")
    assert _run_latent(latent_ckpt, tmp_path / "out", "--vae", str(tmp_path / "vae")) == 2
    err = capsys.readouterr().err.strip()
    assert "decodes 4-channel latents" in err and "\n" not in err


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory, wan_folder):
    """A local Wan pipeline folder: transformer/, text_encoder/ (tiny UMT5), tokenizer/."""
    pytest.importorskip("transformers")
    from tiny_text import tiny_text_encoder, tiny_tokenizer

    d = tmp_path_factory.mktemp("pipe")
    (d / "transformer").symlink_to(wan_folder)
    tiny_tokenizer(["a red circle", "blue square moving"]).save_pretrained(d / "tokenizer")
    tiny_text_encoder(64).save_pretrained(d / "text_encoder")
    return d


def test_umt5_embeds_are_the_pipelines(pipeline_folder):
    from diffusers import WanPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    from qvgen_export.runtime.prompts import umt5_prompt_embeds

    prompts = ["a red  circle", "blue square"]
    pe, ne = umt5_prompt_embeds(pipeline_folder / "transformer", prompts, "moving", max_sequence_length=16)
    pipe = WanPipeline(
        tokenizer=AutoTokenizer.from_pretrained(pipeline_folder / "tokenizer"),
        text_encoder=UMT5EncoderModel.from_pretrained(pipeline_folder / "text_encoder"),
        vae=None,
        scheduler=None,
        transformer=None,
    )
    with torch.no_grad():
        a, b = pipe.encode_prompt(prompts, "moving", max_sequence_length=16, device=torch.device("cpu"))
    assert pe.shape == (2, 16, 64) and torch.equal(pe, a) and torch.equal(ne, b)


def test_quantize_calibrates_on_prompts(pipeline_folder, tmp_path):
    out = tmp_path / "p.safetensors"
    argv = ["--model", str(pipeline_folder), "--out", str(out), "--quiet", "--calib-prompts", "a red circle"]
    argv += ["--calib-steps", "2", "--calib-frames", "2", "--calib-height", "8", "--calib-width", "8"]
    assert quantize_main(argv) == 0
    model, info = load_quantized_model(out)
    assert info.extra["calibration"] == "a red circle"
    assert len(set(model.quant_linears()["blocks.0.ffn.net.0.proj"].clip_upper.tolist())) > 1


def test_run_encodes_prompts_with_umt5(pipeline_folder, tmp_path):
    ckpt = tmp_path / "c.safetensors"
    assert quantize_main(["--model", str(pipeline_folder), "--out", str(ckpt), "--quiet", "--ranges", "minmax"]) == 0
    argv = ["--ckpt", str(ckpt), "--out", str(tmp_path / "o"), "--steps", "2", "--frames", "2", "--height", "8"]
    argv += ["--width", "8", "--quiet", "--text-encoder", str(pipeline_folder), "--prompt", "a red circle"]
    assert run_main(argv) == 0
    assert load_file(str(tmp_path / "o" / "torch_latents.safetensors"))["latents"].shape == (1, 3, 2, 8, 8)
