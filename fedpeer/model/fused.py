"""Both adapters of a target module in one LoRA pass: W0·x + [B_g·s_g  B_l·s_l]·([A_g; A_l]·x).

peft runs two active adapters as two chains of small matmuls per module (dropout, A, B, scale, add,
twice), which on a GPU costs about 30 % of training speed against one adapter (issue #14). Their sum
is one LoRA of rank r_g + r_l whose A stacks the A's and whose B puts the scaled B's side by side,
so one pair of matmuls computes both. The parameters stay peft's own (lora_A.global, lora_B.local,
...): the roles, the send path's allowlist, optimizer state, checkpoints and PEFT export see exactly
what they saw before; only the arithmetic is done at once. The concatenation is part of the graph,
so each adapter's gradient is its slice of the fused one.

`fuse_dual_lora(model)` switches every eligible LoRA Linear of a PeftModel to this forward. A module
falls back to peft's own forward whenever the fused one would not compute the same thing: adapters
disabled or merged, other active adapters, per-row adapter names, a LoRA variant (DoRA, ...).
With adapter dropout both adapters see the same dropout mask (peft draws one per adapter); with
dropout 0 (the default) and in evaluation the output is peft's to float rounding.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear

__all__ = ["FusedDualLinear", "fuse_dual_lora", "fused_modules", "unfuse_dual_lora"]


class FusedDualLinear(LoraLinear):
    """A peft LoRA Linear whose adapters `fused_names` run as one LoRA (same parameters, same state)."""

    fused_names: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        names = self.fused_names
        if (
            self.disable_adapters
            or self.merged
            or kwargs.get("adapter_names") is not None
            or tuple(self.active_adapters) != names
            or any(n in self.lora_variant for n in names)
        ):
            return super().forward(x, *args, **kwargs)
        kwargs.pop("adapter_names", None)
        result = self.base_layer(x, *args, **kwargs)
        a = torch.cat([cast(torch.Tensor, self.lora_A[n].weight) for n in names])
        b = torch.cat([self.lora_B[n].weight * self.scaling[n] for n in names], dim=1)
        h = self.lora_dropout[names[0]](self._cast_input_dtype(x, a.dtype))
        return (result + F.linear(F.linear(h, a), b)).to(result.dtype)


def fuse_dual_lora(model: torch.nn.Module, names: tuple[str, ...]) -> int:
    """Compute the adapters `names` (in this order) of every LoRA Linear of `model` in one pass.

    Returns the number of modules switched; one without all of `names` keeps peft's forward. Only the
    module's class changes (to a subclass), so isinstance checks, state dicts and copies still work."""
    count = 0
    for module in model.modules():
        if type(module) in (LoraLinear, FusedDualLinear):
            lora = cast(LoraLinear, module)
            if all(n in lora.lora_A for n in names):
                lora.__class__ = FusedDualLinear
                cast(FusedDualLinear, lora).fused_names = tuple(names)
                count += 1
    return count


def unfuse_dual_lora(model: torch.nn.Module) -> None:
    """Back to peft's forward everywhere (for comparisons)."""
    for module in fused_modules(model):
        del module.fused_names
        cast(torch.nn.Module, module).__class__ = LoraLinear


def fused_modules(model: torch.nn.Module) -> list[FusedDualLinear]:
    return [m for m in model.modules() if isinstance(m, FusedDualLinear)]
