"""TensorRT engine builder for a ``trt`` folder (``tensorrt`` and Polygraphy's TensorRT loaders, lazily).

Strongly typed network from the plugin-graph ONNX (the graph's own float32/int32 types decide
precision; the plugin decides INT4), the W4A4 plugin library loaded so the ONNX parser maps each
``QvgenW4A4Linear`` node to it, one optimization profile from the I/O contract
(``artifact/contract.py``; flags override it), an optional timing cache. Writes ``model.plan``
and ``engine.json`` (TensorRT version, GPU name and compute capability, plugin library sha256,
profile) into the folder; the TensorRT runtime backend refuses an engine whose record does not
match the machine it runs on.

Nothing here runs on a machine without TensorRT and a GPU; :func:`check_engine_prerequisites`
says what is missing in one line (``EngineUnavailableError``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from qvgen_export.artifact.contract import ShapeProfile, parse_profile
from qvgen_export.artifact.manifest import MANIFEST_FILE, sha256_file, verify_manifest
from qvgen_export.targets.plugin_contract import load_contract
from qvgen_export.targets.registry import EngineUnavailableError
from qvgen_export.utils.atomic import atomic_file
from qvgen_export.utils.json_files import read_json_object

ENGINE_FILE = "model.plan"
ENGINE_MANIFEST = "engine.json"
PLUGIN_LIBRARY = "libqvgen_trt_plugin.so"
ENGINE_FORMAT = "qvgen-export/trt-engine"


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise EngineUnavailableError(
            "TensorRT is not installed (needs an NVIDIA GPU machine: pip install 'qvgen-export[trt]')"
        ) from None
    except OSError as e:  # the bindings import but libnvinfer is missing
        raise EngineUnavailableError(f"TensorRT's libraries cannot be loaded ({e})") from None
    return tensorrt


def gpu_record() -> dict[str, Any]:
    """Name and compute capability of the current CUDA device (what an engine is tied to)."""
    import torch

    if not torch.cuda.is_available():
        raise EngineUnavailableError("no CUDA GPU is visible (TensorRT engines are built and run on a GPU)")
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def find_plugin_library(path: str | Path | None = None) -> Path:
    """``path``, else ``$QVGEN_TRT_PLUGIN``, else the native build folder's plugin library."""
    from qvgen_export.native._lib import library_dirs

    candidates = [Path(path)] if path else []
    if not path and os.environ.get("QVGEN_TRT_PLUGIN"):
        candidates.append(Path(os.environ["QVGEN_TRT_PLUGIN"]))
    if not candidates:
        candidates = [d / PLUGIN_LIBRARY for d in library_dirs()]
    for c in candidates:
        if c.is_file():
            return c
    where = ", ".join(str(c) for c in candidates)
    raise EngineUnavailableError(
        f"TensorRT plugin library not found (looked for {where}); build it on a TensorRT machine with "
        "`cmake -DTensorRT_ROOT=<sdk> ...` (docs/tensorrt.md) or pass --plugin-library"
    )


def load_plugin_library(trt: Any, path: Path) -> None:
    """dlopen the plugin (it registers its creator) and check it serves this contract's plugin."""
    import ctypes

    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise ValueError(f"{path}: cannot load the plugin library ({e})") from None
    c = load_contract()
    creator = trt.get_plugin_registry().get_creator(c.op_type, c.version, c.namespace)
    if creator is None:
        raise ValueError(
            f"{path}: provides no TensorRT plugin {c.op_type} version {c.version} in namespace {c.namespace!r} "
            "(a library of another contract version?)"
        )


def check_engine_prerequisites(plugin_library: str | Path | None = None) -> tuple[Any, Path, dict[str, Any]]:
    """``(tensorrt module, plugin library, GPU record)`` or ``EngineUnavailableError`` naming what is missing."""
    trt = import_tensorrt()
    gpu = gpu_record()
    lib = find_plugin_library(plugin_library)
    return trt, lib, gpu


