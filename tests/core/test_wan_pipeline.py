"""diffusers' own ``WanPipeline`` runs every CPU backend unchanged (the "drop-in" claim), and gives
the latents of the project's sampler.

The pipeline is built from tiny random configs with no download: a UMT5 encoder from a config, a
word-level tokenizer built with ``tokenizers``, a tiny ``AutoencoderKLWan``, the tiny Wan.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tiny_text import tiny_text_encoder, tiny_tokenizer

from qvgen_export.checkpoint import load_quantized_model
from qvgen_export.runtime.backends import Denoiser, OrtBackend
from qvgen_export.runtime.sampler import make_scheduler, sample_video

TEXT_DIM = 64  # TINY_WAN_CONFIG["text_dim"]
MAX_LEN = 8
# num_frames=5, 64x64 pixels -> latents [C, 2, 8, 8] (VAE factors 4 and 8)
FRAMES, HEIGHT, WIDTH = 5, 64, 64
STEPS, GUIDANCE, SEED = 3, 4.0, 3
PROMPTS = ["a red circle moving right", "a blue square"]


def _vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(
        base_dim=8, z_dim=3, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


@pytest.fixture(scope="module")
def parts():
    return tiny_tokenizer(PROMPTS + ["ugly blurry"]), tiny_text_encoder(TEXT_DIM), _vae()


def _pipeline(parts, transformer):
    from diffusers import WanPipeline

    tokenizer, text_encoder, vae = parts
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=make_scheduler("unipc", shift=3.0),
    )


def _pipeline_latents(pipe) -> torch.Tensor:
    with torch.no_grad():
        out = pipe(
            prompt=PROMPTS,
            negative_prompt="ugly blurry",
            num_frames=FRAMES,
            height=HEIGHT,
            width=WIDTH,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(SEED),
            max_sequence_length=MAX_LEN,
            output_type="latent",
        )
    return out.frames


@torch.no_grad()  # as in the pipeline's call: UMT5's attention takes another kernel under grad
def _sampler_latents(pipe, denoiser) -> torch.Tensor:
    pe, ne = pipe.encode_prompt(PROMPTS, "ugly blurry", max_sequence_length=MAX_LEN, device=torch.device("cpu"))
    c = int(denoiser.config.in_channels)
    return sample_video(
        denoiser,
        pe,
        ne,
        latent_shape=(c, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8),
        num_steps=STEPS,
        guidance_scale=GUIDANCE,
        seed=SEED,
        progress=False,
    )


def _check(parts, transformer) -> None:
    pipe = _pipeline(parts, transformer)
    pipe.set_progress_bar_config(disable=True)
    a = _pipeline_latents(pipe)
    b = _sampler_latents(pipe, transformer)
    assert a.shape == (2, 3, 2, 8, 8)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b), (a - b).abs().max()


def test_pipeline_runs_quantized_wan(parts, w4a4_ckpt):
    qmodel, _ = load_quantized_model(w4a4_ckpt)
    _check(parts, qmodel)


def test_pipeline_runs_inner_transformer_of_quantized_wan(parts, w4a4_ckpt):
    """The quantized diffusers model itself (``qmodel.transformer``) works without the wrapper."""
    qmodel, _ = load_quantized_model(w4a4_ckpt)
    pipe = _pipeline(parts, qmodel.transformer)
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(_pipeline_latents(pipe), _sampler_latents(pipe, qmodel))
    assert qmodel.ctx.group is None  # the hook clears what it set


def test_pipeline_runs_ort_on_onnx_folder(parts, w4a4_export):
    pytest.importorskip("onnxruntime")
    _check(parts, Denoiser(OrtBackend(w4a4_export)))


def test_pipeline_runs_ort_on_trt_folder(parts, trt_export):
    pytest.importorskip("onnxruntime_extensions")
    from qvgen_export.targets.trt_engine import EngineUnavailableError

    try:
        den = Denoiser(OrtBackend(trt_export))
    except (EngineUnavailableError, ImportError) as e:  # the native C++ reference is not built
        pytest.skip(str(e))
    _check(parts, den)


def test_denoiser_has_the_model_surface_the_pipeline_reads(w4a4_ckpt, w4a4_export):
    pytest.importorskip("onnxruntime")
    qmodel, _ = load_quantized_model(w4a4_ckpt)
    den = Denoiser(OrtBackend(w4a4_export))
    for obj in (qmodel, den):
        assert obj.device == torch.device("cpu") and obj.dtype == torch.float32
        assert obj.config.in_channels == 3 and list(obj.config.patch_size) == [1, 4, 4]
        with obj.cache_context("cond", step_index=0):
            pass
    qmodel.set_attention_backend("native")  # diffusers' attention dispatch, delegated


def test_bf16_pipeline_on_quantized_wan(parts, w4a4_ckpt):
    """A bf16 quantized model in the pipeline: runs, and stays close to the float32 one."""
    qmodel, _ = load_quantized_model(w4a4_ckpt)
    ref = _pipeline_latents(_pipeline(parts, copy.deepcopy(qmodel)))
    qb = qmodel.to(torch.bfloat16)
    assert qb.dtype == torch.bfloat16
    out = _pipeline_latents(_pipeline(parts, qb))
    assert out.dtype == torch.float32  # the pipeline's latents stay float32
    assert (out - ref).abs().max() < 0.25 * ref.abs().max()
