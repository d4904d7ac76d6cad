"""Lower a quantized Wan transformer to ONNX (opset 21) through ``torch.onnx.export(dynamo=True)``.

Graph I/O names, dtypes and dynamic axes: ``qvgen_export.artifact.contract``. What a quantized
linear becomes is the target's (``qvgen_export.targets``): INT4 Q/DQ nodes or one plugin node.
The timestep group of the activation clip tables is computed inside the graph with the same
formula as PyTorch (``functional.timestep_group``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from qvgen_export.artifact.contract import INPUT_NAMES, OUTPUT_NAMES, axis_dims
from qvgen_export.export.nbits_lowering import PACKED_ATTR
from qvgen_export.quant.modules import QuantizedWan
from qvgen_export.targets import Target, get_target

OPSET = 21
# ORT 1.31 reads IR version <= 13 and onnx 1.23 writes 14; 10 is what opset 21 requires.
IR_VERSION = 10
# Bytes of initializers above which they go to external data. Not protobuf's 2 GiB limit: a
# single file means the whole ModelProto with every weight in memory, plus its serialised bytes
# (2-3x the weights: 3.7 GiB for Wan 1.3B's 0.72 GB); external data is written tensor by tensor.
EXTERNAL_DATA_THRESHOLD = 128 << 20
# With external data, initializers of at most this many bytes stay inline in model.onnx.
INLINE_BYTES = 256
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


class _Positional(nn.Module):
    """Positional-only forward returning the velocity tensor (what the exporter traces)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.model(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]


@dataclass(frozen=True)
class ExampleShapes:
    batch: int = 2
    frames: int = 0  # 0: two patches
    height: int = 0
    width: int = 0
    text_len: int = 8


def example_inputs(config: Any, shapes: ExampleShapes = ExampleShapes()) -> tuple[torch.Tensor, ...]:
    """Small random inputs with the model's channel counts (tracing only needs shapes)."""
    pt, ph, pw = tuple(config.patch_size)
    f = shapes.frames or 2 * pt
    h = shapes.height or 2 * ph
    w = shapes.width or 2 * pw
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shapes.batch, config.in_channels, f, h, w, generator=g)
    t = torch.linspace(900.0, 100.0, shapes.batch)
    e = torch.randn(shapes.batch, shapes.text_len, config.text_dim, generator=g)
    return x, t, e


def fold_int4_casts(model: Any) -> int:
    """Turn ``Cast(uint8 initializer -> UINT4)`` into a true UINT4 initializer; returns count."""
    import ml_dtypes
    import onnx_ir as ir

    graph = model.graph
    folded = 0
    for node in list(graph):
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
            continue
        to = node.attributes.get("to")
        src = node.inputs[0]
        if to is None or to.as_int() != ir.DataType.UINT4 or src is None or src.const_value is None:
            continue
        codes = src.const_value.numpy()
        new = ir.Value(
            name=src.name + "_u4", const_value=ir.tensor(codes.astype(ml_dtypes.uint4), name=src.name + "_u4")
        )
        new.type = ir.TensorType(ir.DataType.UINT4)
        new.shape = src.shape
        graph.register_initializer(new)
        node.outputs[0].replace_all_uses_with(new)
        graph.remove(node, safe=True)
        if not src.uses():
            del graph.initializers[src.name]
        folded += 1
    return folded


LAYER_KEY = "qvgen.layer"
# The custom torch ops a quantized linear is traced as (onnx target's qdq and nbits forms, plugin target).
LOWERED_OPS = ("quant_linear", "quant_linear_nbits", "w4a4_plugin_linear")


def _compact_node_metadata(model: Any) -> None:
    """Keep only ``qvgen.layer`` (the quantized linear a node lowers) on each node.

    The exporter annotates every node with stack traces and class paths; they make up most of a
    small file's bytes and leak local paths. The layer name is what parity tools need.
    """
    import ast

    for node in model.graph:
        scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
        node.metadata_props.clear()
        if not scopes:
            continue
        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            continue
        if names and names[-1] in LOWERED_OPS and len(names) >= 2:
            # ['', 'model', 'model.transformer', ..., 'model.transformer.blocks.0.attn1.to_q', 'quant_linear']
            node.metadata_props[LAYER_KEY] = names[-2].removeprefix("model.transformer.")


