"""The quantized checkpoint: one self-describing safetensors file (spec: docs/checkpoint-format.md).

Reading never executes code from the file: the header is JSON, tensors are raw bytes, and the
model is built from a whitelisted class with the stored diffusers config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qvgen_export.checkpoint.hashed_tensors import (
    DIGEST_KEY,
    HashedTensors,
    digest_table,
    open_safetensors,
)
from qvgen_export.checkpoint.schema import (
    SchemaError,
    check_layers,
    check_model_config,
    check_quant_config,
    estimate_parameters,
)
from qvgen_export.checkpoint.stream_writer import write_safetensors
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.functional import weight_codes, weight_dequant
from qvgen_export.quant.modules import (
    PackedQuantLinear,
    QuantContext,
    QuantizedWan,
    QuantLinear,
    quantizable_linears,
)
from qvgen_export.quant.packing import pack_codes, packed_shape, unpack_codes
from qvgen_export.utils.atomic import atomic_file, ensure_writable_dir
from qvgen_export.utils.lazy_safetensors import LazySafetensors
from qvgen_export.utils.meta_init import assign_tensor, meta_tensor_names, params_on_meta

FORMAT_NAME = "qvgen-export/quantized-checkpoint"
# 2: per-tensor SHA-256 digests (``tensor_sha256``), sorted metadata keys. Version 1 files have
# no content hash and are refused rather than loaded unchecked.
FORMAT_VERSION = 2
# SHA-256 of every other metadata entry (sorted JSON), so a valid-looking edit of the config
# (a clip base, an include pattern) is caught like a tensor edit.
META_DIGEST_KEY = "metadata_sha256"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SUPPORTED_MODEL_CLASSES = ("WanTransformer3DModel",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message is one line naming the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass
class CheckpointInfo:
    path: str
    model_class: str
    model_config: dict[str, Any]
    quant_config: QuantConfig
    layers: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)


def _layer_entry(name: str, layer: QuantLinear) -> dict[str, Any]:
    return {
        "name": name,
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "bias": layer.bias is not None,
        "groups": int(layer.w_scale.shape[1]),
    }


def checkpoint_tensors(model: QuantizedWan) -> dict[str, torch.Tensor]:
    """Every tensor the checkpoint stores for ``model`` (packed codes, qparams, float rest)."""
    cfg = model.qconfig
    layers = model.quant_linears()
    out: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        if layer.weight_delta is not None:
            raise ValueError(f"layer {name} still carries a weight delta (Phi); remove it before saving")
        out[f"{name}.qweight"] = pack_codes(layer.codes(), cfg.weight_bits)
        out[f"{name}.w_scale"] = layer.w_scale.detach().float().contiguous()
        out[f"{name}.w_zero"] = layer.w_zero.detach().float().contiguous()
        out[f"{name}.clip_lower"] = layer.clip_lower.detach().float().contiguous()
        out[f"{name}.clip_upper"] = layer.clip_upper.detach().float().contiguous()
        if layer.bias is not None:
            out[f"{name}.bias"] = layer.bias.detach().float().contiguous()
    quant_prefixes = tuple(f"{n}." for n in layers)
    for key, t in model.transformer.state_dict().items():
        if key.startswith(quant_prefixes):
            continue
        out[key] = t.detach().contiguous()
    return out


def checkpoint_metadata(
    model_class: str,
    model_config: dict[str, Any],
    qconfig: QuantConfig,
    layers: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The safetensors header metadata of a checkpoint (one writer for whole-model and streaming saves)."""
    from qvgen_export import __version__

    if model_class not in SUPPORTED_MODEL_CLASSES:
        raise ValueError(f"unsupported model class {model_class}; expected one of {SUPPORTED_MODEL_CLASSES}")
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "producer": f"qvgen-export {__version__}",
        "model_class": model_class,
        "model_config": json.dumps(model_config, sort_keys=True),
        "quant_config": qconfig.to_json(),
        "layers": json.dumps(layers, sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    meta[META_DIGEST_KEY] = metadata_digest(meta)
    return meta


def metadata_digest(meta: Mapping[str, str]) -> str:
    """SHA-256 of the metadata entries other than the two digests, as sorted compact JSON."""
    import hashlib

    body = {k: v for k, v in meta.items() if k not in (DIGEST_KEY, META_DIGEST_KEY)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_checkpoint(model: QuantizedWan, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a quantized checkpoint (atomically).

    ``extra`` is free-form JSON (e.g. how it was trained) stored under the ``extra`` key.
    """
    from qvgen_export.models.wan import model_config_dict

    path = Path(path)
    ensure_writable_dir(path)
    meta = checkpoint_metadata(
        type(model.transformer).__name__,
        model_config_dict(model.transformer),
        model.qconfig,
        [_layer_entry(n, m) for n, m in model.quant_linears().items()],
        extra,
    )
    tensors = checkpoint_tensors(model)
    with atomic_file(path, what="the quantized checkpoint") as tmp:
        write_checkpoint_file(tmp, tensors, meta)
    return path


def write_checkpoint_file(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Lay ``tensors`` out as safetensors does, with sorted metadata and per-tensor digests."""
    write_safetensors(path, tensors, meta, DIGEST_KEY)


# --------------------------------------------------------------------------------------------
# Reading and validation


def _json(path: Path, meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        raise CheckpointError(path, f"metadata key '{key}' is missing")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"metadata '{key}' is not valid JSON ({e.msg})") from None


class CheckpointTensors(HashedTensors):
    """The tensors of a checkpoint, read lazily, each checked against its digest when read
    (:class:`~qvgen_export.checkpoint.hashed_tensors.HashedTensors` raising ``CheckpointError``)."""

    def __init__(self, lazy: LazySafetensors, digests: dict[str, str]) -> None:
        super().__init__(lazy, digests, CheckpointError)


def read_info(path: str | Path, check_values: bool = True) -> tuple[CheckpointInfo, CheckpointTensors]:
    """Read and validate the header of ``path`` (no model built yet).

    With ``check_values`` every tensor is also read once, one at a time, and its values checked
    (finite floats, positive scales, codes within range); :func:`load_quantized_model` skips
    that pass and checks the values while it materialises the model, so each tensor is read once.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "file not found")
    if not p.is_file():
        raise CheckpointError(p, "not a file")
    lazy = open_safetensors(p, CheckpointError)
    meta = lazy.metadata
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(p, f"not a qvgen-export checkpoint (metadata format={meta.get('format')!r})")
    version = meta.get("format_version")
    if version == "1":
        raise CheckpointError(
            p, "format version 1 (no content hashes) is no longer read; re-create the checkpoint with this qvgen-export"
        )
    if version != str(FORMAT_VERSION):
        raise CheckpointError(p, f"unsupported format version {version!r} (this tool reads version {FORMAT_VERSION})")
    if meta.get(META_DIGEST_KEY) != metadata_digest(meta):
        what = "is missing" if META_DIGEST_KEY not in meta else "does not match the metadata (header edited)"
        raise CheckpointError(p, f"metadata '{META_DIGEST_KEY}' {what}")
    model_class = meta.get("model_class")
    if model_class not in SUPPORTED_MODEL_CLASSES:
        raise CheckpointError(p, f"unsupported model class {model_class!r}")
    try:
        qdict = check_quant_config(_json(p, meta, "quant_config"))
    except SchemaError as e:
        raise CheckpointError(p, f"invalid quantization config: {e}") from None
    try:
        model_config = check_model_config(_json(p, meta, "model_config"))
        layers = check_layers(_json(p, meta, "layers"))
    except SchemaError as e:
        raise CheckpointError(p, str(e)) from None
    try:
        qcfg = QuantConfig.from_dict(qdict)
    except (TypeError, ValueError) as e:
        raise CheckpointError(p, f"invalid quantization config: {e}") from None
    extra = _json(p, meta, "extra") if "extra" in meta else {}
    if not isinstance(extra, dict):
        raise CheckpointError(p, "metadata 'extra' must be a JSON object")
    info = CheckpointInfo(str(p), model_class, model_config, qcfg, layers, extra)
    tensors = CheckpointTensors(lazy, digest_table(lazy, CheckpointError))
    _validate_layout(p, info, tensors)
    if check_values:
        for entry in info.layers:
            read_layer_tensors(p, info, tensors, entry)
        for key in float_tensor_keys(info, tensors):
            read_float_tensor(p, tensors, key)
    return info, tensors


def _check_finite(p: Path, key: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise CheckpointError(p, f"tensor '{key}' contains NaN or Inf")


def _entry_fields(p: Path, entry: Any) -> tuple[str, int, int, bool, int]:
    # The schema (check_layers) has fixed every type; this only unpacks.
    try:
        return (entry["name"], entry["in_features"], entry["out_features"], entry["bias"], entry["groups"])
    except (KeyError, TypeError):
        raise CheckpointError(p, f"malformed layer entry {str(entry)[:80]}") from None


def _layer_expect(cfg: QuantConfig, n: int, k: int, groups: int, has_bias: bool) -> dict[str, Any]:
    expect: dict[str, Any] = {
        "qweight": (packed_shape(n, k, cfg.weight_bits), torch.uint8),
        "w_scale": ((n, groups), torch.float32),
        "w_zero": ((n, groups), torch.float32),
        "clip_lower": ((cfg.timestep_groups,), torch.float32),
        "clip_upper": ((cfg.timestep_groups,), torch.float32),
    }
    if has_bias:
        expect["bias"] = ((n,), torch.float32)
    return expect


def layer_tensor_keys(info: CheckpointInfo) -> list[str]:
    """Names of the per-layer tensors the header's layer list implies, in layer order."""
    out = []
    for e in info.layers:
        name, k, n, has_bias, groups = _entry_fields(Path(info.path), e)
        out += [f"{name}.{s}" for s in _layer_expect(info.quant_config, n, k, groups, has_bias)]
    return out


def float_tensor_keys(info: CheckpointInfo, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The file's tensors that are not per-layer tensors of a quantized linear."""
    layer_keys = set(layer_tensor_keys(info))
    return [k for k in tensors if k not in layer_keys]


def _validate_layout(p: Path, info: CheckpointInfo, tensors: CheckpointTensors) -> None:
    """Header-only checks: layer entries against the config, per-layer tensor shapes and dtypes,
    nothing unknown under a quantized layer, float dtypes for the rest, and a parameter count the
    model_config can have (before any model is built)."""
    cfg = info.quant_config
    layer_keys: set[str] = set()
    declared = 0
    for entry in info.layers:
        name, k, n, has_bias, groups = _entry_fields(p, entry)
        if not cfg.selects(name):
            raise CheckpointError(p, f"layer '{name}' is quantized but the quantization config does not select it")
        try:
            expected_groups = cfg.weight_groups(k)
        except ValueError as e:
            raise CheckpointError(p, f"layer '{name}': {e}") from None
        if groups != expected_groups:
            raise CheckpointError(p, f"layer '{name}' has {groups} weight groups, config implies {expected_groups}")
        if not has_bias and f"{name}.bias" in tensors:
            raise CheckpointError(p, f"layer '{name}' is listed without a bias but tensor '{name}.bias' exists")
        declared += n * k + (n if has_bias else 0)
        for suffix, (shape, dtype) in _layer_expect(cfg, n, k, groups, has_bias).items():
            key = f"{name}.{suffix}"
            layer_keys.add(key)
            if key not in tensors:
                raise CheckpointError(p, f"tensor '{key}' is missing")
            if tensors.shape(key) != tuple(shape):
                raise CheckpointError(p, f"tensor '{key}' has shape {tensors.shape(key)}, expected {tuple(shape)}")
            if tensors.dtype(key) != dtype:
                raise CheckpointError(p, f"tensor '{key}' has dtype {tensors.dtype(key)}, expected {dtype}")
    prefixes = tuple(f"{e['name']}." for e in info.layers)
    for key in tensors:
        if key in layer_keys:
            continue
        if key.startswith(prefixes):
            raise CheckpointError(p, f"unknown tensor '{key}' under a quantized layer's prefix")
        dt = tensors.dtype(key)
        if dt not in FLOAT_DTYPES:
            raise CheckpointError(p, f"tensor '{key}' has dtype {dt}, expected a floating-point dtype")
        numel = 1
        for d in tensors.shape(key):
            numel *= d
        declared += numel
    implied = estimate_parameters(info.model_config)
    if implied > declared:
        raise CheckpointError(
            p, f"model_config implies at least {implied:,} parameters but the file holds {declared:,}"
        )


def read_layer_tensors(
    p: Path, info: CheckpointInfo, tensors: Mapping[str, torch.Tensor], entry: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Read one layer's tensors (once) and check their values; ``codes`` holds the unpacked codes
    (and ``qweight`` the packed ones, as read)."""
    cfg = info.quant_config
    name, k, n, has_bias, groups = _entry_fields(p, entry)
    out: dict[str, torch.Tensor] = {}
    for suffix in _layer_expect(cfg, n, k, groups, has_bias):
        t = tensors[f"{name}.{suffix}"]
        _check_finite(p, f"{name}.{suffix}", t)
        out[suffix] = t
    if bool((out["w_scale"] <= 0).any()):
        raise CheckpointError(p, f"tensor '{name}.w_scale' has non-positive scales")
    codes = unpack_codes(out["qweight"], k, cfg.weight_bits)
    if codes.numel() and int(codes.max()) > cfg.weight_qmax:
        raise CheckpointError(
            p, f"tensor '{name}.qweight' holds codes above {cfg.weight_qmax} for {cfg.weight_bits}-bit weights"
        )
    out["codes"] = codes
    return out


def read_float_tensor(p: Path, tensors: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    t = tensors[key]
    _check_finite(p, key, t)
    return t


# Bytes read from a checkpoint between two unmaps of the file while a model is built.
_RELEASE_BYTES = 16 << 20

# Rows per chunk when dequantizing / re-deriving codes: bounds the float temporaries (about ten
# of 4 MiB each) whatever the layer width; the math is elementwise, so chunking changes no bit.
_CHUNK_ELEMENTS = 1 << 20


def trim_heap() -> None:
    """Return freed heap memory to the OS (glibc only; a no-op elsewhere).

    glibc keeps freed layer-sized blocks in its heap (its mmap threshold grows with the sizes
    freed), so a streaming reader or writer would otherwise end at its peak of temporaries.
    """
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _materialise_layer(
    p: Path,
    name: str,
    parts: dict[str, torch.Tensor],
    cfg: QuantConfig,
    ctx: QuantContext,
    latent_weights: bool = False,
) -> QuantLinear:
    """A quantized linear straight from its file tensors.

    By default a :class:`PackedQuantLinear` holding the file's packed codes; with
    ``latent_weights`` a ``QuantLinear`` whose float32 latent weight is ``w_hat = q * s - z * s``
    (what training from a checkpoint needs). Either way ``w_hat`` must re-quantize to ``q``
    (true for every valid checkpoint, and what makes the two forms compute the same bits); that
    is checked here, chunk by chunk, against the codes read from the file (no second read).
    """
    codes, s, z = parts["codes"], parts["w_scale"], parts["w_zero"]
    n, k = codes.shape
    weight = torch.empty(n, k, dtype=torch.float32) if latent_weights else None
    rows = max(1, _CHUNK_ELEMENTS // max(k, 1))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        w_hat = weight_dequant(codes[r0:r1].float(), s[r0:r1], z[r0:r1])
        back = weight_codes(w_hat, s[r0:r1], z[r0:r1], cfg.weight_qmax).to(torch.uint8)
        if not torch.equal(back, codes[r0:r1]):
            raise CheckpointError(p, f"layer '{name}': scales and codes are inconsistent (codes do not round-trip)")
        if weight is not None:
            weight[r0:r1] = w_hat
    if weight is None:
        # The file's packed bytes as read (a fresh tensor), with its scales, zero points and clips.
        return PackedQuantLinear.from_tensors(parts, k, cfg, ctx)
    with params_on_meta():
        layer = QuantLinear(k, n, "bias" in parts, cfg, ctx)
    values = {"w_scale": s, "w_zero": z, "clip_lower": parts["clip_lower"], "clip_upper": parts["clip_upper"]}
    values["weight"] = weight
    if "bias" in parts:
        values["bias"] = parts["bias"]
    for attr, v in values.items():
        old = getattr(layer, attr)
        setattr(layer, attr, nn.Parameter(v, requires_grad=old.requires_grad))
    return layer


def build_model(
    info: CheckpointInfo, tensors: Mapping[str, torch.Tensor], latent_weights: bool = False
) -> QuantizedWan:
    """Build the fake-quant model described by a checkpoint whose header is validated.

    The transformer is built on the meta device; each quantized linear is materialised from its
    packed codes, scales, zero points, clip logits and bias (a :class:`PackedQuantLinear`, or
    with ``latent_weights`` a trainable ``QuantLinear``, see :func:`load_quantized_model`), and
    every other tensor is read in its stored dtype and cast to the model's (float32), one tensor
    at a time. Values are checked as they are read (see :func:`read_info`).
    """
    from qvgen_export.models.wan import wan_skeleton

    p = Path(info.path)
    cfg = info.quant_config
    try:
        transformer = wan_skeleton(info.model_config)
    except Exception as e:  # noqa: BLE001 (diffusers' constructor: any failure means the config builds no model)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(p, f"model_config does not build a {info.model_class}: {msg}") from None
    names = [e["name"] for e in info.layers]
    selected = quantizable_linears(transformer, cfg)
    if selected != names:
        missing = sorted(set(selected) - set(names))
        unknown = sorted(set(names) - set(selected))
        raise CheckpointError(
            p, f"quantized layers do not match the model and config (missing {missing[:3]}, unknown {unknown[:3]})"
        )
    for entry in info.layers:
        lin = transformer.get_submodule(entry["name"])
        if (lin.in_features, lin.out_features) != (entry["in_features"], entry["out_features"]):
            raise CheckpointError(p, f"layer '{entry['name']}' shape does not match model_config")
        if (lin.bias is not None) != entry["bias"]:
            raise CheckpointError(p, f"layer '{entry['name']}' bias flag is {entry['bias']}, the model says otherwise")
    quant_prefixes = tuple(f"{n}." for n in names)
    sd = {k: tuple(t.shape) for k, t in transformer.state_dict().items() if not k.startswith(quant_prefixes)}
    float_keys = float_tensor_keys(info, tensors)
    missing = [k for k in sd if k not in set(float_keys)]
    unknown = sorted(set(float_keys) - set(sd))
    if missing:
        raise CheckpointError(p, f"tensor '{missing[0]}' is missing ({len(missing)} float tensors missing)")
    if unknown:
        raise CheckpointError(p, f"unknown tensor '{unknown[0]}' ({len(unknown)} tensors the model does not have)")
    shape_of = getattr(tensors, "shape", None)
    for key in float_keys:
        shape = shape_of(key) if shape_of is not None else tuple(tensors[key].shape)
        if tuple(shape) != sd[key]:
            raise CheckpointError(p, f"tensor '{key}' has shape {tuple(shape)}, expected {sd[key]}")
    ctx = QuantContext()
    # The file's pages stay mapped (and in RSS) until released: unmap every so often, or a
    # load would hold the whole file on top of the model built from it.
    release = getattr(tensors, "release", None)
    mapped = 0

    def read_some(nbytes: int) -> None:
        nonlocal mapped
        mapped += nbytes
        if mapped >= _RELEASE_BYTES:
            if release is not None:
                release()
            trim_heap()
            mapped = 0

    with torch.no_grad():
        for entry in info.layers:
            parts = read_layer_tensors(p, info, tensors, entry)
            layer = _materialise_layer(p, entry["name"], parts, cfg, ctx, latent_weights)
            transformer.set_submodule(entry["name"], layer)
            read_some(sum(t.numel() * t.element_size() for k, t in parts.items() if k != "codes"))
            del parts
        for key in float_keys:
            t = read_float_tensor(p, tensors, key)
            assign_tensor(transformer, key, t)
            read_some(t.numel() * t.element_size())
        if release is not None:
            release()
        trim_heap()
    left = meta_tensor_names(transformer)
    if left:
        raise CheckpointError(p, f"tensor '{left[0]}' was never loaded ({len(left)} tensors)")
    return QuantizedWan(transformer, cfg, ctx).eval()


def load_quantized_model(path: str | Path, latent_weights: bool = False) -> tuple[QuantizedWan, CheckpointInfo]:
    """Read, validate and build a quantized checkpoint, streaming. Raises :class:`CheckpointError`.

    Header checks first (no tensor read), then each tensor is read once from the file while the
    model is materialised on a meta skeleton; peak memory is the built model plus one layer.

    The model's quantized linears hold the file's packed codes (:class:`PackedQuantLinear`, for
    inference and export: about the checkpoint's size in memory, each weight dequantized per
    forward). ``latent_weights=True`` gives ``QuantLinear`` s with a float32 latent weight each
    (8x the packed INT4 size), for training from a checkpoint; both compute the same bits.
    """
    info, tensors = read_info(path, check_values=False)
    return build_model(info, tensors, latent_weights), info


def describe(info: CheckpointInfo) -> str:
    n = len(info.layers)
    params = sum(e["in_features"] * e["out_features"] for e in info.layers)
    return f"{info.model_class} {info.quant_config.name}, {n} quantized linears ({params / 1e6:.2f}M weights)"
