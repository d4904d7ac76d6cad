"""Post-training quantization with the QVGen initialisation.

Weights: per row (or row group), search a shrink factor ``p in {1.00, 0.99, ..., 0.21}`` of the
range and keep the one minimising ``sum |Qw(w) - w|^2.4``. Activations: clip logits start at
``logit(act_clip_init)``; with calibration batches, each layer's clip factor is refined per
timestep group on a small grid by output MSE against the float layer.

Entry points:

- :func:`quantize` ``(model, config, forward_loop=None)``: ModelOpt's ``mtq.quantize`` shape;
  returns a new :class:`QuantizedWan` and leaves ``model`` untouched (it is copied first).
- :func:`ptq_quantize` ``(model, config, calib_batches)``: in place: ``model`` becomes the
  quantized transformer (``result.transformer is model``; calling ``model`` directly runs the
  quantized model too), no copy, for models too large to hold twice.
- ``ptq_stream.ptq_quantize_folder``: a diffusers folder straight to a checkpoint, one layer at a time.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from qvgen_export.quant import functional as QF
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.modules import PackedQuantLinear, QuantizedWan, QuantLinear
from qvgen_export.quant.range_search import MSE_POWER, SHRINK_GRID, mse_search_weight_fast, scale_zero

CLIP_GRID = (1.0, 0.975, 0.95, 0.9, 0.85, 0.8, 0.7)


_scale_zero = scale_zero


@torch.no_grad()
def mse_search_weight(w: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (group) scale and float zero point ``[N, G]`` minimising ``|Qw(w) - w|^2.4``.

    The vectorised search (``range_search.mse_search_weight_fast``); same result as
    :func:`mse_search_weight_reference` up to documented ulp-level ties.
    """
    return mse_search_weight_fast(w, config)


