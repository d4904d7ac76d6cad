"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A state is a folder ``<out_dir>/states/step-0000123/`` (``123`` = the next step to run) with

- ``tensors.safetensors``: ``model/<name>`` for every parameter and buffer of the student
  (Phi included while it exists), ``optim/<name>/<key>`` for every optimizer state tensor
  (AdamW ``step``, ``exp_avg``, ``exp_avg_sq``) keyed by parameter *name*, ``rng/torch`` (and
  ``rng/cuda/<i>`` per visible GPU), ``rng/numpy`` and ``rng/python`` (the global generators,
  serialised to bytes), every tensor with its SHA-256 in the file's metadata (``tensor_sha256``,
  the checkpoint format's digest);
- ``state.json``: the next step, the run config, the optimizer's param groups (hyperparameters and
  parameter names), the Phi rank, and the metrics of the last step.

Reading refuses, in one line naming the file, a state whose tensors file is missing, truncated,
empty or tampered (digest mismatch), whose ``state.json`` is not an object with an integer
``next_step`` and a ``param_groups`` list, or whose parameters or optimizer moments hold NaN/Inf.

The folder is written under a temporary name and renamed (``atomic_dir``), then ``latest`` is
replaced atomically, then states beyond ``keep`` are renamed away and deleted; a run killed at any
moment leaves the previous complete state, never a torn one, and its temps are removed by the next
run (``latest_state`` cleans the ``states`` folder).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qvgen_export.checkpoint.hashed_tensors import DIGEST_KEY, open_hashed
from qvgen_export.checkpoint.stream_writer import write_safetensors
from qvgen_export.utils.atomic import atomic_dir, atomic_file, clean_stale, discard
from qvgen_export.utils.json_files import JsonFileError, read_json_object

STATE_FORMAT = "qvgen-qat-state"


