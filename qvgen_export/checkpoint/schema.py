"""Types and ranges of a checkpoint's metadata, checked before anything is built or allocated.

Each check raises ``SchemaError(problem)``; the reader turns it into a one-line
``CheckpointError`` naming the file. JSON gives ``true`` for ``1`` in no case we accept: booleans
are never integers here, integers never booleans, and a float field takes an int or a float.
Bounds are generous (real Wan 2.1 14B sits far inside them) but finite, so a hostile config fails
here instead of allocating gigabytes, hanging in a constructor or raising from deep in diffusers.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Parameter ceiling for a model_config, computed from the config alone (Wan 2.1 14B is ~14e9).
MAX_PARAMETERS = 64_000_000_000
MAX_DIM = 1 << 17  # any single width (heads * head_dim, ffn, text_dim, in_features ...)
MAX_LAYERS = 1024
MAX_ROPE_ELEMENTS = 1 << 26  # rope tables are real (not meta) buffers: rope_max_seq_len * head_dim
MAX_PATTERNS = 1024
MAX_LAYER_ENTRIES = 1 << 16
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


class SchemaError(ValueError):
    """One metadata value of the wrong type or out of range."""


def _int(where: str, v: Any, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise SchemaError(f"{where} must be an integer, got {type(v).__name__} {_short(v)}")
    if not lo <= v <= hi:
        raise SchemaError(f"{where} must be in {lo}..{hi}, got {v}")
    return v


def _opt_int(where: str, v: Any, lo: int, hi: int) -> int | None:
    return None if v is None else _int(where, v, lo, hi)


def _float(where: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise SchemaError(f"{where} must be a finite number, got {type(v).__name__} {_short(v)}")
    if v < lo or v > hi or (lo_open and v == lo):
        raise SchemaError(f"{where} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return float(v)


def _bool(where: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise SchemaError(f"{where} must be true or false, got {type(v).__name__} {_short(v)}")
    return v


def _str_list(where: str, v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) and 0 < len(x) <= 512 for x in v):
        raise SchemaError(f"{where} must be a list of non-empty strings, got {_short(v)}")
    if len(v) > MAX_PATTERNS:
        raise SchemaError(f"{where} has {len(v)} entries (at most {MAX_PATTERNS})")
    return v


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _object(where: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise SchemaError(f"metadata '{where}' must be a JSON object, got {type(v).__name__}")
    return v


# -- quant_config ------------------------------------------------------------------------------

QUANT_FIELDS = (
    "weight_bits",
    "act_bits",
    "weight_granularity",
    "group_size",
    "weight_symmetric",
    "timestep_groups",
    "num_train_timesteps",
    "act_clip_base",
    "act_clip_init",
    "include",
    "exclude",
)


def check_quant_config(d: Any) -> dict[str, Any]:
    """Types of every quant_config field (ranges that depend on each other: ``QuantConfig``)."""
    d = _object("quant_config", d)
    unknown = sorted(set(d) - set(QUANT_FIELDS))
    if unknown:
        raise SchemaError(f"quant_config has unknown keys {unknown[:5]}")
    missing = [k for k in QUANT_FIELDS if k not in d]
    if missing:
        raise SchemaError(f"quant_config lacks {missing[:5]}")
    _int("quant_config.weight_bits", d["weight_bits"], 2, 8)
    _int("quant_config.act_bits", d["act_bits"], 2, 8)
    if d["weight_granularity"] not in ("per_channel", "per_group"):
        raise SchemaError(
            f"quant_config.weight_granularity must be 'per_channel' or 'per_group', got {_short(d['weight_granularity'])}"
        )
    _opt_int("quant_config.group_size", d["group_size"], 2, MAX_DIM)
    _bool("quant_config.weight_symmetric", d["weight_symmetric"])
    _int("quant_config.timestep_groups", d["timestep_groups"], 1, 4096)
    _int("quant_config.num_train_timesteps", d["num_train_timesteps"], 1, 1_000_000)
    _float("quant_config.act_clip_base", d["act_clip_base"], 0.0, 1.0, lo_open=True)
    _float("quant_config.act_clip_init", d["act_clip_init"], 0.0, 1.0, lo_open=True)
    _str_list("quant_config.include", d["include"])
    _str_list("quant_config.exclude", d["exclude"])
    return d


# -- layers ------------------------------------------------------------------------------------

LAYER_FIELDS = ("name", "in_features", "out_features", "bias", "groups")


def check_layers(v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not v:
        raise SchemaError("metadata 'layers' must be a non-empty JSON list")
    if len(v) > MAX_LAYER_ENTRIES:
        raise SchemaError(f"metadata 'layers' has {len(v)} entries (at most {MAX_LAYER_ENTRIES})")
    seen: set[str] = set()
    for i, e in enumerate(v):
        if not isinstance(e, dict) or sorted(e) != sorted(LAYER_FIELDS):
            raise SchemaError(f"layer entry {i} must be an object with exactly the keys {list(LAYER_FIELDS)}")
        name = e["name"]
        if not isinstance(name, str) or len(name) > 256 or not _NAME.match(name):
            raise SchemaError(f"layer entry {i} has an invalid name {_short(name)}")
        if name in seen:
            raise SchemaError(f"layer '{name}' is listed twice")
        seen.add(name)
        _int(f"layer '{name}' in_features", e["in_features"], 1, MAX_DIM)
        _int(f"layer '{name}' out_features", e["out_features"], 1, MAX_DIM)
        _bool(f"layer '{name}' bias", e["bias"])
        _int(f"layer '{name}' groups", e["groups"], 1, MAX_DIM)
    return v


# -- model_config (WanTransformer3DModel) ------------------------------------------------------

_MODEL_INTS = {
    "num_attention_heads": (1, 1024),
    "attention_head_dim": (6, 1024),  # rope splits the head dim in three parts of 2 * (d // 6)
    "in_channels": (1, 4096),
    "out_channels": (1, 4096),
    "text_dim": (1, MAX_DIM),
    "freq_dim": (2, MAX_DIM),
    "ffn_dim": (1, MAX_DIM),
    "num_layers": (1, MAX_LAYERS),
    "rope_max_seq_len": (1, 1 << 20),
}
_MODEL_OPT_INTS = {"image_dim": (1, MAX_DIM), "added_kv_proj_dim": (1, MAX_DIM), "pos_embed_seq_len": (1, 1 << 20)}
_QK_NORMS = (None, "rms_norm_across_heads", "rms_norm", "layer_norm", "layer_norm_across_heads")


def estimate_parameters(c: dict[str, Any]) -> int:
    """A lower bound on the parameter count of the Wan transformer ``c`` describes (weights of its
    linears and patch convolution; biases and norms left out), from the numbers alone."""
    inner = c["num_attention_heads"] * c["attention_head_dim"]
    patch = math.prod(c["patch_size"])
    per_block = 8 * inner * inner + 2 * inner * c["ffn_dim"]
    if c.get("added_kv_proj_dim"):
        per_block += 2 * c["added_kv_proj_dim"] * inner
    rest = inner * (c["freq_dim"] + c["text_dim"] + 8 * inner) + patch * inner * (c["in_channels"] + c["out_channels"])
    if c.get("image_dim"):
        rest += c["image_dim"] * inner
    return int(c["num_layers"] * per_block + rest)


def check_model_config(v: Any) -> dict[str, Any]:
    """Types, ranges and a parameter ceiling of a ``WanTransformer3DModel`` config."""
    c = _object("model_config", v)
    known = {"patch_size", "cross_attn_norm", "qk_norm", "eps", *_MODEL_INTS, *_MODEL_OPT_INTS}
    unknown = sorted(set(c) - known)
    if unknown:
        raise SchemaError(f"model_config has unknown keys {unknown[:5]}")
    missing = [k for k in ("patch_size", *_MODEL_INTS) if k not in c]
    if missing:
        raise SchemaError(f"model_config lacks {missing[:5]}")
    ps = c["patch_size"]
    if not isinstance(ps, list) or len(ps) != 3:
        raise SchemaError(f"model_config.patch_size must be a list of 3 integers, got {_short(ps)}")
    for i, d in enumerate(ps):
        _int(f"model_config.patch_size[{i}]", d, 1, 64)
    for k, (lo, hi) in _MODEL_INTS.items():
        _int(f"model_config.{k}", c[k], lo, hi)
    for k, (lo, hi) in _MODEL_OPT_INTS.items():
        _opt_int(f"model_config.{k}", c.get(k), lo, hi)
    if "cross_attn_norm" in c:
        _bool("model_config.cross_attn_norm", c["cross_attn_norm"])
    if c.get("qk_norm") not in _QK_NORMS:
        raise SchemaError(f"model_config.qk_norm must be one of {list(_QK_NORMS)}, got {_short(c.get('qk_norm'))}")
    if "eps" in c:
        _float("model_config.eps", c["eps"], 0.0, 1.0, lo_open=True)
    inner = c["num_attention_heads"] * c["attention_head_dim"]
    if inner > MAX_DIM:
        raise SchemaError(f"model_config: num_attention_heads * attention_head_dim = {inner} (at most {MAX_DIM})")
    if c["rope_max_seq_len"] * c["attention_head_dim"] > MAX_ROPE_ELEMENTS:
        raise SchemaError("model_config: rope_max_seq_len * attention_head_dim is too large for the rotary tables")
    n = estimate_parameters(c)
    if n > MAX_PARAMETERS:
        raise SchemaError(f"model_config describes about {n:.3g} parameters (ceiling {MAX_PARAMETERS:.3g})")
    return c
