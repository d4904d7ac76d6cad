"""The "torch-int4" runtime backend: real W4A4 integer GEMMs inside a PyTorch model.

:class:`Int4Linear` replaces a fake-quantized :class:`~qvgen_export.quant.modules.QuantLinear`
by packed 4-bit weight codes and the native ``qvgen::w4a4_linear`` op (C++ reference on CPU,
CUDA kernels on GPU; see docs/native-kernels.md). It reads the per-sample timestep groups from
the same :class:`~qvgen_export.quant.modules.QuantContext` as the module it replaces, so a
converted ``QuantizedWan`` keeps diffusers' call signature and sampler loop.

Numerics: the activation codes, scales and zero points equal ``QuantLinear``'s bit for bit (the
same float32 formulas); the matmul is exact in integers, so outputs differ from ``QuantLinear``
only by float rounding of the epilogue versus PyTorch's float32 matmul (~1e-6 relative).

Limits: per-channel weight scales only (``w_scale [N, 1]``); per-group scales raise
``NotImplementedError``. Weight and activation bits 2..4 (4-bit containers).

Native import is lazy: importing this module does not load any shared library; the first
forward does (and raises ``NativeLibraryNotFoundError`` with build instructions if missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from qvgen_export.quant import functional as QF
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.packing import code_sums, pack_codes, to_kernel_layout, unpack_codes


def _per_channel(t: torch.Tensor, name: str, n: int) -> torch.Tensor:
    if t.dim() == 2 and t.shape[1] != 1:
        raise NotImplementedError(
            f"Int4Linear supports per-channel weight quantization only ({name} [N, 1]); got {name} with "
            f"{t.shape[1]} groups. The native epilogue applies one scale and zero point per output channel; "
            "per-group scales would need per-group partial sums (see docs/native-kernels.md)."
        )
    t = t.detach().reshape(-1).to(torch.float32)
    if t.numel() != n:
        raise ValueError(f"{name} must hold {n} values (one per output channel), got {t.numel()}")
    return t.contiguous()


class Int4Linear(nn.Module):
    """W4A4 linear running on packed codes: ``y = Qa(x) @ w_hat^T + b`` with integer accumulation.

    Buffers (the kernel layout, see ``qvgen_export.native.ops``):
      ``qweight [N, ldq]`` uint8 (checkpoint nibble order, rows zero-padded to 16 bytes) and
      ``w_sum [N]`` int32 (code sums for the zero-point correction) as buffers;
      ``clip_lower``/``clip_upper [G]`` float32 logits as buffers; ``w_scale [N]``, ``w_zero [N]``
      and ``bias [N]`` (or None) as frozen float32 Parameters.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        qweight: torch.Tensor,
        w_scale: torch.Tensor,
        w_zero: torch.Tensor,
        bias: torch.Tensor | None,
        clip_lower: torch.Tensor,
        clip_upper: torch.Tensor,
        config: QuantConfig,
        ctx: Any,
    ) -> None:
        """Build from checkpoint-layout codes.

        Args:
            qweight: packed codes ``[N, ceil(K/2)]`` uint8 as the checkpoint stores them
                (``quant/packing.py``: low nibble = even k).
            w_scale, w_zero: ``[N]`` or ``[N, 1]`` float scale and float zero point.
            bias: ``[N]`` or None.
            clip_lower, clip_upper: ``[timestep_groups]`` clip logits.
            config: the layer's :class:`QuantConfig` (bits, ``act_clip_base``).
            ctx: the shared context whose ``group`` attribute holds the per-sample timestep
                groups ``[B]`` (int64) during a forward.
        Raises:
            NotImplementedError: per-group weight scales or bit widths above 4.
            ValueError: shapes that do not match ``in_features``/``out_features``.
        """
        super().__init__()
        if config.weight_bits > 4 or config.act_bits > 4:
            raise NotImplementedError(
                f"Int4Linear needs weight and activation codes in 4-bit containers; got {config.name}"
            )
        n, k = out_features, in_features
        if qweight.dtype != torch.uint8 or tuple(qweight.shape) != (n, (k + 1) // 2):
            raise ValueError(
                f"qweight must be uint8 [{n}, {(k + 1) // 2}] (checkpoint packing), got {qweight.dtype} "
                f"{tuple(qweight.shape)}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.config = config
        self.act_bits = config.act_bits
        self.weight_bits = config.weight_bits
        self.act_clip_base = float(config.act_clip_base)
        object.__setattr__(self, "ctx", ctx)  # shared, not a submodule and not in state_dict

        qweight = qweight.detach()
        codes = unpack_codes(qweight.cpu(), k, 4)  # [N, K] uint8
        if codes.numel() and int(codes.max()) > config.weight_qmax:
            raise ValueError(f"weight codes exceed {config.weight_qmax} for {config.weight_bits}-bit weights")
        self.register_buffer("qweight", to_kernel_layout(qweight.cpu(), k).to(qweight.device))
        # Scales, zero points and bias are (frozen) Parameters rather than buffers because diffusers
        # reads a submodule's dtype from its first parameter (e.g. Wan's time embedder); codes and
        # code sums are integer buffers.
        self.w_scale = nn.Parameter(_per_channel(w_scale, "w_scale", n).to(qweight.device), requires_grad=False)
        self.w_zero = nn.Parameter(_per_channel(w_zero, "w_zero", n).to(qweight.device), requires_grad=False)
        self.register_buffer("w_sum", code_sums(codes).to(qweight.device))
        if bias is not None:
            b = bias.detach().reshape(-1).to(torch.float32).contiguous().to(qweight.device)
            self.bias = nn.Parameter(b, requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.register_buffer("clip_lower", clip_lower.detach().to(torch.float32).clone())
        self.register_buffer("clip_upper", clip_upper.detach().to(torch.float32).clone())

    @classmethod
    def from_quant_linear(cls, m: nn.Module) -> Int4Linear:
        """Same codes, scales, zero points, clip tables, bias and context as a ``QuantLinear``."""
        cfg: QuantConfig = m.config
        if m.w_scale.shape[1] != 1:
            _per_channel(m.w_scale, "w_scale", m.out_features)  # raises the per-group error
        # The layer's own codes: re-derived from a latent weight, or a loaded layer's packed ones.
        codes = m.codes()
        return cls(
            m.in_features,
            m.out_features,
            pack_codes(codes.cpu(), cfg.weight_bits).to(m.w_scale.device),
            m.w_scale,
            m.w_zero,
            m.bias,
            m.clip_lower,
            m.clip_upper,
            cfg,
            m.ctx,
        )

    def clip(self) -> tuple[torch.Tensor, torch.Tensor]:
        group = self.ctx.group
        if group is None:
            raise RuntimeError("Int4Linear called without a timestep group: call the model through QuantizedWan")
        group = group.to(self.clip_lower.device)
        return QF.clip_factors(self.clip_lower, self.clip_upper, group, self.act_clip_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from qvgen_export.native import ops  # registers torch.ops.qvgen.w4a4_linear on first use

        lo, hi = self.clip()
        lo, hi = lo.float(), hi.float()
        if x.is_cuda and ops.wgmma_prepared_ok(x, self.out_features):
            # Hopper with the CUTLASS wgmma path: INT8 weight codes prepared once per device (twice
            # the packed bytes), activations quantized straight to bytes; the same bits.
            op, weight = ops.w4a4_linear_u8, self._weight_u8()
        else:
            op, weight = ops.w4a4_linear, self.qweight
        return op(
            x,
            lo.reshape(-1).contiguous(),
            hi.reshape(-1).contiguous(),
            weight,
            # float32 even if the model was cast with .to(dtype): the kernels take float32 qparams
            self.w_scale.float(),
            self.w_zero.float(),
            self.w_sum,
            None if self.bias is None else self.bias.float(),
            self.in_features,
            self.act_bits,
        )

    def _weight_u8(self) -> torch.Tensor:
        """The weight codes one per byte (Hopper wgmma path), made once and kept (not saved).

        Rebuilt when ``qweight`` changes (another tensor, device or in-place version).
        """
        from qvgen_export.native import ops

        key = (self.qweight.device, self.qweight.data_ptr(), self.qweight._version)
        cached = self.__dict__.get("_qweight_u8")
        if cached is None or cached[0] != key:
            cached = (key, ops.unpack_u8(self.qweight, self.in_features))
            self.__dict__["_qweight_u8"] = cached
        return cached[1]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.config.name}, int4 kernels"


def convert_to_int4(model: nn.Module) -> list[str]:
    """Swap every ``QuantLinear`` inside ``model`` (in place) for an :class:`Int4Linear`.

    Works on a ``QuantizedWan`` or any module tree holding ``QuantLinear``s; the new modules
    share each old module's context. Returns the names of the swapped modules.

    Raises:
        NotImplementedError: a layer uses per-group weight scales or more than 4 bits.
        ValueError: no ``QuantLinear`` was found.
    """
    from qvgen_export.quant.modules import QuantLinear

    names = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    if not names:
        raise ValueError("the model holds no QuantLinear to convert")
    for name in names:
        old = model.get_submodule(name)
        new = Int4Linear.from_quant_linear(old)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return names


def load_int4_model(path: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """Load a quantized checkpoint (``docs/checkpoint-format.md``) as a torch-int4 ``QuantizedWan``.

    The checkpoint loader validates the file and builds packed ``QuantLinear``s (codes checked to
    round-trip); those are then swapped for :class:`Int4Linear` (on ``device`` if given). The result
    keeps diffusers' transformer call signature.

    Raises:
        CheckpointError: the file is not a valid quantized checkpoint.
        NotImplementedError: the checkpoint uses per-group weight scales or more than 4 bits.
    """
    from qvgen_export.checkpoint.format import load_quantized_model

    model, _ = load_quantized_model(path)
    if device is not None:
        model = model.to(device)
    convert_to_int4(model)
    return model


def require_native_library(cuda: bool = False) -> None:
    """Raise one ``FileNotFoundError`` line when the native INT4 library is absent.

    A wheel does not ship the library (it is built per machine), nor ``scripts/build_native.sh``:
    the line says where it was searched and how to get it, from a checkout or from an install.
    """
    from qvgen_export.native import _lib

    name = _lib.CUDA_LIBRARY if cuda else _lib.REF_LIBRARY
    if _lib.find_library(name) is not None:
        return
    searched = ", ".join(str(d) for d in _lib.library_dirs())
    if _lib.BUILD_SCRIPT.is_file():
        how = f"build it with `bash {_lib.BUILD_SCRIPT}`"
    else:  # an installed package: the build script lives in the source repository
        how = "build it from a qvgen-export source checkout with `bash scripts/build_native.sh`"
    raise FileNotFoundError(
        f"the native INT4 library {name} is not built (searched {searched}); {how}, "
        "then set QVGEN_NATIVE_LIB_DIR to the folder holding it (build/native/lib)"
    )