CODES_SUFFIX = ".codes_t_u4"
NBITS_SUFFIX = "." + PACKED_ATTR  # a MatMulNBits node's packed weight
# What the QDQ lowering puts between a MatMul and its weight codes / its activation codes.
_WEIGHT_PATH = frozenset({"Sub", "Reshape", "DequantizeLinear"})
_ACT_PATH = frozenset({"Reshape", "DequantizeLinear", "Min"})


def _upstream(value: Any, stop: Callable[[Any], bool], through: frozenset[str], limit: int = 8) -> Any:
    """First value above ``value`` (breadth first, only through ``through`` ops) where ``stop`` holds."""
    frontier, seen = [value], set()
    for _ in range(limit):
        nxt = []
        for v in frontier:
            if v is None or id(v) in seen:
                continue
            seen.add(id(v))
            if stop(v):
                return v
            if v.producer() is not None and v.producer().op_type in through:
                nxt.extend(v.producer().inputs)
        frontier = nxt
    return None


def quantized_layer_nodes(model: Any) -> dict[str, tuple[Any, Any]]:
    """``{layer name: (MatMul or MatMulNBits node, activation QuantizeLinear node)}`` from graph structure.

    The layer is named by its INT4 weight initializer (``<prefix><layer>.codes_t_u4``, or the
    MatMulNBits weight ``<prefix><layer>.nbits_b``); the
    activation codes are the QuantizeLinear feeding that MatMul's data side. Several layers may
    share one activation QuantizeLinear after common-subexpression elimination (e.g. q/k/v with
    identical clip tables).
    """
    out: dict[str, tuple[Any, Any]] = {}
    for node in model.graph:
        if node.op_type == "MatMulNBits":  # weight form nbits: the packed codes are the node's B
            w, suffix = node.inputs[1], NBITS_SUFFIX
            if w is None or not w.name.endswith(suffix):
                continue
        elif node.op_type == "MatMul":
            suffix = CODES_SUFFIX
            w = _upstream(
                node.inputs[1], lambda v: v.const_value is not None and v.name.endswith(CODES_SUFFIX), _WEIGHT_PATH
            )
            if w is None:
                continue
        else:
            continue
        q = _upstream(
            node.inputs[0],
            lambda v: (
                v.producer() is not None
                and v.producer().op_type == "QuantizeLinear"
                and any(u.op_type == "DequantizeLinear" and i == 0 for u, i in v.uses())
            ),
            _ACT_PATH,
        )
        if q is None:
            continue
        name = w.name.removesuffix(suffix).removeprefix("model.transformer.").removeprefix("layer.")
        out.setdefault(name, (node, q.producer()))
    return out


def _initializer_bytes(model: Any) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


@dataclass
class ExportResult:
    onnx_path: Path
    data_path: Path | None
    seconds: float
    num_quant_nodes: int
    num_int4_initializers: int
    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]


