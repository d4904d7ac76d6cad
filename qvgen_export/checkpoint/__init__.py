"""The quantized checkpoint format (docs/checkpoint-format.md)."""

from qvgen_export.checkpoint.format import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointInfo,
    describe,
    load_quantized_model,
    read_info,
    save_checkpoint,
)

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointInfo",
    "describe",
    "load_quantized_model",
    "read_info",
    "save_checkpoint",
]
