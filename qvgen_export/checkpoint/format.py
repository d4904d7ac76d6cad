"""The quantized checkpoint: one self-describing safetensors file (spec: docs/checkpoint-format.md).

Reading never executes code from the file: the header is JSON, tensors are raw bytes, and the
model is built from a whitelisted class with the stored diffusers config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.functional import weight_dequant
from qvgen_export.quant.modules import QuantizedWan, QuantLinear, quantizable_linears
from qvgen_export.quant.packing import pack_codes, packed_shape, unpack_codes
from qvgen_export.utils.atomic import atomic_file, ensure_writable_dir

FORMAT_NAME = "qvgen-export/quantized-checkpoint"
FORMAT_VERSION = 1
SUPPORTED_MODEL_CLASSES = ("WanTransformer3DModel",)

# Per quantized layer NAME the file holds these tensors (bias under the float model's own name).
LAYER_TENSORS = ("qweight", "w_scale", "w_zero", "clip_lower", "clip_upper")


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


def save_checkpoint(model: QuantizedWan, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a quantized checkpoint (atomically).

    ``extra`` is free-form JSON (e.g. how it was trained) stored under the ``extra`` key.
    """
    from safetensors.torch import save_file

    from qvgen_export import __version__
    from qvgen_export.models.wan import model_config_dict

    path = Path(path)
    ensure_writable_dir(path)
    cls = type(model.transformer).__name__
    if cls not in SUPPORTED_MODEL_CLASSES:
        raise ValueError(f"unsupported model class {cls}; expected one of {SUPPORTED_MODEL_CLASSES}")
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "producer": f"qvgen-export {__version__}",
        "model_class": cls,
        "model_config": json.dumps(model_config_dict(model.transformer), sort_keys=True),
        "quant_config": model.qconfig.to_json(),
        "layers": json.dumps([_layer_entry(n, m) for n, m in model.quant_linears().items()]),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    tensors = checkpoint_tensors(model)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


# --------------------------------------------------------------------------------------------
# Reading and validation


def _json(path: Path, meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        raise CheckpointError(path, f"metadata key '{key}' is missing")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"metadata '{key}' is not valid JSON ({e.msg})") from None


