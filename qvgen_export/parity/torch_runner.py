"""A Polygraphy runner for PyTorch callables on any device.

Polygraphy's own ``PytRunner`` moves every input to CUDA and returns a tuple from ``infer``;
this one runs where the module lives (CPU here) and follows the ``BaseRunner`` contract.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata


def metadata_from_feed(feed: Mapping[str, np.ndarray]) -> TensorMetadata:
    meta = TensorMetadata()
    for name, value in feed.items():
        meta.add(name, value.dtype, list(value.shape))
    return meta


class TorchRunner(BaseRunner):
    """Runs ``fn(**inputs) -> {output_name: tensor}`` under ``torch.no_grad`` on ``device``."""

    def __init__(
        self,
        fn: Callable[..., Mapping[str, torch.Tensor]],
        input_metadata: TensorMetadata,
        device: str = "cpu",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name, prefix="torch-runner")
        self.fn = fn
        self.input_metadata = input_metadata
        self.device = device

    def activate_impl(self) -> None:
        pass

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self.input_metadata

    def infer_impl(self, feed_dict: Mapping[str, Any]) -> OrderedDict[str, np.ndarray]:
        inputs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feed_dict.items()}
        start = time.perf_counter()
        with torch.no_grad():
            outputs = self.fn(**inputs)
        self.inference_time = time.perf_counter() - start
        return OrderedDict((k, v.detach().float().cpu().numpy()) for k, v in outputs.items())

    def deactivate_impl(self) -> None:
        pass
