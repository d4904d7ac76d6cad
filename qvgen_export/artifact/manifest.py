"""``manifest.json``: what an exported folder holds, how it was made, and the hash of every file."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from qvgen_export.utils.json_files import read_json_object

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
    # Written inside the export's temp folder (atomic_dir), so a plain write is enough.
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


_HEX = frozenset("0123456789abcdef")
# Fields every reader of a folder relies on; a manifest without them is not a complete export.
REQUIRED_FIELDS = {"model_file": str, "model_config": dict, "target": str, "files": dict}


def _is_sha256(v: object) -> bool:
    return isinstance(v, str) and len(v) == 64 and set(v) <= _HEX


def verify_manifest(folder: str | Path) -> dict[str, Any]:
    """Load ``manifest.json`` and check every listed file's size and hash; ``ValueError`` naming the file.

    The ``files`` table is required and must list the model file (and its external data): a
    manifest without it would otherwise turn the integrity check off.
    """
    folder = Path(folder)
    mpath = folder / MANIFEST_FILE
    if not mpath.is_file():
        raise ValueError(f"{folder}: no {MANIFEST_FILE} (not a complete qvgen-export folder)")
    doc = read_json_object(mpath, "a manifest")
    for key, kind in REQUIRED_FIELDS.items():
        if not isinstance(doc.get(key), kind):
            what = "missing" if key not in doc else f"a {type(doc[key]).__name__}, expected a {kind.__name__}"
            raise ValueError(f"{mpath}: '{key}' is {what} (not a complete qvgen-export folder)")  # noqa: TRY004 (bad file content, not a caller bug)
    files = doc["files"]
    needed = [doc["model_file"]] + ([doc["external_data"]] if doc.get("external_data") else [])
    for rel in needed:
        if not isinstance(rel, str) or rel not in files:
            raise ValueError(f"{mpath}: '{rel}' has no SHA-256 in the 'files' table (cannot check its integrity)")
    for rel, entry in files.items():
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts:
            raise ValueError(f"{mpath}: file entry {rel!r} points outside the folder")
        if not isinstance(entry, dict) or not _is_sha256(entry.get("sha256")):
            raise ValueError(f"{mpath}: file entry {rel!r} has no valid SHA-256")
        f = folder / rel
        if not f.is_file():
            raise ValueError(f"{f}: listed in the manifest but missing")
        size = entry.get("bytes")
        if isinstance(size, int) and f.stat().st_size != size:
            # No need to hash: a different size cannot have the recorded digest.
            raise ValueError(
                f"{f}: SHA-256 does not match the manifest ({f.stat().st_size} bytes, expected {size}; "
                "file changed or truncated)"
            )
        try:
            digest = sha256_file(f)
        except OSError as e:
            raise ValueError(f"{f}: cannot be read ({e.strerror or e})") from None
        if digest != entry["sha256"]:
            raise ValueError(f"{f}: SHA-256 does not match the manifest (file changed or corrupted)")
    return doc
