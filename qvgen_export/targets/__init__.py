"""Export targets: what each one lowers a quantized linear to, what runs its artifact, how parity runs it.

One registry (:mod:`qvgen_export.targets.registry`); the CLI, ``export_checkpoint``,
``qvgen-run`` and the parity report take their targets from it.
"""

from qvgen_export.targets.registry import TARGETS, EngineUnavailableError, Target, get_target, manifest_spec

__all__ = ["TARGETS", "EngineUnavailableError", "Target", "get_target", "manifest_spec"]
