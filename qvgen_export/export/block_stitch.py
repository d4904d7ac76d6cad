"""Structure-aware export: trace three transformer blocks once, instantiate the rest per block.

A Wan transformer is a prologue (patch and condition embedders), ``num_layers`` blocks of one
structure with different weights, and an epilogue. Tracing, lowering and optimising the whole
graph costs time and memory in proportion to depth, and needs the whole model in memory. Here a
3-block model is built from the checkpoint (blocks 0, 1, 2 and the non-block tensors), traced
and optimised like any model; block 2 then serves as the template for blocks 3 .. N-1:

- its nodes are cloned per block, renamed, and chained: the one value block 2 takes from block 1
  (the hidden state) becomes the previous block's output, and the epilogue reads the last block's;
- values block 2 takes from block 0 or the prologue (subexpressions the optimiser shared, the
  timestep group, rotary tables, the time embedding) are shared by every block, as in a direct
  export;
- its weight initializers (``model.transformer.blocks.2.*``) become lazy tensors named for block
  ``i``, materialised from the checkpoint's packed codes one block at a time while the file is
  written, so the whole model's weights are never in memory at once.

Three blocks rather than two so that no cloned block depends on anything but the block before it
and the shared values: the optimiser's common-subexpression pass keeps the first occurrence,
which is always in block 0. The result equals a direct export of the same model (node for node
per block, outputs in ONNX Runtime to float tolerance: ``tests/core/test_block_stitch.py``).
"""

from __future__ import annotations

import ast
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qvgen_export.checkpoint.format import (
    CheckpointInfo,
    CheckpointTensors,
    build_model,
    read_float_tensor,
    read_layer_tensors,
)
from qvgen_export.export.onnx_export import INLINE_BYTES, ExportResult, result_of, save_model, trace_model
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.modules import PackedQuantLinear, QuantContext
from qvgen_export.targets import get_target

TEMPLATE_BLOCKS = 3
_PREFIX = "model.transformer.blocks."
_SCOPES = "pkg.torch.onnx.name_scopes"


class StitchError(RuntimeError):
    """The traced graph does not have the block structure the stitcher relies on."""


OUTSIDE = -1  # traced outside every block (prologue, epilogue)


def _block_of(node: Any) -> int | None:
    """Block index a node was traced in, ``OUTSIDE``, or None when it has no scope metadata."""
    scopes = node.metadata_props.get(_SCOPES)
    if not scopes:
        return None
    for name in ast.literal_eval(scopes):
        if name.startswith(_PREFIX):
            return int(name[len(_PREFIX) :].split(".")[0])
    return OUTSIDE


