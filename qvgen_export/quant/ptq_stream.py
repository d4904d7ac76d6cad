"""Block-streaming PTQ: a local diffusers folder -> a quantized checkpoint, one layer at a time.

Only the tensor being quantized (plus its range-search temporaries) is ever in memory: the model
is a meta skeleton (names, shapes, module order), each float weight is read from its shard,
quantized, written at its place in the output file and dropped, so peak memory is set by the
widest layer, not by depth. The output is the same file :func:`save_checkpoint` writes for
``ptq_quantize(load_diffusers_transformer(folder), config)`` (same tensors, same metadata),
written in one pass to a temp file that is renamed onto ``out_ckpt`` only when complete.

With ``calibrate`` (a forward loop, e.g. a short sampling run) the activation clips are
calibrated too, without a float model. The loop runs the packed quantized model (the layers the
checkpoint loader builds; the same bits as the whole-model path's fake-quant forward), streamed
block by block: a transformer block's packed codes are read back from the output file (all of
it written but the clip tensors) when the block starts and dropped when it ends
(:class:`BlockCodes`), and each layer's float reference weight is read from the folder per
call and dropped (:class:`FolderWeights`). Resident: the scales, zero points, clip logits and
biases, the float tensors (norms, embedders), the codes of layers outside the blocks, and the
run's activations; so peak memory stays flat with depth. The clip tensors are written last, so
the file is still written once. The result equals ``ptq_quantize`` +
``calibrate_act_clips_loop`` on the whole float model, bit for bit (tested).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from qvgen_export.checkpoint.format import DIGEST_KEY, checkpoint_metadata, trim_heap
from qvgen_export.checkpoint.stream_writer import StreamingSafetensorsWriter
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.modules import PackedQuantLinear, QuantContext, QuantizedWan, quantizable_linears
from qvgen_export.quant.packing import pack_codes, packed_shape
from qvgen_export.quant.ptq import calibrate_act_clips_loop
from qvgen_export.quant.range_search import WEIGHT_RANGES, weight_ranges
from qvgen_export.utils.atomic import atomic_file, ensure_writable_dir
from qvgen_export.utils.meta_init import assign_tensor

if TYPE_CHECKING:
    from qvgen_export.models.diffusers_folder import DiffusersFolder

# Clip logits are written after calibration; everything else as soon as it is computed.
CLIP_SUFFIXES = ("clip_lower", "clip_upper")
# Bytes of float reference weights read from the folder between two unmaps of its shards.
_RELEASE_BYTES = 256 << 20


class FolderWeights:
    """``name -> float weight`` read from a diffusers folder on each call (calibration's
    reference), unmapping the shards every ``_RELEASE_BYTES`` so RSS does not grow by the
    folder's size over a calibration run."""

    def __init__(self, folder: DiffusersFolder) -> None:
        self.folder = folder
        self._mapped = 0

    def __call__(self, name: str) -> torch.Tensor:
        raw = self.folder.get(f"{name}.weight")  # a fresh tensor, not a view of the mapping
        self._mapped += raw.numel() * raw.element_size()
        if self._mapped >= _RELEASE_BYTES:
            self.folder.release()
            self._mapped = 0
        return raw.float()


