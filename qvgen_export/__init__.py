"""qvgen-export: compile QVGen W4A4 video diffusion transformers.

Importing this package pulls in torch but never tensorrt, onnxruntime, polygraphy, CUDA or the
native plugin library; those load lazily where they are used.
"""

from qvgen_export.quant.config import QuantConfig, WeightGranularity

__version__ = "0.1.0"
__all__ = ["QuantConfig", "WeightGranularity", "__version__"]