def build_engine(
    folder: str | Path,
    plugin_library: str | Path | None = None,
    profile: str | ShapeProfile | None = None,
    timing_cache: str | Path | None = None,
    workspace_gib: float | None = None,
) -> dict[str, Any]:
    """Build ``folder/model.plan`` from the plugin graph in ``folder``; returns the engine record.

    Raises ``EngineUnavailableError`` (nothing written) where TensorRT, a GPU or the plugin library
    is missing, ``ValueError`` for a folder that is not a complete ``trt`` export or a bad profile.
    """
    folder = Path(folder)
    manifest = verify_manifest(folder)
    if manifest.get("target") != "trt":
        raise ValueError(f"{folder}: a {manifest.get('target')!r} folder; engines are built from 'trt' folders")
    cfg = manifest["model_config"]
    prof = profile if isinstance(profile, ShapeProfile) else parse_profile(profile, cfg)
    prof.check(cfg)
    trt, lib, gpu = check_engine_prerequisites(plugin_library)
    load_plugin_library(trt, lib)
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    t0 = time.perf_counter()
    trt_profile = Profile()
    for name, (lo, opt, hi) in prof.shapes(cfg).items():
        trt_profile.add(name, lo, opt, hi)
    kwargs: dict[str, Any] = {"profiles": [trt_profile]}
    if timing_cache is not None:
        kwargs["load_timing_cache"] = str(timing_cache)
    if workspace_gib is not None:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(workspace_gib * (1 << 30))}
    network = NetworkFromOnnxPath(str(folder / manifest["model_file"]), strongly_typed=True)
    engine_bytes = EngineBytesFromNetwork(
        network, config=CreateConfig(**kwargs), save_timing_cache=str(timing_cache) if timing_cache else None
    )()
    if engine_bytes is None:
        raise RuntimeError("TensorRT could not build the engine (see its log above)")
    with atomic_file(folder / ENGINE_FILE) as tmp:
        tmp.write_bytes(bytes(engine_bytes))
    record = {
        "format": ENGINE_FORMAT,
        "engine_file": ENGINE_FILE,
        "engine_sha256": sha256_file(folder / ENGINE_FILE),
        "tensorrt_version": trt.__version__,
        "gpu": gpu,
        "plugin": {**load_contract().to_manifest(), "library": lib.name, "library_sha256": sha256_file(lib)},
        "profile": prof.to_dict(),
        "strongly_typed": True,
        "source_model_sha256": manifest["files"][manifest["model_file"]]["sha256"],
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    with atomic_file(folder / ENGINE_MANIFEST) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record


def read_engine_record(folder: str | Path) -> dict[str, Any]:
    """``engine.json`` with the engine's hash checked; ``ValueError`` naming the file otherwise.

    The record must name a plain file in the folder, carry its SHA-256, and have been built from
    the model file the folder's manifest lists (``source_model_sha256``): an engine copied next
    to another export is refused.
    """
    folder = Path(folder)
    path = folder / ENGINE_MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder}: no TensorRT engine ({ENGINE_MANIFEST} missing); build one with qvgen-build-engine")
    record = read_json_object(path, "an engine record")
    if record.get("format", ENGINE_FORMAT) != ENGINE_FORMAT:
        raise ValueError(f"{path}: not a qvgen-export engine record (format {record.get('format')!r})")
    name, expected = record.get("engine_file"), record.get("engine_sha256")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"{path}: 'engine_file' must name a file in the folder, got {name!r}")
    if not isinstance(expected, str) or len(expected) != 64:
        raise ValueError(f"{path}: 'engine_sha256' is missing or not a SHA-256 (cannot check the engine)")
    engine = folder / name
    if not engine.is_file() or sha256_file(engine) != expected:
        raise ValueError(f"{engine}: missing or does not match {ENGINE_MANIFEST} (file changed or corrupted)")
    try:
        manifest = read_json_object(folder / MANIFEST_FILE)
        source = manifest["files"][manifest["model_file"]]["sha256"]
    except (ValueError, KeyError, TypeError):
        source = None  # the folder's own check (verify_manifest) names that problem
    if source is not None and record.get("source_model_sha256") != source:
        raise ValueError(f"{path}: engine was built from another model file (source_model_sha256 differs); rebuild it")
    return record


def check_engine_matches(record: dict[str, Any], trt_version: str, gpu: dict[str, Any], plugin_sha256: str) -> None:
    """Refuse (``ValueError``, one line) an engine built for another TensorRT, GPU or plugin library."""
    if record.get("tensorrt_version") != trt_version:
        raise ValueError(f"engine built with TensorRT {record.get('tensorrt_version')}, this machine has {trt_version}")
    built = record.get("gpu", {})
    if built.get("compute_capability") != gpu["compute_capability"] or built.get("name") != gpu["name"]:
        raise ValueError(
            f"engine built for {built.get('name')} (sm {built.get('compute_capability')}), "
            f"this GPU is {gpu['name']} (sm {gpu['compute_capability']})"
        )
    if record.get("plugin", {}).get("library_sha256") != plugin_sha256:
        raise ValueError("engine built with another build of the plugin library (sha256 differs); rebuild the engine")
    c = load_contract()
    if record.get("plugin", {}).get("version") != c.version:
        raise ValueError(f"engine uses plugin version {record.get('plugin', {}).get('version')}, this is {c.version}")
