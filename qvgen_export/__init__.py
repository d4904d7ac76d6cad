"""qvgen-export: compile QVGen W4A4 video diffusion transformers.

Importing this package pulls in torch but never tensorrt, onnxruntime, polygraphy, CUDA or the
native plugin library; those load lazily where they are used.
"""

from qvgen_export.quant.config import QuantConfig, WeightGranularity

__version__ = "0.1.0"
__all__ = ["QuantConfig", "WeightGranularity", "__version__", "quantize"]


def __getattr__(name: str) -> object:
    # ``qvgen_export.quantize`` (ModelOpt's ``mtq.quantize`` shape) without importing the PTQ
    # stack (tqdm, range search) at ``import qvgen_export``.
    if name == "quantize":
        from qvgen_export.quant.ptq import quantize

        return quantize
    raise AttributeError(f"module 'qvgen_export' has no attribute {name!r}")