def _shape_list(value: Any) -> list[Any]:
    return [d if isinstance(d, int) else str(d) for d in value.shape] if value.shape is not None else []


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's and optimiser's chatter (missing torchvision ops, skipped folds)."""
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def optimize_graph(ir_model: Any) -> None:
    """onnxscript's optimizer passes, minus what breaks scale or block structure.

    - ``SlicesSplit`` is dropped: it is quadratic in graph size (minutes on Wan 1.3B);
    - constant folding never consumes a model weight (``model.*`` initializers), so weights keep
      their module-path names and are never baked into anonymous folded tensors (the block
      stitcher and the parity tools find layers by those names; runtimes fold such ops anyway);
    - initializers are not deduplicated, so equal tensors of different layers stay separate.
    """
    import onnx_ir as ir
    from onnx_ir.passes import common as common_passes
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding

    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if getattr(r, "name", None) != "SlicesSplit"]

    def should_fold(node: Any) -> bool | None:
        for v in node.inputs:
            if v is not None and v.is_initializer() and v.name.startswith("model."):
                return False
        return None

    passes = ir.passes.Sequential(
        common_passes.InlinePass(),
        ir.passes.PassManager(
            [
                _constant_folding.FoldConstantsPass(
                    shape_inference=True, input_size_limit=8192, output_size_limit=262144, should_fold=should_fold
                ),
                rewriter.RewritePass(rules),
                common_passes.RemoveUnusedNodesPass(),
                common_passes.RemoveUnusedFunctionsPass(),
                common_passes.RemoveUnusedOpsetsPass(),
            ],
            steps=2,
            early_stop=True,
        ),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.LiftSubgraphInitializersToMainGraphPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )
    with quiet_exporter():
        passes(ir_model)


def trace_model(model: nn.Module, target: str = "onnx", inplace: bool = False) -> tuple[Any, Target | None, int]:
    """Trace ``model`` and lower its quantized linears for ``target``; returns the optimised
    onnx_ir model (node scope metadata kept), the target and the number of folded INT4 tensors."""
    spec: Target | None = None
    if isinstance(model, QuantizedWan):
        if target == "float":
            raise ValueError("target 'float' takes a float model, not a quantized one")
        spec = get_target(target)
        spec.hook("check_config")(model.qconfig)
        exported: nn.Module = spec.hook("export_form")(model if inplace else copy.deepcopy(model))
        config = model.config
    else:
        if target != "float":
            raise ValueError(f"target {target!r} needs a quantized model")
        exported, config = model, model.config
    with quiet_exporter():
        program = torch.onnx.export(
            _Positional(exported).eval(),
            example_inputs(config),
            dynamo=True,
            opset_version=OPSET,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=axis_dims(config),
            custom_translation_table=spec.hook("translation")() if spec else {},
            # Optimise after folding the INT4 casts ourselves: the exporter's optimiser would fold
            # the small ones into anonymous 'val_N' initializers and the big ones not at all.
            optimize=False,
            verbose=False,
        )
    ir_model = program.model
    folded = spec.hook("post_process")(ir_model) if spec and spec.post_process else 0
    optimize_graph(ir_model)
    return ir_model, spec, folded


def save_model(ir_model: Any, out_dir: Path, check: bool = True, progress: bool = False) -> tuple[Path, Path | None]:
    """Write ``model.onnx`` (+ ``model.onnx.data`` above the protobuf limit) and check it."""
    import onnx
    import onnx_ir as ir

    _compact_node_metadata(ir_model)
    ir_model.ir_version = IR_VERSION
    ir_model.producer_name = "qvgen-export"
    onnx_path = out_dir / MODEL_FILE
    data_path: Path | None = None
    if _initializer_bytes(ir_model) > EXTERNAL_DATA_THRESHOLD:
        data_path = out_dir / DATA_FILE
        total = len(ir_model.graph.initializers)
        with tqdm(total=total, desc="saving weights", unit="tensor", disable=not progress, leave=False) as bar:
            # One writer: lazily materialised initializers (the block stitcher's) are produced in order.
            ir.save(
                ir_model,
                onnx_path,
                external_data=DATA_FILE,
                size_threshold_bytes=INLINE_BYTES,
                max_workers=1,
                callback=lambda t, i: bar.update(),
            )
    else:
        ir.save(ir_model, onnx_path)
    if check:
        # full_check runs strict shape inference too; by path so external data is fine.
        onnx.checker.check_model(str(onnx_path), full_check=True)
    return onnx_path, data_path


def export_onnx(
    model: nn.Module,
    out_dir: Path,
    target: str = "onnx",
    check: bool = True,
    progress: bool = False,
    inplace: bool = False,
) -> ExportResult:
    """Export ``model`` into ``out_dir`` (which must exist and be empty; see ``pipeline``).

    ``model`` is a :class:`QuantizedWan` for a registered target (frozen to its export form; a
    deep copy unless ``inplace``, which saves a second copy of a large model's weights) or a
    float ``WanTransformer3DModel`` for ``target='float'``.
    """
    t0 = time.perf_counter()
    bar = tqdm(total=2, desc="export", disable=not progress, leave=False)
    bar.set_postfix_str("tracing, lowering, optimising")
    ir_model, spec, folded = trace_model(model, target, inplace)
    bar.update()
    bar.set_postfix_str("saving and checking")
    onnx_path, data_path = save_model(ir_model, out_dir, check, progress)
    bar.update()
    bar.close()
    return result_of(ir_model, spec, onnx_path, data_path, time.perf_counter() - t0, folded)


def result_of(
    ir_model: Any, spec: Target | None, onnx_path: Path, data_path: Path | None, seconds: float, folded: int
) -> ExportResult:
    quant_nodes = sum(1 for n in ir_model.graph if spec and n.op_type == spec.quant_node)
    return ExportResult(
        onnx_path=onnx_path,
        data_path=data_path,
        seconds=seconds,
        num_quant_nodes=quant_nodes,
        num_int4_initializers=folded,
        inputs={v.name: _shape_list(v) for v in ir_model.graph.inputs},
        outputs={v.name: _shape_list(v) for v in ir_model.graph.outputs},
    )