class StateError(ValueError):
    """A training state that cannot be resumed; one line naming the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)


def _bytes_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8).clone() if b else torch.zeros(0, dtype=torch.uint8)


def seed_rngs(seed: int) -> None:
    """Seed every global generator a run may draw from (torch CPU and CUDA, numpy, Python).

    A new interpreter starts torch's, numpy's and Python's global generators from OS entropy, so
    without this an uninterrupted run and a resumed one would save different ``rng/*`` states
    (the resumed run restores the first process's, the uninterrupted run keeps its own). Called at
    the start of every run; a resumed run then replaces the seeded states by the saved ones."""
    torch.manual_seed(seed)  # also seeds every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_tensors() -> dict[str, torch.Tensor]:
    """Every global generator a step may draw from, as uint8 tensors (bit-exact round trip).

    numpy's and Python's states are plain tuples of ints and strings; they are stored as JSON
    bytes (never unpickled from the file)."""
    out = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng/cuda/{i}"] = st
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    np_doc = {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": gauss}
    out["rng/numpy"] = _bytes_tensor(json.dumps(np_doc).encode())
    version, internal, py_gauss = random.getstate()
    out["rng/python"] = _bytes_tensor(json.dumps([version, list(internal), py_gauss]).encode())
    return out


def set_rng_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        torch.set_rng_state(tensors["rng/torch"])
        if torch.cuda.is_available():
            states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
            if states:
                torch.cuda.set_rng_state_all(states)
        if "rng/numpy" in tensors:
            d = json.loads(bytes(tensors["rng/numpy"].numpy()).decode())
            np.random.set_state((d["name"], np.array(d["keys"], dtype=np.uint32), d["pos"], d["has_gauss"], d["gauss"]))
        if "rng/python" in tensors:
            version, internal, gauss = json.loads(bytes(tensors["rng/python"].numpy()).decode())
            random.setstate((version, tuple(internal), gauss))
    except (KeyError, RuntimeError, ValueError, TypeError, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StateError(path, f"random generator state cannot be restored ({msg})") from None


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain local tensor: FSDP2 DTensors are gathered (collective: every rank must call)."""
    if hasattr(t, "full_tensor"):
        return t.full_tensor()  # type: ignore[no-any-return]
    return t


def state_tensors(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in module.state_dict().items():
        out[f"model/{k}"] = _full(v).detach().cpu().contiguous()
    names = {id(p): n for n, p in module.named_parameters()}
    for p, st in optimizer.state.items():
        name = names[id(p)]
        for key, v in st.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"optimizer state {name}.{key} is not a tensor ({type(v).__name__})")
            out[f"optim/{name}/{key}"] = _full(v).detach().cpu().contiguous()
    out.update(rng_tensors())
    return out


def save_state(
    out_dir: str | Path,
    next_step: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
    keep: int = 2,
    write: bool = True,
) -> Path | None:
    """Write the state reached after ``next_step`` steps. ``write=False`` (non-zero ranks) still takes
    part in the FSDP gathers but writes nothing."""
    tensors = state_tensors(module, optimizer)
    if not write:
        return None
    names = {id(p): n for n, p in module.named_parameters()}
    groups = []
    for g in optimizer.param_groups:
        hp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
        groups.append({"params": [names[id(p)] for p in g["params"]], **hp})
    meta = {"format": STATE_FORMAT, "next_step": next_step, "param_groups": groups, **info}
    root = Path(out_dir) / "states"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{next_step:07d}"
    with atomic_dir(final, overwrite=True, what="the training state") as tmp:
        write_safetensors(tmp / "tensors.safetensors", tensors, {"format": STATE_FORMAT}, DIGEST_KEY)
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    with atomic_file(root / "latest", what="the training state pointer") as tmp:
        tmp.write_text(final.name + "\n")
    old = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for p in old[:-keep]:
        discard(p)  # renamed first: a kill mid-deletion leaves a temp, never a torn step-* folder
    return final


def latest_state(out_dir: str | Path) -> Path | None:
    """The newest complete state folder of a run, or None."""
    root = Path(out_dir) / "states"
    clean_stale(root)  # temp folders of a save that was killed (their process is gone)
    ptr = root / "latest"
    if ptr.is_file():
        p = root / ptr.read_text().strip()
        if (p / "state.json").is_file() and (p / "tensors.safetensors").is_file():
            return p
    cands = sorted(
        p for p in root.glob("step-*") if (p / "state.json").is_file() and (p / "tensors.safetensors").is_file()
    )
    return cands[-1] if cands else None


def read_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(state.json, tensors)`` of a state folder, every tensor checked against its digest and
    parameters/moments checked finite; :class:`StateError` (one line) otherwise."""
    path = Path(path)
    jpath, tpath = path / "state.json", path / "tensors.safetensors"
    try:
        meta = read_json_object(jpath, "a training state")
    except JsonFileError as e:
        raise StateError(jpath, e.reason) from None
    nxt = meta.get("next_step")
    if not isinstance(nxt, int) or isinstance(nxt, bool) or nxt < 0:
        raise StateError(jpath, f"'next_step' must be a non-negative integer, got {nxt!r}")
    if not isinstance(meta.get("param_groups"), list) or not all(isinstance(g, dict) for g in meta["param_groups"]):
        raise StateError(jpath, "'param_groups' must be a list of objects")
    if not isinstance(meta.get("config", {}), dict):
        raise StateError(jpath, "'config' must be an object")
    if not tpath.is_file():
        raise StateError(tpath, "missing")
    hashed = open_hashed(tpath, StateError)
    if "rng/torch" not in hashed:
        raise StateError(tpath, "tensor 'rng/torch' is missing")
    tensors: dict[str, torch.Tensor] = {}
    for key in hashed:
        t = hashed[key]
        if key.startswith(("model/", "optim/")) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise StateError(
                tpath, f"tensor '{key}' contains NaN or Inf (a diverged run; resume from an earlier state)"
            )
        tensors[key] = t
    meta["_path"] = str(path)  # in memory only: lets load_state name the folder in its errors
    return meta, tensors


def _set(dst: torch.Tensor, src: torch.Tensor) -> None:
    if hasattr(dst, "device_mesh"):  # FSDP2 DTensor: scatter the full tensor into its shard
        from torch.distributed.tensor import distribute_tensor

        src = distribute_tensor(src.to(dst.dtype), dst.device_mesh, dst.placements)  # type: ignore[attr-defined]
    dst.copy_(src)


def load_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Restore parameters, buffers, optimizer state (by parameter name) and every global RNG."""
    where = meta.get("_path", "training state")
    sd = module.state_dict()
    model_keys = {k[len("model/") :] for k in tensors if k.startswith("model/")}
    if model_keys != set(sd):
        missing, unknown = sorted(set(sd) - model_keys), sorted(model_keys - set(sd))
        raise StateError(where, f"does not match the model (missing {missing[:3]}, unknown {unknown[:3]})")
    with torch.no_grad():
        for k, v in sd.items():
            src = tensors[f"model/{k}"]
            if tuple(src.shape) != tuple(v.shape):
                raise StateError(where, f"tensor 'model/{k}' has shape {tuple(src.shape)}, the model {tuple(v.shape)}")
            _set(v, src.to(v.device))
    params = dict(module.named_parameters())
    saved_groups = meta["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise StateError(where, "has a different number of optimizer parameter groups")
    for g, sg in zip(optimizer.param_groups, saved_groups):
        for k, v in sg.items():
            if k != "params":
                g[k] = tuple(v) if isinstance(g.get(k), tuple) else v
    optimizer.state.clear()
    per_param: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            name, key = k[len("optim/") :].rsplit("/", 1)
            per_param.setdefault(name, {})[key] = v
    for name, st in per_param.items():
        if name not in params:
            raise StateError(where, f"optimizer state for unknown parameter '{name}'")
        p = params[name]
        restored = {}
        for key, v in st.items():
            if key == "step":
                restored[key] = v.clone()  # AdamW keeps step on CPU
            else:
                like = torch.empty_like(p)
                _set(like, v.to(like.device))
                restored[key] = like
        optimizer.state[p] = restored
    set_rng_tensors(tensors, Path(meta.get("_path", "training state")))
