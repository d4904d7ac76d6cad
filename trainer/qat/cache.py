"""The latent/embedding cache for real-model QAT: safetensors shards plus a JSON index.

Layout of a cache folder::

    index.json                      # format, version, shapes, dtype, shards, encoders used
    null.safetensors                # {"text": [L, D]}: the empty prompt's embedding (caption dropout)
    shard-00000.safetensors         # {"latents": [n, C, F, H, W], "text": [n, L, D]}
    shard-00001.safetensors ...

``index.json``::

    {"format": "qvgen-latent-cache", "format_version": 1,
     "num_samples": N, "latent_shape": [C, F, H, W], "text_shape": [L, D], "dtype": "bfloat16",
     "shards": [{"file": "shard-00000.safetensors", "count": n}, ...],
     "captions": ["...", ...],           # one per sample, informational
     "encoders": {...}}                   # free-form: which VAE / text encoder produced it

Latents are stored normalised the way Wan's pipeline feeds the transformer
(``(z - latents_mean) / latents_std`` per channel), text embeddings zero-padded to ``L`` tokens
as ``WanPipeline`` does. Reading never executes code from the folder.

``python -m trainer.qat.cache encode --videos DIR --wan DIR --out DIR`` fills a cache from a
folder of videos with same-stem ``.txt`` captions, with the Wan VAE (``AutoencoderKLWan``) and
UMT5 text encoder loaded from a local diffusers Wan folder. It is deliberately thin and is not
tested here (no weights are available offline); the format and the reader are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from qvgen_export.utils.json_files import JsonFileError, read_json_object

FORMAT = "qvgen-latent-cache"
FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CacheError(ValueError):
    """A cache folder that cannot be read; one line naming the folder and the problem."""


class CacheWriter:
    """Append samples; shards are written every ``shard_size`` samples; ``close()`` writes the index."""

    def __init__(
        self,
        out_dir: str | Path,
        null_text: torch.Tensor,
        shard_size: int = 256,
        dtype: str = "bfloat16",
        encoders: dict[str, Any] | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / "index.json").exists():
            raise FileExistsError(f"{self.dir}: already holds a cache (index.json)")
        self.dtype = dtype
        self.shard_size = shard_size
        self.encoders = dict(encoders or {})
        self.null_text = null_text.detach()
        self._lat: list[torch.Tensor] = []
        self._txt: list[torch.Tensor] = []
        self._captions: list[str] = []
        self._shards: list[dict[str, Any]] = []
        self._latent_shape: tuple[int, ...] | None = None
        self._text_shape = tuple(null_text.shape)

    def add(self, latent: torch.Tensor, text: torch.Tensor, caption: str = "") -> None:
        if self._latent_shape is None:
            self._latent_shape = tuple(latent.shape)
        if tuple(latent.shape) != self._latent_shape:
            raise ValueError(f"latent shape {tuple(latent.shape)} differs from the cache's {self._latent_shape}")
        if tuple(text.shape) != self._text_shape:
            raise ValueError(f"text embedding shape {tuple(text.shape)} differs from the cache's {self._text_shape}")
        self._lat.append(latent.detach().cpu())
        self._txt.append(text.detach().cpu())
        self._captions.append(caption)
        if len(self._lat) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._lat:
            return
        dt = _DTYPES[self.dtype]
        name = f"shard-{len(self._shards):05d}.safetensors"
        tensors = {"latents": torch.stack(self._lat).to(dt), "text": torch.stack(self._txt).to(dt)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(self.dir / name))
        self._shards.append({"file": name, "count": len(self._lat)})
        self._lat, self._txt = [], []

    def close(self) -> Path:
        from safetensors.torch import save_file

        self._flush()
        if not self._shards:
            raise ValueError("no samples were added to the cache")
        save_file({"text": self.null_text.to(_DTYPES[self.dtype]).contiguous()}, str(self.dir / "null.safetensors"))
        index = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "num_samples": sum(s["count"] for s in self._shards),
            "latent_shape": list(self._latent_shape or ()),
            "text_shape": list(self._text_shape),
            "dtype": self.dtype,
            "shards": self._shards,
            "captions": self._captions,
            "encoders": self.encoders,
        }
        # The index is written last: a folder without it is an unfinished cache.
        path = self.dir / "index.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(index, indent=1) + "\n")
        tmp.replace(path)
        return path


class LatentCache:
    """Random access to a cache folder: ``cache[i] -> (latent [C, F, H, W], text [L, D])``."""

    def __init__(self, path: str | Path) -> None:
        self.dir = Path(path)
        ip = self.dir / "index.json"
        if not ip.is_file():
            raise CacheError(f"{self.dir}: not a latent cache (no index.json)")
        try:
            index = read_json_object(ip, f"a {FORMAT} index")
        except JsonFileError as e:
            raise CacheError(str(e)) from None
        if index.get("format") != FORMAT:
            raise CacheError(f"{ip}: not a {FORMAT} index")
        if index.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"{ip}: unsupported format_version {index.get('format_version')!r}")
        try:
            self.latent_shape = tuple(int(v) for v in index["latent_shape"])
            self.text_shape = tuple(int(v) for v in index["text_shape"])
            self.shards = [(str(s["file"]), int(s["count"])) for s in index["shards"]]
            self.num_samples = int(index["num_samples"])
        except (KeyError, TypeError, ValueError):
            raise CacheError(f"{ip}: missing or malformed shapes/shards") from None
        if sum(c for _, c in self.shards) != self.num_samples or self.num_samples < 1:
            raise CacheError(f"{ip}: shard counts do not add up to num_samples={self.num_samples}")
        for f, _ in self.shards:
            if Path(f).name != f or not (self.dir / f).is_file():
                raise CacheError(f"{self.dir}: shard {f!r} is missing or not a plain file name")
        self.index = index
        self._starts: list[int] = []
        total = 0
        for _, c in self.shards:
            self._starts.append(total)
            total += c
        self._loaded: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.num_samples

    def _shard(self, k: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        if k not in self._loaded:
            if len(self._loaded) >= 4:  # a few shards resident; real caches are larger than memory
                self._loaded.pop(next(iter(self._loaded)))
            f, count = self.shards[k]
            t = load_file(str(self.dir / f))
            if set(t) != {"latents", "text"}:
                raise CacheError(f"{self.dir / f}: expected tensors 'latents' and 'text', got {sorted(t)}")
            if tuple(t["latents"].shape) != (count, *self.latent_shape) or tuple(t["text"].shape) != (
                count,
                *self.text_shape,
            ):
                raise CacheError(f"{self.dir / f}: tensor shapes do not match index.json")
            self._loaded[k] = t
        return self._loaded[k]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range 0..{self.num_samples - 1}")
        import bisect

        k = bisect.bisect_right(self._starts, i) - 1
        t = self._shard(k)
        j = i - self._starts[k]
        return t["latents"][j], t["text"][j]

    def null_embedding(self) -> torch.Tensor:
        from safetensors.torch import load_file

        t = load_file(str(self.dir / "null.safetensors"))
        if "text" not in t or tuple(t["text"].shape) != self.text_shape:
            raise CacheError(f"{self.dir}/null.safetensors: expected 'text' of shape {self.text_shape}")
        return t["text"]


# --------------------------------------------------------------------------------------------
# The encode command (thin; needs a local Wan diffusers folder, untested without weights)

VIDEO_EXTS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")


def encode_folder(
    videos: Path,
    wan: Path,
    out: Path,
    frames: int = 49,
    height: int = 480,
    width: int = 832,
    max_text_len: int = 512,
    device: str = "cuda",
    shard_size: int = 64,
) -> Path:  # pragma: no cover - needs real weights
    import imageio.v3 as iio
    import numpy as np
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    vae = AutoencoderKLWan.from_pretrained(wan / "vae", torch_dtype=torch.float32, local_files_only=True).to(device)
    tok = AutoTokenizer.from_pretrained(wan / "tokenizer", local_files_only=True)
    te = UMT5EncoderModel.from_pretrained(wan / "text_encoder", torch_dtype=torch.bfloat16, local_files_only=True)
    te = te.to(device).eval()
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def embed(text: str) -> torch.Tensor:
        # As WanPipeline._get_t5_prompt_embeds: real tokens kept, the rest zero-padded.
        ids = tok([text], padding="max_length", max_length=max_text_len, truncation=True, return_tensors="pt")
        mask = ids.attention_mask.to(device)
        h = te(ids.input_ids.to(device), mask).last_hidden_state[0]
        n = int(mask.sum())
        h[n:] = 0
        return h.float().cpu()

    writer = CacheWriter(out, embed(""), shard_size=shard_size, encoders={"wan": str(wan), "frames": frames})
    files = sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_EXTS)
    if not files:
        raise FileNotFoundError(f"{videos}: no video files ({', '.join(VIDEO_EXTS)})")
    for f in files:
        cap_file = f.with_suffix(".txt")
        caption = cap_file.read_text().strip() if cap_file.is_file() else ""
        arr = iio.imread(f)  # [T, H, W, 3] uint8
        if arr.shape[0] < frames:
            print(f"skip {f.name}: {arr.shape[0]} frames < {frames}", file=sys.stderr)
            continue
        x = torch.from_numpy(np.ascontiguousarray(arr[:frames])).float().div(127.5).sub(1.0)  # [T, H, W, 3]
        x = x.permute(3, 0, 1, 2)[None].to(device)  # [1, 3, T, H, W]
        x = torch.nn.functional.interpolate(x[0].transpose(0, 1), size=(height, width), mode="bilinear")
        x = x.transpose(0, 1)[None]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        writer.add(((z - mean) / std)[0].cpu(), embed(caption), caption)
    return writer.close()


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin wrapper
    ap = argparse.ArgumentParser(prog="python -m trainer.qat.cache", description="Fill a QAT latent cache.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    enc = sub.add_parser("encode", help="encode a local video folder with a local Wan VAE and UMT5")
    enc.add_argument("--videos", required=True, type=Path)
    enc.add_argument("--wan", required=True, type=Path, help="local diffusers Wan pipeline folder")
    enc.add_argument("--out", required=True, type=Path)
    enc.add_argument("--frames", type=int, default=49)
    enc.add_argument("--height", type=int, default=480)
    enc.add_argument("--width", type=int, default=832)
    enc.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    for p in (args.videos, args.wan):
        if not p.is_dir():
            print(f"error: {p}: not a folder", file=sys.stderr)
            return 2
    try:
        path = encode_folder(args.videos, args.wan, args.out, args.frames, args.height, args.width, device=args.device)
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
