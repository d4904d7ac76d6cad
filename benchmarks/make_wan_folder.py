"""Write a seeded random-weight diffusers folder with a real Wan 2.1 transformer config.

Usage:
    python benchmarks/make_wan_folder.py --config 1.3b --blocks 2 --out artifacts/wan1.3b_2blk

The folder is what a real diffusers checkpoint looks like (config.json, bf16 safetensors shards,
``diffusion_pytorch_model.safetensors.index.json``) at reduced depth: shard 1 holds everything
outside the blocks, then one shard per ``--blocks-per-shard`` blocks. Tensors are generated and
written shard by shard, so memory stays at one shard whatever the depth.
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from typing import Any

import torch

# Wan 2.1 T2V transformer configs (diffusers' WanTransformer3DModel, config.json of the releases).
_COMMON: dict[str, Any] = {
    "_class_name": "WanTransformer3DModel",
    "added_kv_proj_dim": None,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "freq_dim": 256,
    "image_dim": None,
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}
WAN_CONFIGS: dict[str, dict[str, Any]] = {
    "1.3b": {**_COMMON, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},
    "14b": {**_COMMON, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40},
}


def _random(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    if key.endswith(".weight") and "norm" in key:
        return torch.ones(shape)
    std = 0.02 if len(shape) > 1 else 0.01
    return torch.randn(shape, generator=g) * std


def write_wan_folder(
    config: dict[str, Any], out: Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16, blocks_per_shard: int = 1
) -> Path:
    from safetensors.torch import save_file

    from qvgen_export.models.wan import skeleton_shapes, wan_skeleton

    shapes = skeleton_shapes(wan_skeleton(config, from_config=True))
    groups: dict[str, list[str]] = {}
    for key in shapes:
        parts = key.split(".")
        unit = f"blocks{int(parts[1]) // blocks_per_shard}" if parts[0] == "blocks" else "rest"
        groups.setdefault(unit, []).append(key)
    order = ["rest"] + [u for u in groups if u != "rest"]
    out.mkdir(parents=True, exist_ok=False)
    weight_map: dict[str, str] = {}
    total = 0
    for i, unit in enumerate(order, 1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{len(order):05d}.safetensors"
        tensors = {k: _random(k, shapes[k], seed).to(dtype) for k in groups[unit]}
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps({**config, "_diffusers_version": "0.42.1"}, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(WAN_CONFIGS), default="1.3b")
    ap.add_argument("--blocks", type=int, default=None, help="transformer blocks (default: the real depth)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blocks-per-shard", type=int, default=1)
    args = ap.parse_args(argv)
    cfg = dict(WAN_CONFIGS[args.config])
    if args.blocks is not None:
        cfg["num_layers"] = args.blocks
    write_wan_folder(cfg, args.out, seed=args.seed, blocks_per_shard=args.blocks_per_shard)
    print(f"wrote {args.out} ({args.config} width, {cfg['num_layers']} blocks, bf16)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
