"""Structure-aware export: three traced blocks + per-block instantiation equals a direct export.

The two exports of each target are conftest's ``stitched_and_direct`` (shared with
test_ort_nbits.py's mixed-form test, which checks the same ``onnx`` pair for its weight forms).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from qvgen_export.checkpoint.format import read_info
from qvgen_export.export.pipeline import ORT_SESSION_CONFIG
from qvgen_export.runtime.backends import ort_session


def _run(path, target, feed):
    return ort_session(path, ORT_SESSION_CONFIG, target=target).run(None, feed)[0]


@pytest.mark.parametrize("target", ["onnx", "trt"])
def test_stitched_export_equals_direct_export(stitched_and_direct, target):
    pair = stitched_and_direct(target)
    stitched = pair.stitched
    # Weights streamed to external data, the path real models take. Saving visits the blocks
    # twice (external tensors, then the small inline ones), yet each instantiated layer is read
    # from the file once.
    assert (stitched / "model.onnx.data").is_file()
    names = [e["name"] for e in read_info(pair.ckpt)[0].layers]
    instantiated = [n for n in names if n.startswith("blocks.") and int(n.split(".")[1]) >= 3]
    assert sorted(pair.reads) == sorted(instantiated) and instantiated
    model, direct = pair.model, pair.direct
    a, b = onnx.load(str(stitched / "model.onnx")), onnx.load(str(direct))
    assert Counter(n.op_type for n in a.graph.node) == Counter(n.op_type for n in b.graph.node)
    names_a = {i.name for i in a.graph.initializer if i.name.startswith("model.")}
    assert names_a == {i.name for i in b.graph.initializer if i.name.startswith("model.")}
    per_block = Counter(n.split(".")[3] for n in names_a if n.startswith("model.transformer.blocks."))
    assert sorted(per_block) == ["0", "1", "2", "3", "4"] and len(set(per_block.values())) == 1
    g = torch.Generator().manual_seed(0)
    text_dim = model.config.text_dim
    x, t = torch.randn(2, 3, 4, 16, 16, generator=g), torch.tensor([900.0, 30.0])
    e = torch.randn(2, 6, text_dim, generator=g)
    feed = {"hidden_states": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()}
    y_stitched, y_direct = _run(stitched / "model.onnx", target, feed), _run(direct, target, feed)
    np.testing.assert_array_equal(y_stitched, y_direct)
    with torch.no_grad():
        y_torch = model(x, t, e, return_dict=False)[0].numpy()
    assert np.abs(y_stitched - y_torch).max() <= 1e-4 * np.abs(y_torch).max()