def read_info(path: str | Path) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """Read and validate the header and tensors of ``path`` (no model built yet)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "file not found")
    if not p.is_file():
        raise CheckpointError(p, "not a file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(p))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(p, f"not a readable safetensors file ({first})") from None
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(p, f"not a qvgen-export checkpoint (metadata format={meta.get('format')!r})")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(p, f"unsupported format version {version!r} (this tool reads version {FORMAT_VERSION})")
    model_class = meta.get("model_class")
    if model_class not in SUPPORTED_MODEL_CLASSES:
        raise CheckpointError(p, f"unsupported model class {model_class!r}")
    model_config = _json(p, meta, "model_config")
    try:
        qcfg = QuantConfig.from_dict(_json(p, meta, "quant_config"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(p, f"invalid quantization config: {e}") from None
    layers = _json(p, meta, "layers")
    extra = _json(p, meta, "extra") if "extra" in meta else {}
    if not isinstance(model_config, dict) or not isinstance(layers, list) or not layers:
        raise CheckpointError(p, "metadata 'model_config' must be an object and 'layers' a non-empty list")
    info = CheckpointInfo(str(p), model_class, model_config, qcfg, layers, extra)
    _validate_tensors(p, info, tensors)
    return info, tensors


def _check_finite(p: Path, key: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise CheckpointError(p, f"tensor '{key}' contains NaN or Inf")


def _validate_tensors(p: Path, info: CheckpointInfo, tensors: dict[str, torch.Tensor]) -> None:
    cfg = info.quant_config
    for key, t in tensors.items():
        _check_finite(p, key, t)
    for entry in info.layers:
        try:
            name, k, n = entry["name"], int(entry["in_features"]), int(entry["out_features"])
            has_bias, groups = bool(entry["bias"]), int(entry["groups"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(p, f"malformed layer entry {entry!r}") from None
        if not cfg.selects(name):
            raise CheckpointError(p, f"layer '{name}' is quantized but the quantization config does not select it")
        try:
            expected_groups = cfg.weight_groups(k)
        except ValueError as e:
            raise CheckpointError(p, f"layer '{name}': {e}") from None
        if groups != expected_groups:
            raise CheckpointError(p, f"layer '{name}' has {groups} weight groups, config implies {expected_groups}")
        expect = {
            "qweight": (packed_shape(n, k, cfg.weight_bits), torch.uint8),
            "w_scale": ((n, groups), torch.float32),
            "w_zero": ((n, groups), torch.float32),
            "clip_lower": ((cfg.timestep_groups,), torch.float32),
            "clip_upper": ((cfg.timestep_groups,), torch.float32),
        }
        if has_bias:
            expect["bias"] = ((n,), torch.float32)
        for suffix, (shape, dtype) in expect.items():
            key = f"{name}.{suffix}"
            if key not in tensors:
                raise CheckpointError(p, f"tensor '{key}' is missing")
            t = tensors[key]
            if tuple(t.shape) != tuple(shape):
                raise CheckpointError(p, f"tensor '{key}' has shape {tuple(t.shape)}, expected {tuple(shape)}")
            if t.dtype != dtype:
                raise CheckpointError(p, f"tensor '{key}' has dtype {t.dtype}, expected {dtype}")
        if bool((tensors[f"{name}.w_scale"] <= 0).any()):
            raise CheckpointError(p, f"tensor '{name}.w_scale' has non-positive scales")
        codes = unpack_codes(tensors[f"{name}.qweight"], k, cfg.weight_bits)
        if int(codes.max()) > cfg.weight_qmax:
            raise CheckpointError(
                p, f"tensor '{name}.qweight' holds codes above {cfg.weight_qmax} for {cfg.weight_bits}-bit weights"
            )


def build_model(info: CheckpointInfo, tensors: dict[str, torch.Tensor]) -> QuantizedWan:
    """Build the fake-quant model described by a validated checkpoint."""
    from qvgen_export.models.wan import build_wan

    p = Path(info.path)
    cfg = info.quant_config
    try:
        transformer = build_wan(info.model_config, seed=None)
    except (TypeError, ValueError) as e:
        raise CheckpointError(p, f"model_config does not build a {info.model_class}: {e}") from None
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
    model = QuantizedWan.from_float(transformer, cfg, init=False)
    layers = model.quant_linears()
    float_state: dict[str, torch.Tensor] = {}
    quant_prefixes = tuple(f"{n}." for n in layers)
    for key, t in tensors.items():
        if not key.startswith(quant_prefixes):
            float_state[key] = t
    with torch.no_grad():
        for name, layer in layers.items():
            s, z = tensors[f"{name}.w_scale"], tensors[f"{name}.w_zero"]
            codes = unpack_codes(tensors[f"{name}.qweight"], layer.in_features, cfg.weight_bits).float()
            layer.w_scale.copy_(s)
            layer.w_zero.copy_(z)
            # The latent weight becomes the dequantized one; re-quantizing it returns the codes.
            layer.weight.copy_(weight_dequant(codes, s, z))
            layer.clip_lower.copy_(tensors[f"{name}.clip_lower"])
            layer.clip_upper.copy_(tensors[f"{name}.clip_upper"])
            if layer.bias is not None:
                layer.bias.copy_(tensors[f"{name}.bias"])
            if not torch.equal(layer.codes(), codes.to(torch.uint8)):
                raise CheckpointError(p, f"layer '{name}': scales and codes are inconsistent (codes do not round-trip)")
    expected = {k for k in transformer.state_dict() if not k.startswith(quant_prefixes)}
    missing = sorted(expected - set(float_state))
    unknown = sorted(set(float_state) - expected)
    if missing:
        raise CheckpointError(p, f"tensor '{missing[0]}' is missing ({len(missing)} float tensors missing)")
    if unknown:
        raise CheckpointError(p, f"unknown tensor '{unknown[0]}' ({len(unknown)} tensors the model does not have)")
    sd = transformer.state_dict()
    for key, t in float_state.items():
        if tuple(sd[key].shape) != tuple(t.shape):
            raise CheckpointError(p, f"tensor '{key}' has shape {tuple(t.shape)}, expected {tuple(sd[key].shape)}")
    transformer.load_state_dict(float_state, strict=False)
    return model.eval()


def load_quantized_model(path: str | Path) -> tuple[QuantizedWan, CheckpointInfo]:
    """Read, validate and build a quantized checkpoint. Raises :class:`CheckpointError`."""
    info, tensors = read_info(path)
    return build_model(info, tensors), info


def describe(info: CheckpointInfo) -> str:
    n = len(info.layers)
    params = sum(e["in_features"] * e["out_features"] for e in info.layers)
    return f"{info.model_class} {info.quant_config.name}, {n} quantized linears ({params / 1e6:.2f}M weights)"
