"""QVGen quantization-aware training (Phi + rank decay + distillation) and the paper's baselines.

Entry points: :func:`trainer.qat.loop.train` with a :class:`trainer.qat.config.TrainConfig`, or the
``qvgen-train`` console script (``trainer.qat.cli``). See docs/qat-trainer.md.
"""
