"""The TensorRT W4A4 plugin's contract, read from ``trt_plugin.json`` (its one written form).

The exporter takes the node's op_type, domain, version, namespace, input order and field
names from here; the C++ plugin gets the same values through a header CMake generates from the
same file (plugins/trt); tests compare both against it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    doc = json.loads(Path(path).read_text())
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
