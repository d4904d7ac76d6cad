"""Helpers that forge checkpoints the way an editor or an attacker would (tests only).

``rewrite`` re-saves a checkpoint with edited tensors/metadata and, by default, fresh content
digests (an attacker who knows the format re-hashes, so the other checks must still catch the
edit); ``edit_header`` changes the raw safetensors header JSON and leaves every byte of data and
every digest as it was (a bit flip or a hand edit).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file

DIGEST_KEY = "tensor_sha256"
META_DIGEST_KEY = "metadata_sha256"


def rehash_meta(meta: dict[str, str]) -> None:
    """Recompute the metadata digest after an edit (what an informed attacker does); a no-op for
    code that predates the digest."""
    try:
        from qvgen_export.checkpoint.format import metadata_digest
    except ImportError:
        return
    meta[META_DIGEST_KEY] = metadata_digest(meta)


def read_raw(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_raw(path: Path, header: dict[str, Any], data: bytes) -> Path:
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    Path(path).write_bytes(len(h).to_bytes(8, "little") + h + data)
    return Path(path)


def edit_header(src: Path, dst: Path, fn: Callable[[dict[str, Any]], Any]) -> Path:
    header, data = read_raw(src)
    fn(header)
    return write_raw(dst, header, data)


def edit_meta_json(src: Path, dst: Path, key: str, fn: Callable[[Any], Any], rehash: bool = True) -> Path:
    """Apply ``fn`` to the parsed JSON metadata value ``key`` (fn may mutate and return None)."""

    def go(h: dict[str, Any]) -> None:
        v = json.loads(h["__metadata__"][key])
        out = fn(v)
        h["__metadata__"][key] = json.dumps(v if out is None else out)
        if rehash:
            rehash_meta(h["__metadata__"])

    return edit_header(src, dst, go)


def rewrite(
    src: Path,
    dst: Path,
    tensors_fn: Callable[[dict[str, Any]], Any] | None = None,
    meta_fn: Callable[[dict[str, str]], Any] | None = None,
    rehash: bool = True,
) -> Path:
    try:
        from qvgen_export.checkpoint.format import DIGEST_KEY as _current  # noqa: F401
        from qvgen_export.checkpoint.stream_writer import StreamingSafetensorsWriter
    except ImportError:  # code from before content digests (the corpus' "before" run)
        return _rewrite_plain(src, dst, tensors_fn, meta_fn)

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
    tensors = load_file(str(src))
    if tensors_fn:
        tensors_fn(tensors)
    if meta_fn:
        meta_fn(meta)
    old = meta.pop(DIGEST_KEY, None)
    rehash_meta(meta)
    specs = {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    w = StreamingSafetensorsWriter(dst, specs, meta, digest_key=DIGEST_KEY if rehash else None)
    for k, t in tensors.items():
        w.write(k, t.contiguous())
    w.close()
    if not rehash and old is not None:
        edit_header(dst, dst, lambda h: h["__metadata__"].__setitem__(DIGEST_KEY, old))
    return dst


def _rewrite_plain(src: Path, dst: Path, tensors_fn: Any, meta_fn: Any) -> Path:
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
    tensors = load_file(str(src))
    if tensors_fn:
        tensors_fn(tensors)
    if meta_fn:
        meta_fn(meta)
    save_file(tensors, str(dst), metadata=meta)
    return Path(dst)
