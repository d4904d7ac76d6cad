"""What each QAT method trains, and the student module that DDP/FSDP wraps.

===================  ========  =====  ==========  ====  ==========================================
method               teacher   Phi    rank decay  LoRA  trained
===================  ========  =====  ==========  ====  ==========================================
qvgen                yes       r0     yes         no    W, s, z, clip logits, other params, L, R
qvgen_keep_phi       yes       r0     no          no    same (Phi kept; PyTorch-only result)
qdm                  yes       no     -           no    W, s, z, clip logits, other params
lsq                  no (data) no     -           no    same; ONE clip row for all timesteps
efficientdm          yes       no     -           yes   LoRA A, B, s, z, clip logits (W frozen)
===================  ========  =====  ==========  ====  ==========================================

EfficientDM merges its LoRA into the weight *before* quantization, ``Qw(W + B A)``; this is done
with ``torch.nn.utils.parametrize`` on ``QuantLinear.weight`` so ``QuantLinear`` is unchanged,
and the LoRA is folded into W for good at the end (``merge_loras``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from qvgen_export.quant.modules import QuantizedWan, QuantLinear

from .config import Method
from .phi import Phi, attach_phis, detach_phis, phi_key


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    teacher: bool
    phi: bool
    rank_decay: bool
    lora: bool
    train_weights: bool


SPECS: dict[Method, MethodSpec] = {
    Method.QVGEN: MethodSpec(teacher=True, phi=True, rank_decay=True, lora=False, train_weights=True),
    Method.QVGEN_KEEP_PHI: MethodSpec(teacher=True, phi=True, rank_decay=False, lora=False, train_weights=True),
    Method.QDM: MethodSpec(teacher=True, phi=False, rank_decay=False, lora=False, train_weights=True),
    Method.LSQ: MethodSpec(teacher=False, phi=False, rank_decay=False, lora=False, train_weights=True),
    Method.EFFICIENTDM: MethodSpec(teacher=True, phi=False, rank_decay=False, lora=True, train_weights=False),
}


class LoRAMerge(nn.Module):
    """Parametrization ``W -> W + B @ A`` (``A [r, K]`` Kaiming-uniform, ``B [N, r]`` zero: starts at W)."""

    def __init__(self, out_features: int, in_features: int, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.A = nn.Parameter(torch.empty(rank, in_features).uniform_(-bound, bound, generator=generator))
        self.B = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.B @ self.A


def attach_loras(layers: dict[str, QuantLinear], rank: int, seed: int) -> None:
    gen = torch.Generator("cpu").manual_seed(seed)
    for layer in layers.values():
        r = min(rank, layer.in_features, layer.out_features)
        parametrize.register_parametrization(layer, "weight", LoRAMerge(layer.out_features, layer.in_features, r, gen))


def merge_loras(layers: dict[str, QuantLinear]) -> None:
    """Fold ``B A`` into W (``W <- W + B A``) and drop the parametrization."""
    for layer in layers.values():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)


class Student(nn.Module):
    """The trained model: ``qmodel`` (a QuantizedWan) plus its Phi modules, one module tree so that
    DDP/FSDP and the optimizer see every trained parameter. ``forward`` returns the velocity."""

    def __init__(self, qmodel: QuantizedWan) -> None:
        super().__init__()
        self.qmodel = qmodel
        self.phis = nn.ModuleDict()

    def layers(self) -> dict[str, QuantLinear]:
        return self.qmodel.quant_linears()

    def add_phis(self, rank: int | Callable[[QuantLinear], int]) -> dict[str, torch.Tensor]:
        """Attach Phi to every quantized layer; returns each layer's error spectrum (for logging)."""
        layers = self.layers()
        phis = attach_phis(layers, rank)
        spectra = {}
        for name, phi in phis.items():
            self.phis[phi_key(name)] = phi
            spectra[name] = phi.spectrum()
        return spectra

    def phi_items(self) -> dict[str, Phi]:
        layers = self.layers()
        return {name: self.phis[phi_key(name)] for name in layers if phi_key(name) in self.phis}  # type: ignore[misc]

    def delete_phis(self) -> None:
        detach_phis(self.layers())
        self.phis = nn.ModuleDict()

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.qmodel(hidden_states, timestep, cond, return_dict=False)[0]


def build_student(
    teacher: nn.Module,
    method: Method,
    qconfig: object,
    phi_rank: int | Callable[[QuantLinear], int],
    lora_rank: int,
    seed: int,
) -> tuple[Student, dict[str, torch.Tensor]]:
    """Quantize a copy of ``teacher`` (QVGen init: MSE weight ranges, clip logit(0.95)) for ``method``.

    ``phi_rank`` is the Phi rank to attach now (0: none, e.g. when resuming in the final phase), or
    a function of the layer giving its rank (``TrainConfig.layer_phi_rank``).
    Returns the student and, if Phi was attached, the singular values of each layer's initial Phi.
    """
    import copy

    spec = SPECS[method]
    qmodel = QuantizedWan.from_float(copy.deepcopy(teacher).float(), qconfig, init=True)  # type: ignore[arg-type]
    qmodel.train()
    layers = qmodel.quant_linears()
    for layer in layers.values():
        layer.lsq_grad_scaling = True  # gradients of s and z scaled by 1/sqrt(K * qmax)
    student = Student(qmodel)
    spectra: dict[str, torch.Tensor] = {}
    if spec.phi and (callable(phi_rank) or phi_rank > 0):
        spectra = student.add_phis(phi_rank)
    if spec.lora:
        attach_loras(layers, lora_rank, seed)
    for name, p in student.named_parameters():
        p.requires_grad_(trainable(name, spec, p))
    return student, spectra


def trainable(name: str, spec: MethodSpec, p: nn.Parameter) -> bool:
    if name.endswith("w_zero") and not p.requires_grad:
        return False  # symmetric schemes fix the zero point
    if spec.train_weights:
        return True
    return name.endswith(("w_scale", "w_zero", "clip_lower", "clip_upper", ".A", ".B"))


def lora_lr_groups(student: Student, factor: float) -> list[tuple[str, list[nn.Parameter], float]]:
    """``(layer name, [A, B], lr)`` per LoRA'd layer, ``lr = factor x mean(w_scale)``.

    EfficientDM's official training script sets each layer's LoRA learning rate to its mean weight
    quantization step / 2500, so a layer's update is sized to its quantization grid. Computed from
    the steps at build time; a resumed run takes the saved groups' rates (state.py), so the
    trained steps never change it.
    """
    out = []
    for name, layer in student.layers().items():
        if parametrize.is_parametrized(layer, "weight"):
            lora = layer.parametrizations.weight[0]
            lr = factor * float(layer.w_scale.detach().float().mean())
            out.append((name, [lora.A, lora.B], lr))
    return out


def param_group_of(name: str) -> str:
    """``clip`` (activation clip logits), ``qparams`` (s, z) or ``main`` (W, L, R, LoRA, others)."""
    if name.endswith(("clip_lower", "clip_upper")):
        return "clip"
    if name.endswith(("w_scale", "w_zero")):
        return "qparams"
    return "main"