class _Subset(Mapping[str, torch.Tensor]):
    """A checkpoint's tensors restricted to the non-block ones and blocks ``< n``."""

    def __init__(self, tensors: CheckpointTensors, n: int) -> None:
        self._t = tensors
        self._keys = [k for k in tensors if not k.startswith("blocks.") or int(k.split(".")[1]) < n]
        self._set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._set:
            raise KeyError(key)
        return self._t[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._set

    def shape(self, key: str) -> tuple[int, ...]:
        return self._t.shape(key)


def template_info(info: CheckpointInfo, n: int = TEMPLATE_BLOCKS) -> CheckpointInfo:
    layers = [e for e in info.layers if not e["name"].startswith("blocks.") or int(e["name"].split(".")[1]) < n]
    return replace(info, model_config={**info.model_config, "num_layers": n}, layers=layers)


class _BlockTensors:
    """Export-form tensors of one block at a time, read from the checkpoint on first request."""

    def __init__(self, info: CheckpointInfo, tensors: CheckpointTensors, target: str) -> None:
        self.info, self.tensors = info, tensors
        self.layer_form = get_target(target).hook("layer_form")
        self.layers = {e["name"]: e for e in info.layers}
        self.block: int | None = None
        self.cache: dict[str, np.ndarray] = {}
        # Saving writes the external tensors of every block, then serialises the inline ones
        # (<= INLINE_BYTES): a second pass over the blocks. A layer's small tensors are kept from
        # its one read (a few KiB per block) so that pass reads nothing again.
        self.small: dict[tuple[int, str], np.ndarray] = {}

    def get(self, block: int, rest: str) -> np.ndarray:
        """``rest`` is an initializer name below ``model.transformer.blocks.<i>.``."""
        if (block, rest) in self.small:
            return self.small.pop((block, rest))
        if block != self.block:
            self.block, self.cache = block, {}
            # The file's pages read so far stay mapped (and in RSS) until released: once per block
            # keeps the export at one block's worth of them whatever the depth.
            release = getattr(self.tensors, "release", None)
            if release is not None:
                release()
        if rest not in self.cache:
            self.cache[rest] = self._read(block, rest)
        return self.cache[rest]

    def _read(self, block: int, rest: str) -> np.ndarray:
        p = Path(self.info.path)
        parts = rest.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            name = f"blocks.{block}." + ".".join(parts[:cut])
            if name in self.layers:
                attr = ".".join(parts[cut:])
                form = self._form(name)
                if attr.endswith("_u4"):
                    import ml_dtypes

                    return getattr(form, attr.removesuffix("_u4")).numpy().astype(ml_dtypes.uint4)
                return getattr(form, attr).detach().numpy()
        t = read_float_tensor(p, self.tensors, f"blocks.{block}.{rest}")
        return t.float().numpy()

    def _form(self, name: str) -> Any:
        key = ("form", name)
        if key not in self.cache:
            parts = read_layer_tensors(Path(self.info.path), self.info, self.tensors, self.layers[name])
            form = self.layer_form(_packed_layer(parts, self.info.quant_config))
            _, block, layer = name.split(".", 2)
            for attr, t in (*form.named_parameters(), *form.named_buffers()):
                if t.numel() * t.element_size() <= INLINE_BYTES:
                    self.small[(int(block), f"{layer}.{attr}")] = t.detach().numpy()
            self.cache[key] = form  # type: ignore[index]
        return self.cache[key]  # type: ignore[index]


def _packed_layer(parts: dict[str, torch.Tensor], cfg: QuantConfig) -> PackedQuantLinear:
    """The packed linear of one layer's file tensors (``read_layer_tensors``: hashed, values checked).

    Not ``_materialise_layer``: its dequantize-requantize round trip guards the latent-weight
    form (training), while every export form reads the stored codes, scales and zero points as
    they are, like the packed model; that check was 3/4 of the time of instantiating a block.
    """
    codes = parts["codes"]
    layer = PackedQuantLinear.from_tensors(parts, int(codes.shape[1]), cfg, QuantContext(), requires_grad=False)
    # The export forms read ``codes()``: hand them the codes read_layer_tensors already unpacked from
    # this qweight instead of unpacking them a second time (a third of a block's time).
    layer.codes = lambda: codes  # type: ignore[method-assign]
    return layer


def assign_blocks(nodes: list[Any]) -> dict[int, int | None]:
    """``{id(node): block}``. Nodes the optimiser created carry no scope (e.g. the Split it makes
    of a chunk); such a node belongs to the block of the latest block its inputs come from."""
    block: dict[int, int | None] = {}
    producer_block: dict[int, int | None] = {}
    for n in nodes:  # graph order is topological
        b = _block_of(n)
        if b is None:
            ins = [producer_block.get(id(v)) for v in n.inputs if v is not None]
            known = [x for x in ins if x is not None and x != OUTSIDE]
            b = max(known) if known else OUTSIDE
        block[id(n)] = b
        for v in n.outputs:
            producer_block[id(v)] = b
    return block


def stitch_blocks(ir_model: Any, num_blocks: int, source: _BlockTensors) -> int:
    """Extend a traced ``TEMPLATE_BLOCKS``-block graph to ``num_blocks`` (in place); returns nodes added."""
    import onnx_ir as ir

    graph = ir_model.graph
    nodes = list(graph)
    last = TEMPLATE_BLOCKS - 1
    blocks = assign_blocks(nodes)
    template = [n for n in nodes if blocks[id(n)] == last]
    if not template:
        raise StitchError("no node carries block scope metadata")
    in_template = {id(n) for n in template}
    produced_in = {id(v): blocks[id(n)] for n in nodes for v in n.outputs}
    carried_in: list[Any] = []
    for n in template:
        for v in n.inputs:
            if v is not None and produced_in.get(id(v)) == last - 1 and v not in carried_in:
                carried_in.append(v)
    outputs = [
        v
        for n in template
        for v in n.outputs
        if any(id(u) not in in_template for u, _ in v.uses()) or v in graph.outputs
    ]
    if len(carried_in) != 1 or len(outputs) != 1:
        users = sorted({u.op_type for v in outputs for u, _ in v.uses() if id(u) not in in_template})
        raise StitchError(
            f"block {last} takes {len(carried_in)} values from block {last - 1} and gives {len(outputs)} "
            f"(to {', '.join(users)})"
        )
    # A template input that is another block's (or a named model) weight would be shared by every
    # clone: refuse rather than export a wrong model (small anonymous constants are fine to share).
    for v in (v for n in template for v in n.inputs):
        if (
            v is not None
            and v.is_initializer()
            and v.name.startswith("model.")
            and not v.name.startswith(f"{_PREFIX}{last}.")
        ):
            raise StitchError(f"block {last} reads the weight {v.name} of another block")
    template_inits = {
        v.name: v for n in template for v in n.inputs if v is not None and v.name.startswith(f"{_PREFIX}{last}.")
    }
    (out_value,) = outputs
    external_uses = [(u, i) for u, i in out_value.uses() if id(u) not in in_template]
    is_graph_output = out_value in graph.outputs
    previous = out_value
    anchor = template[-1]
    added = 0
    for block in range(TEMPLATE_BLOCKS, num_blocks):
        mapping: dict[int, Any] = {id(carried_in[0]): previous}
        for name, v in template_inits.items():
            rest = name[len(f"{_PREFIX}{last}.") :]
            new_name = f"{_PREFIX}{block}.{rest}"
            tensor = ir.LazyTensor(
                lambda b=block, r=rest, n=new_name: ir.tensor(source.get(b, r), name=n),
                dtype=v.const_value.dtype,
                shape=v.const_value.shape,
                name=new_name,
            )
            new = ir.Value(name=new_name, shape=v.shape, type=v.type, const_value=tensor)
            graph.register_initializer(new)
            mapping[id(v)] = new
        clones = []
        for n in template:
            inputs = [None if v is None else mapping.get(id(v), v) for v in n.inputs]
            clone = ir.Node(
                n.domain,
                n.op_type,
                inputs,
                attributes=list(n.attributes.values()),
                overload=n.overload,
                num_outputs=len(n.outputs),
                version=n.version,
                name=f"{n.name}_b{block}" if n.name else None,
            )
            clone.metadata_props.update(
                {k: v.replace(f"{_PREFIX}{last}", f"{_PREFIX}{block}") for k, v in n.metadata_props.items()}
            )
            for old, new in zip(n.outputs, clone.outputs, strict=True):
                new.name = f"{old.name}_b{block}" if old.name else None
                new.shape, new.type = old.shape, old.type
                mapping[id(old)] = new
            clones.append(clone)
        graph.insert_after(anchor, clones)
        anchor = clones[-1]
        previous = mapping[id(out_value)]
        added += len(clones)
    for user, index in external_uses:
        user.replace_input_with(index, previous)
    if is_graph_output:
        graph.outputs[graph.outputs.index(out_value)] = previous
    return added


def export_checkpoint_blocks(
    info: CheckpointInfo, tensors: CheckpointTensors, out_dir: Path, target: str, progress: bool = False
) -> ExportResult:
    """Export a checkpoint of any depth through a traced 3-block template (see module docstring)."""
    t0 = time.perf_counter()
    num_blocks = int(info.model_config["num_layers"])
    n = min(num_blocks, TEMPLATE_BLOCKS)
    bar = tqdm(total=3, desc="export", disable=not progress, leave=False)
    bar.set_postfix_str(f"tracing {n} blocks")
    model = build_model(template_info(info, n), _Subset(tensors, n))
    ir_model, spec, folded = trace_model(model, target, inplace=True)
    del model
    bar.update()
    if num_blocks > n:
        bar.set_postfix_str(f"instantiating blocks {n}..{num_blocks - 1}")
        stitch_blocks(ir_model, num_blocks, _BlockTensors(info, tensors, target))
    bar.update()
    bar.set_postfix_str("saving and checking")
    onnx_path, data_path = save_model(ir_model, out_dir, check=True, progress=progress)
    bar.update()
    bar.close()
    return result_of(ir_model, spec, onnx_path, data_path, time.perf_counter() - t0, folded)