@torch.no_grad()
def mse_search_weight_reference(w: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The original loop over shrink factors: the oracle the fast search is tested against."""
    n, k = w.shape
    g = config.weight_groups(k)
    wg = w.detach().float().reshape(n, g, k // g)  # [N, G, group]
    wmin = wg.amin(dim=-1).clamp(max=0.0)
    wmax = wg.amax(dim=-1).clamp(min=0.0)
    best_err = torch.full((n, g), float("inf"))
    best_s = torch.ones(n, g)
    best_z = torch.zeros(n, g)
    qmax = config.weight_qmax
    for p in SHRINK_GRID.tolist():
        s, z = _scale_zero(wmin * p, wmax * p, config)
        q = torch.clamp(torch.round(wg / s[..., None] + z[..., None]), 0, qmax)
        err = ((q * s[..., None] - (z * s)[..., None]) - wg).abs().pow(MSE_POWER).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


@torch.no_grad()
def calibrate_act_clips_loop(
    model: QuantizedWan,
    forward_loop: Callable[[QuantizedWan], Any],
    reference_weight: Callable[[str], torch.Tensor] | None = None,
) -> int:
    """Pick each layer's activation clip factor per timestep group from ``CLIP_GRID``.

    ``forward_loop(model)`` runs calibration data through ``model`` however the caller likes (a
    loop over saved inputs, or a whole ``WanPipeline(transformer=model)`` call). A layer's
    candidates are scored by the MSE between its quantized output and the float output
    ``x @ W^T + b`` on the inputs it sees. Groups never seen keep their initial value. Returns the
    number of quantized-linear calls observed (0 means the loop never ran the model).

    ``reference_weight(name)`` gives layer ``name``'s float weight ``W`` when the model holds
    none (packed layers, as streaming PTQ builds them: the float weight is read from disk on
    each call instead of being kept); by default each layer's own latent ``weight``.
    """
    layers = model.quant_linears()
    if reference_weight is None:
        packed = [n for n, m in layers.items() if isinstance(m, PackedQuantLinear)]
        if packed:
            # A packed layer's ``weight`` is its dequantized weight: scoring against it would
            # calibrate towards the quantized model, silently.
            raise ValueError(f"layer {packed[0]} holds packed codes, no float weight: pass reference_weight")
    # err[name][group][clip] accumulated over calls
    errs: dict[str, dict[int, torch.Tensor]] = {n: defaultdict(lambda: torch.zeros(len(CLIP_GRID))) for n in layers}
    seen = [0]
    handles = []

    def make_hook(name: str) -> Any:
        def hook(mod: QuantLinear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen[0] += 1
            x = inputs[0].float()
            groups = mod.ctx.group
            assert groups is not None
            w = mod.quantized_weight()
            bias = None if mod.bias is None else mod.bias.float()
            w_ref = mod.weight if reference_weight is None else reference_weight(name)
            ref = nn.functional.linear(x, w_ref.float(), bias)
            for gi in groups.unique().tolist():
                sel = groups == gi
                xs, rs = x[sel], ref[sel]
                for ci, c in enumerate(CLIP_GRID):
                    f = torch.full((xs.shape[0],), c * mod.config.act_clip_base)
                    y = nn.functional.linear(QF.fake_quant_act(xs, f, f, mod.config.act_qmax), w, bias)
                    errs[name][gi][ci] += (y - rs).pow(2).mean()

        return hook

    for name, layer in layers.items():
        handles.append(layer.register_forward_hook(make_hook(name)))
    try:
        forward_loop(model)
    finally:
        for h in handles:
            h.remove()
    for name, layer in layers.items():
        for gi, e in errs[name].items():
            c = CLIP_GRID[int(torch.argmin(e))]
            logit = torch.logit(torch.tensor(min(c, 1.0 - 1e-4)))
            layer.clip_lower.data[gi] = logit
            layer.clip_upper.data[gi] = logit
    return seen[0]


def calibrate_act_clips(
    model: QuantizedWan, calib_batches: Iterable[dict[str, torch.Tensor]], progress: bool = True
) -> None:
    """:func:`calibrate_act_clips_loop` over batches, each a dict with ``hidden_states``,
    ``timestep`` and ``encoder_hidden_states``."""
    batches = list(calib_batches)

    def loop(m: QuantizedWan) -> None:
        for batch in tqdm(batches, desc="calibrating activation clips", disable=not progress):
            m(batch["hidden_states"], batch["timestep"], batch["encoder_hidden_states"], return_dict=False)

    calibrate_act_clips_loop(model, loop)


def ptq_quantize(
    model: nn.Module,
    config: QuantConfig,
    calib_batches: Iterable[dict[str, torch.Tensor]] | None = None,
    progress: bool = True,
    weight_ranges_method: str = "mse",
) -> QuantizedWan:
    """Quantize a float ``WanTransformer3DModel`` in place and return its wrapper.

    ``model`` itself becomes the quantized transformer (``result.transformer is model``); it stays
    callable (it computes its own timestep group), so nothing holding it breaks. Use
    :func:`quantize` to keep the float model.

    Without ``calib_batches`` this is QVGen's initialisation exactly (MSE weight ranges, initial
    activation clip); with them, activation clips are also calibrated (``calibrate_act_clips``).
    ``weight_ranges_method="minmax"`` uses plain min/max weight ranges instead of the search.
    """
    qmodel = QuantizedWan.from_float(model, config, init=False)
    for layer in qmodel.quant_linears().values():
        layer.init_weight_ranges(weight_ranges_method)
    if calib_batches is not None:
        calibrate_act_clips(qmodel, calib_batches, progress=progress)
    return qmodel.eval()


def quantize(
    model: nn.Module,
    config: QuantConfig | str | dict[str, Any],
    forward_loop: Callable[[QuantizedWan], Any] | None = None,
    *,
    weight_ranges_method: str = "mse",
) -> QuantizedWan:
    """Quantize a float Wan transformer the ModelOpt way: ``quantize(model, config, forward_loop)``.

    Returns a **new** :class:`QuantizedWan`; ``model`` is not modified (it is deep-copied first,
    so peak memory is two models; for models that do not fit twice use :func:`ptq_quantize`,
    in place, or ``ptq_stream.ptq_quantize_folder``, layer by layer from disk).

    ``config``: a :class:`QuantConfig`, a preset name (``"w4a4"``, ``"w3a3"``, ``"w8a8"``) or a
    ``QuantConfig.to_dict()`` dict (ModelOpt's configs are dicts too, with other keys).
    ``forward_loop``: called once as ``forward_loop(qmodel)`` to calibrate the activation clips
    on whatever it runs through ``qmodel`` (as ``mtq.quantize``'s ``forward_loop``); e.g.
    ``lambda m: WanPipeline(..., transformer=m)(prompts, num_inference_steps=10)``. Without it,
    the QVGen initialisation only (MSE weight ranges, initial clips). The result is in eval mode.
    """
    if isinstance(config, str):
        qconfig = QuantConfig.preset(config)
    elif isinstance(config, dict):
        qconfig = QuantConfig.from_dict(config)
    elif isinstance(config, QuantConfig):
        qconfig = config
    else:
        raise TypeError(f"config must be a QuantConfig, a preset name or a dict, got {type(config).__name__}")
    if isinstance(model, QuantizedWan) or any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("the model is already quantized")
    qmodel = ptq_quantize(copy.deepcopy(model), qconfig, progress=False, weight_ranges_method=weight_ranges_method)
    if forward_loop is not None and calibrate_act_clips_loop(qmodel, forward_loop) == 0:
        raise ValueError("forward_loop never called the model: no activation was calibrated")
    return qmodel.eval()
