"""Build modules without allocating their parameters (diffusers/accelerate's init-empty-weights).

Parameters are moved to the meta device as they are registered, so a 14B-parameter skeleton
costs almost nothing; buffers stay real because some are computed in ``__init__`` and never
stored (e.g. Wan's rotary tables). Loaders then assign real tensors in place of the meta ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Within the block, every ``nn.Parameter`` registered on any module lands on ``meta``.

    The constructor may still create a CPU tensor first (``torch.empty``), but it is released
    immediately and its pages are never touched, so peak memory stays at one layer's allocation.
    Not thread-safe: it patches ``nn.Module.register_parameter`` for the duration.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            cls = type(param)
            module._parameters[name] = cls(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def assign_tensor(root: nn.Module, key: str, value: torch.Tensor, cast: bool = True) -> None:
    """Replace the parameter or buffer ``key`` (a ``state_dict`` name) of ``root`` by ``value``.

    With ``cast`` the value is cast to the slot's dtype (the skeleton's dtype is the model's
    dtype); otherwise it keeps its own. A parameter keeps its ``requires_grad``.
    """
    prefix, _, name = key.rpartition(".")
    mod = root.get_submodule(prefix) if prefix else root
    if name in mod._parameters:
        old = mod._parameters[name]
        assert old is not None
        t = value if not cast or value.dtype == old.dtype else value.to(old.dtype)
        mod._parameters[name] = type(old)(t, requires_grad=old.requires_grad)
    elif name in mod._buffers:
        old_b = mod._buffers[name]
        assert old_b is not None
        mod._buffers[name] = value if not cast or value.dtype == old_b.dtype else value.to(old_b.dtype)
    else:
        raise KeyError(key)


def meta_tensor_names(root: nn.Module) -> list[str]:
    """Parameters and buffers of ``root`` still on the meta device (never loaded)."""
    out = [n for n, p in root.named_parameters() if p.is_meta]
    return out + [n for n, b in root.named_buffers() if b.is_meta]
