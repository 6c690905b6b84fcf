"""Parameter and multiply-accumulate (MAC) counting for pose models.

MACs are counted per call of the matrix-product operators, seen through a ``TorchFunctionMode``, so
functional code (attention, einsum) is counted as well as modules:

* ``conv`` (conv1d/2d/3d): ``B * prod(weight.shape) * prod(output spatial)``;
* ``conv_transpose``: ``B * prod(weight.shape) * prod(INPUT spatial)``: every input pixel is
  multiplied once by the whole kernel. HigherHRNet's ``get_model_summary`` (and the "GFLOPs" of its
  README) multiplies by the OUTPUT spatial size instead, 4x too much for its stride-2 deconv; that
  convention is kept as :attr:`MacReport.total_official_deconv` for comparison;
* ``linear``: ``rows * in_features * out_features``;
* ``matmul`` (matmul, mm, bmm, addmm, baddbmm, ``@``) and ``einsum`` (two operands): one MAC per
  product term;
* ``attention`` (``F.scaled_dot_product_attention``): ``Q K^T`` plus ``A V``, i.e.
  ``batch * heads * Nq * Nk * (d_qk + d_v)``. ``torch.utils.flop_counter`` counts 0 for the CPU SDPA
  kernels, which is why this module does its own counting.

BatchNorm, activations, softmax, additions and interpolation are not counted (ptflops / fvcore
convention). One MAC = one multiply + one add (FLOPs ~ 2 x MACs).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

MAC_KINDS = ("conv", "conv_transpose", "linear", "matmul", "einsum", "attention")

_CONV = {F.conv1d, F.conv2d, F.conv3d}
_CONV_T = {F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}
_MATMUL = {
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.baddbmm,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.Tensor.__rmatmul__,
    torch.Tensor.mm,
    torch.Tensor.bmm,
}


# --------------------------------------------------------------------------------------------------
# parameters
def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_breakdown(model: nn.Module, groups: dict[str, Iterable[str]] | None = None) -> dict[str, int]:
    """Parameters per group of top-level children.

    Args:
        groups: ``{group name: top-level child names}``; children not named go to ``'other'``.
            ``None`` gives one entry per top-level child.

    Returns:
        ``{group: count}`` in insertion order, with a ``'total'`` entry last.
    """
    per_child: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        per_child[name.split(".")[0]] += p.numel()
    if groups is None:
        out = dict(per_child)
    else:
        owner = {child: group for group, children in groups.items() for child in children}
        out = {group: 0 for group in groups}
        for child, n in per_child.items():
            group = owner.get(child, "other")
            out[group] = out.get(group, 0) + n
    out["total"] = count_parameters(model)
    return out


# --------------------------------------------------------------------------------------------------
# MACs
@dataclass
class MacReport:
    """MACs of one forward pass.

    Attributes:
        by_kind: MACs per operator kind (:data:`MAC_KINDS`), conv-transpose at input resolution.
        by_module: MACs per module path (``''`` = code outside any submodule) that issued the op.
        conv_transpose_output_res: conv-transpose MACs under the official "output resolution" formula.
    """

    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MAC_KINDS, 0))
    by_module: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    conv_transpose_output_res: int = 0

    @property
    def total(self) -> int:
        """Honest MACs: conv-transpose at input resolution, attention included."""
        return sum(self.by_kind.values())

    @property
    def total_official_deconv(self) -> int:
        """The same count with conv-transposes at output resolution (HigherHRNet README convention)."""
        return self.total - self.by_kind["conv_transpose"] + self.conv_transpose_output_res

    def by_prefix(self, groups: dict[str, Iterable[str]]) -> dict[str, int]:
        """MACs per group of top-level module names (first path component); the rest -> ``'other'``."""
        owner = {child: group for group, children in groups.items() for child in children}
        out = {group: 0 for group in groups}
        for path, macs in self.by_module.items():
            group = owner.get(path.split(".")[0], "other")
            out[group] = out.get(group, 0) + macs
        return out


def _shape_numel(shape: Iterable[int]) -> int:
    return math.prod(int(s) for s in shape)


def _einsum_macs(equation: str, operands: tuple[torch.Tensor, ...]) -> int:
    """Product of every index size of a two-operand einsum (each output/contracted combination once)."""
    if len(operands) != 2 or "..." in equation:
        raise NotImplementedError(f"MAC counting supports two-operand einsum without '...': {equation!r}")
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for letters, tensor in zip(inputs, operands):
        for letter, size in zip(letters, tensor.shape):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    return _shape_numel(sizes.values())


def op_macs(func: Callable, args: tuple, kwargs: dict, out: Any) -> tuple[str, int, int] | None:
    """``(kind, macs, macs_official)`` for one operator call, or None when it is not counted.

    ``macs_official`` differs from ``macs`` only for conv-transposes (output-resolution formula)."""
    if func in _CONV:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        batched = x.dim() == w.dim()  # conv1d/2d/3d also accept an unbatched (C, *spatial) input
        batch = int(out.shape[0]) if batched else 1
        macs = batch * w.numel() * _shape_numel(out.shape[2:] if batched else out.shape[1:])
        return "conv", macs, macs
    if func in _CONV_T:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        batched = x.dim() == w.dim()
        batch = int(x.shape[0]) if batched else 1
        spatial_in = x.shape[2:] if batched else x.shape[1:]
        spatial_out = out.shape[2:] if batched else out.shape[1:]
        return (
            "conv_transpose",
            batch * w.numel() * _shape_numel(spatial_in),
            batch * w.numel() * _shape_numel(spatial_out),
        )
    if func is F.linear:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        macs = (x.numel() // int(x.shape[-1])) * w.numel()
        return "linear", macs, macs
    if func in _MATMUL:
        a = args[-2] if func in (torch.addmm, torch.baddbmm) else args[0]
        k = int(a.shape[-1])
        macs = out.numel() * k
        return "matmul", macs, macs
    if func is torch.einsum:
        equation, *operands = args
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        macs = _einsum_macs(equation, tuple(operands))
        return "einsum", macs, macs
    if func is F.scaled_dot_product_attention:
        q, k, v = args[0], args[1], args[2]
        batch_heads = _shape_numel(out.shape[:-2])
        macs = batch_heads * int(q.shape[-2]) * int(k.shape[-2]) * (int(q.shape[-1]) + int(v.shape[-1]))
        return "attention", macs, macs
    return None


class _MacMode(TorchFunctionMode):
    """Counts MACs of every matrix-product call; attributes them to the innermost running module."""

    def __init__(self, report: MacReport, module_stack: list[str]):
        super().__init__()
        self.report = report
        self.module_stack = module_stack

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counted = op_macs(func, args, kwargs, out)
        if counted is not None:
            kind, macs, macs_official = counted
            self.report.by_kind[kind] += macs
            self.report.by_module[self.module_stack[-1]] += macs
            if kind == "conv_transpose":
                self.report.conv_transpose_output_res += macs_official
        return out


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: torch.Tensor) -> MacReport:
    """MACs of ``model(*inputs)`` (eval mode is the caller's choice; batch as given).

    Returns:
        :class:`MacReport` with totals per operator kind and per module path.
    """
    report = MacReport()
    stack = [""]
    handles = []

    def leave(_module: nn.Module, _inp: Any, _out: Any) -> None:
        stack.pop()  # a forward hook that returned a value would replace the module's output

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda _m, _i, name=name: stack.append(name)))
            handles.append(module.register_forward_hook(leave))
    try:
        with _MacMode(report, stack):
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    report.by_module = dict(report.by_module)
    return report
