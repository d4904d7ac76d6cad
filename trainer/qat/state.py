"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A state is a folder ``<out_dir>/states/step-0000123/`` (``123`` = the next step to run) with

- ``tensors.safetensors``: ``model/<name>`` for every parameter and buffer of the student
  (Phi included while it exists), ``optim/<name>/<key>`` for every optimizer state tensor
  (AdamW ``step``, ``exp_avg``, ``exp_avg_sq``) keyed by parameter *name*, ``rng/torch``;
- ``state.json``: the next step, the run config, the optimizer's param groups (hyperparameters and
  parameter names), the Phi rank, and the metrics of the last step.

The folder is written under a temporary name and renamed (``atomic_dir``), then ``latest`` is
replaced atomically; a run killed at any moment leaves the previous complete state, never a torn one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qvgen_export.utils.atomic import atomic_dir, atomic_file


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
    out["rng/torch"] = torch.get_rng_state()
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
    from safetensors.torch import save_file

    tensors = state_tensors(module, optimizer)
    if not write:
        return None
    names = {id(p): n for n, p in module.named_parameters()}
    groups = []
    for g in optimizer.param_groups:
        hp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
        groups.append({"params": [names[id(p)] for p in g["params"]], **hp})
    meta = {"next_step": next_step, "param_groups": groups, **info}
    root = Path(out_dir) / "states"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{next_step:07d}"
    with atomic_dir(final, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    with atomic_file(root / "latest") as tmp:
        tmp.write_text(final.name + "\n")
    old = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_state(out_dir: str | Path) -> Path | None:
    """The newest complete state folder of a run, or None."""
    root = Path(out_dir) / "states"
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
    from safetensors.torch import load_file

    meta = json.loads((path / "state.json").read_text())
    return meta, load_file(str(path / "tensors.safetensors"))


def _set(dst: torch.Tensor, src: torch.Tensor) -> None:
    if hasattr(dst, "device_mesh"):  # FSDP2 DTensor: scatter the full tensor into its shard
        from torch.distributed.tensor import distribute_tensor

        src = distribute_tensor(src.to(dst.dtype), dst.device_mesh, dst.placements)  # type: ignore[attr-defined]
    dst.copy_(src)


def load_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Restore parameters, buffers, optimizer state (by parameter name) and the torch RNG."""
    sd = module.state_dict()
    model_keys = {k[len("model/") :] for k in tensors if k.startswith("model/")}
    if model_keys != set(sd):
        missing, unknown = sorted(set(sd) - model_keys), sorted(model_keys - set(sd))
        raise ValueError(f"training state does not match the model (missing {missing[:3]}, unknown {unknown[:3]})")
    with torch.no_grad():
        for k, v in sd.items():
            _set(v, tensors[f"model/{k}"].to(v.device))
    params = dict(module.named_parameters())
    saved_groups = meta["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError("training state has a different number of optimizer parameter groups")
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
    torch.set_rng_state(tensors["rng/torch"])