def _unit(key: str) -> str:
    """The streaming unit of a tensor: ``blocks.<i>`` for block tensors, else its top module."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]


class BlockCodes:
    """Forward hooks holding a transformer block's packed codes only while the block runs.

    The codes come from the output file being written (``read``: the writer's ``read_back``):
    read when ``blocks.<i>`` starts, replaced by meta tensors when it ends. Layers outside the
    blocks keep their codes (a few small linears).
    """

    def __init__(self, read: Callable[[str], torch.Tensor], transformer: nn.Module, names: list[str]) -> None:
        self.transformer = transformer
        self.read = read
        self.by_block: dict[str, list[str]] = {}
        for name in names:
            if self.streams(name):
                self.by_block.setdefault(_unit(name), []).append(name)
        self._handles: list[Any] = []

    @staticmethod
    def streams(name: str) -> bool:
        return name.startswith("blocks.")

    @staticmethod
    def drop(layer: PackedQuantLinear) -> None:
        layer.qweight = torch.empty(layer.qweight.shape, dtype=torch.uint8, device="meta")

    def _load(self, names: list[str], *_: Any) -> None:
        for name in names:
            self.transformer.get_submodule(name).qweight = self.read(f"{name}.qweight")

    def _unload(self, names: list[str], *_: Any) -> None:
        for name in names:
            self.drop(self.transformer.get_submodule(name))

    def __enter__(self) -> None:
        for unit, names in self.by_block.items():
            block = self.transformer.get_submodule(unit)
            self._handles.append(block.register_forward_pre_hook(functools.partial(self._load, names)))
            hook = functools.partial(self._unload, names)
            self._handles.append(block.register_forward_hook(hook, always_call=True))

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def quantize_linear_tensors(
    w: torch.Tensor, bias: torch.Tensor | None, config: QuantConfig, ranges: str = "mse"
) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of one linear (suffix -> tensor), as ``ptq_quantize`` + save make them."""
    wf = w.detach().float()
    s, z = weight_ranges(wf, config, ranges)
    s, z = s.contiguous(), z.contiguous()
    # Codes row chunk by row chunk (elementwise math: the same bits as one call) so the float
    # temporaries stay ~16 MiB even for Wan 14B's 5120x30720 time projection. The ops of
    # QF.weight_codes (w / s + z, round half to even, clamp) in place on one temporary, with the
    # group scale broadcast instead of repeated: the same IEEE ops on the same operands, so the
    # same codes (round_ste's detach trick returns round(x) exactly; tests compare the two).
    n, k = wf.shape
    g = s.shape[1]
    codes = torch.empty(n, k, dtype=torch.uint8)
    rows = max(1, (1 << 22) // max(k, 1))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        t = wf[r0:r1].view(r1 - r0, g, k // g) / s[r0:r1, :, None]
        t.add_(z[r0:r1, :, None]).round_().clamp_(0, config.weight_qmax)
        codes[r0:r1] = t.view(r1 - r0, k)
        del t
    # QuantLinear's initial clip logits: the same float, the same torch.full.
    logit = math.log(config.act_clip_init / (1.0 - config.act_clip_init))
    out = {
        "qweight": pack_codes(codes, config.weight_bits),
        "w_scale": s,
        "w_zero": z,
        "clip_lower": torch.full((config.timestep_groups,), logit),
        "clip_upper": torch.full((config.timestep_groups,), logit),
    }
    if bias is not None:
        out["bias"] = bias.detach().float().contiguous()
    return out


def ptq_quantize_folder(
    diffusers_dir: str | Path,
    out_ckpt: str | Path,
    config: QuantConfig,
    weight_ranges_method: str = "mse",
    dtype: torch.dtype = torch.float32,
    extra: dict[str, Any] | None = None,
    progress: bool = False,
    calibrate: Callable[[QuantizedWan], Any] | None = None,
) -> Path:
    """Quantize the Wan transformer in ``diffusers_dir`` to the checkpoint ``out_ckpt``, streaming.

    ``weight_ranges_method``: ``"mse"`` (QVGen's shrink search, every candidate; the default of
    ``ptq_quantize``), ``"mse-fast"`` (the same search, coarse to fine: ~3x faster, not always
    the same choice; ``range_search``'s docstring) or ``"minmax"``. ``dtype`` is the float dtype of the unquantized tensors (float32, as
    ``load_diffusers_transformer`` gives). Raises ``DiffusersFolderError`` (ValueError) for a bad
    folder, ``ValueError`` for non-finite weights or a config that selects nothing, ``OSError``
    when the disk fills; nothing is left under ``out_ckpt`` on any failure.

    ``calibrate(model)``: a forward loop (as ``ptq.calibrate_act_clips_loop`` takes) run on the
    packed quantized model to calibrate the activation clips (module docstring); ``ValueError``
    if it never calls the model. Memory is then the packed model plus the loop's activations.
    """
    from tqdm.auto import tqdm

    from qvgen_export.models.wan import model_config_dict, open_wan_folder, skeleton_shapes

    if weight_ranges_method not in WEIGHT_RANGES:
        raise ValueError(f"unknown weight range method {weight_ranges_method!r}; expected one of {WEIGHT_RANGES}")
    folder, skeleton = open_wan_folder(diffusers_dir)
    shapes = skeleton_shapes(skeleton)
    names = quantizable_linears(skeleton, config)
    if not names:
        raise ValueError("the quantization config selects no nn.Linear of the model")

    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    entries = []
    for name in names:
        lin = skeleton.get_submodule(name)
        n, k, has_bias = lin.out_features, lin.in_features, lin.bias is not None
        g = config.weight_groups(k)
        entries.append({"name": name, "in_features": k, "out_features": n, "bias": has_bias, "groups": g})
        specs[f"{name}.qweight"] = (torch.uint8, packed_shape(n, k, config.weight_bits))
        specs[f"{name}.w_scale"] = (torch.float32, (n, g))
        specs[f"{name}.w_zero"] = (torch.float32, (n, g))
        specs[f"{name}.clip_lower"] = (torch.float32, (config.timestep_groups,))
        specs[f"{name}.clip_upper"] = (torch.float32, (config.timestep_groups,))
        if has_bias:
            specs[f"{name}.bias"] = (torch.float32, (n,))
    quant = set(names)
    float_keys = [k for k in shapes if k.rpartition(".")[0] not in quant]
    for key in float_keys:
        stored = folder.dtype(key)
        assert isinstance(stored, torch.dtype)  # check_matches refused the rest
        specs[key] = (dtype if stored.is_floating_point else stored, shapes[key])
    meta = checkpoint_metadata(type(skeleton).__name__, model_config_dict(skeleton), config, entries, extra)

    def read(key: str) -> torch.Tensor:
        t = folder.get(key)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{folder.file_of(key)}: tensor '{key}' contains NaN or Inf")
        return t

    out = Path(out_ckpt)
    ensure_writable_dir(out)
    units: dict[str, list[str]] = {}
    for key in shapes:  # module order; a quantized linear is handled at its weight
        units.setdefault(_unit(key), []).append(key)
    ctx = QuantContext()
    with atomic_file(out, what="the quantized checkpoint") as tmp:
        writer = StreamingSafetensorsWriter(tmp, specs, meta, digest_key=DIGEST_KEY)
        try:
            for unit_keys in tqdm(list(units.values()), desc="PTQ (streaming)", disable=not progress):
                for key in unit_keys:
                    owner, _, leaf = key.rpartition(".")
                    if owner in quant:
                        if leaf != "weight":
                            continue
                        bias = read(f"{owner}.bias") if f"{owner}.bias" in shapes else None
                        parts = quantize_linear_tensors(read(key), bias, config, weight_ranges_method)
                        for suffix, t in parts.items():
                            if calibrate is None or suffix not in CLIP_SUFFIXES:
                                writer.write(f"{owner}.{suffix}", t)
                        if calibrate is not None:
                            k = skeleton.get_submodule(owner).in_features
                            layer = PackedQuantLinear.from_tensors(parts, k, config, ctx)
                            if BlockCodes.streams(owner):
                                BlockCodes.drop(layer)  # read back from the file while its block runs
                            skeleton.set_submodule(owner, layer)
                        del parts, bias
                    else:
                        t = read(key).to(specs[key][0]).contiguous()
                        writer.write(key, t)
                        if calibrate is not None:
                            assign_tensor(skeleton, key, t)
                # The unit's shard pages stay mapped (and in RSS) until released, and glibc keeps
                # freed layer-sized blocks in its heap unless trimmed: both would grow with depth.
                folder.release()
                trim_heap()
            if calibrate is not None:
                with BlockCodes(writer.read_back, skeleton, names):
                    qmodel = QuantizedWan(skeleton, config, ctx).eval()
                    _calibrate_and_write_clips(qmodel, calibrate, folder, writer)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return out


def _calibrate_and_write_clips(
    qmodel: QuantizedWan,
    forward_loop: Callable[[QuantizedWan], Any],
    folder: DiffusersFolder,
    writer: StreamingSafetensorsWriter,
) -> None:
    if calibrate_act_clips_loop(qmodel, forward_loop, reference_weight=FolderWeights(folder)) == 0:
        raise ValueError("the calibration loop never called the model: no activation was calibrated")
    folder.release()
    for name, layer in qmodel.quant_linears().items():
        for suffix in CLIP_SUFFIXES:
            writer.write(f"{name}.{suffix}", getattr(layer, suffix).detach().float().contiguous())
