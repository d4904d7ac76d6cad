"""``manifest.json``: what an exported folder holds, how it was made, and the hash of every file."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
_TOOLS = ("qvgen-export", "torch", "diffusers", "onnx", "onnxscript", "onnx-ir", "safetensors")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_manifest(folder: Path, fields: dict[str, Any]) -> Path:
    """Write ``folder/manifest.json`` with ``fields`` plus versions and hashes of all other files."""
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        files[f.relative_to(folder).as_posix()] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    doc = {"manifest_version": MANIFEST_VERSION, **fields, "tools": tool_versions(), "files": files}
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def verify_manifest(folder: str | Path) -> dict[str, Any]:
    """Load ``manifest.json`` and check every listed file's hash; raises ``ValueError`` naming the file."""
    folder = Path(folder)
    mpath = folder / MANIFEST_FILE
    if not mpath.is_file():
        raise ValueError(f"{folder}: no {MANIFEST_FILE} (not a complete qvgen-export folder)")
    try:
        doc = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{mpath}: not valid JSON ({e.msg})") from None
    for rel, entry in doc.get("files", {}).items():
        f = folder / rel
        if not f.is_file():
            raise ValueError(f"{f}: listed in the manifest but missing")
        if sha256_file(f) != entry["sha256"]:
            raise ValueError(f"{f}: SHA-256 does not match the manifest (file changed or corrupted)")
    return doc
