"""Quality harness: VBench-like analytic metrics for tiny-video clips and float-vs-quantized
comparisons (``qvgen-eval``). Imports stay light: numpy and torch only."""
