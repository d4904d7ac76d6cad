"""The TensorRT W4A4 plugin's contract, read from ``trt_plugin.json`` (its one written form).

The exporter takes the node's op_type, domain, version, namespace, input order and field
names from here; the C++ plugin gets the same values through a header CMake generates from the
same file (plugins/trt); tests compare both against it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qvgen_export.utils.json_files import read_json_object

CONTRACT_FILE = Path(__file__).with_name("trt_plugin.json")


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    min: int | None
    max: int | None
    allowed: tuple[int, ...] | None

    def check(self, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"plugin field {self.name} must be an integer, got {value!r}")
        if self.allowed is not None and value not in self.allowed:
            raise ValueError(f"plugin field {self.name}={value} not in {list(self.allowed)}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise ValueError(f"plugin field {self.name}={value} outside [{self.min}, {self.max}]")
        return value


@dataclass(frozen=True)
class PluginContract:
    op_type: str
    version: str
    namespace: str
    onnx_domain: str
    inputs: tuple[str, ...]
    input_dtypes: tuple[tuple[str, ...], ...]
    outputs: tuple[str, ...]
    fields: tuple[Field, ...]
    row_align_bytes: int
    min_rank: int
    max_rank: int

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def attributes(self, **values: int) -> dict[str, Any]:
        """The ONNX node attributes: every field checked, plus the parser's version/namespace strings."""
        names = {f.name for f in self.fields}
        if set(values) != names:
            raise ValueError(f"plugin fields {sorted(values)} do not match the contract's {sorted(names)}")
        attrs: dict[str, Any] = {f.name: f.check(values[f.name]) for f in self.fields}
        attrs["plugin_version"] = self.version
        attrs["plugin_namespace"] = self.namespace
        return attrs

    def to_manifest(self) -> dict[str, Any]:
        return {"op_type": self.op_type, "version": self.version, "namespace": self.namespace}


@functools.cache
def load_contract(path: Path = CONTRACT_FILE) -> PluginContract:
    doc = read_json_object(path, "a plugin contract")
    fields = tuple(
        Field(
            f["name"],
            f["type"],
            f.get("min"),
            f.get("max"),
            tuple(f["allowed"]) if "allowed" in f else None,
        )
        for f in doc["fields"]
    )
    return PluginContract(
        op_type=doc["op_type"],
        version=str(doc["version"]),
        namespace=doc["namespace"],
        onnx_domain=doc["onnx_domain"],
        inputs=tuple(i["name"] for i in doc["inputs"]),
        input_dtypes=tuple(tuple(i["dtypes"]) for i in doc["inputs"]),
        outputs=tuple(o["name"] for o in doc["outputs"]),
        fields=fields,
        row_align_bytes=int(doc["layout"]["row_align_bytes"]),
        min_rank=int(doc["min_rank"]),
        max_rank=int(doc["max_rank"]),
    )


def check_plugin_nodes(onnx_path: str | Path) -> int:
    """Check every plugin node of a graph against the contract; returns their count.

    Catches a corrupted or hand-edited node before a runtime does (one ``ValueError`` line naming
    the file and the node): wrong input count, missing/unknown/out-of-range fields, another
    plugin version or namespace, and constant inputs whose shapes contradict the fields.
    """
    import onnx

    from qvgen_export.quant.packing import kernel_row_bytes

    c = load_contract()
    model = onnx.load(str(onnx_path), load_external_data=False)
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type != c.op_type:
            continue
        count += 1
        where = f"{onnx_path}: plugin node {node.name!r}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        try:
            version = attrs.pop("plugin_version", b"1").decode()
            namespace = attrs.pop("plugin_namespace", b"").decode()
            if (version, namespace) != (c.version, c.namespace):
                raise ValueError(
                    f"is {c.op_type} version {version!r} namespace {namespace!r}, expected {c.version!r} {c.namespace!r}"
                )
            if node.domain != c.onnx_domain:
                raise ValueError(f"has domain {node.domain!r}, expected {c.onnx_domain!r}")
            if len(node.input) != len(c.inputs) or len(node.output) != len(c.outputs):
                raise ValueError(
                    f"has {len(node.input)} inputs / {len(node.output)} outputs, expected {len(c.inputs)} / {len(c.outputs)}"
                )
            fields = c.attributes(**attrs)
            k, n = fields["in_features"], fields["out_features"]
            expected = {
                "qweight": [n, kernel_row_bytes(k) // 4],
                "w_scale": [n],
                "w_zero": [n],
                "w_sum": [n],
                "bias": [n],
            }
            for name, value in zip(c.inputs, node.input, strict=True):
                if name in expected and value in shapes and shapes[value] != expected[name]:
                    raise ValueError(f"input {name} has shape {shapes[value]}, fields say {expected[name]}")
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where} {e}") from None
    return count
