"""The tensor vocabulary every layer shares: a state, a tensor spec, a manifest.

- `State`: named tensors that a function owns or returns (a model's adapter, an update, a public copy).
- `StateView`: named tensors that a function only reads (any mapping will do).
- `TensorSpec`: name, shape and dtype of one tensor, as a receiver expects it.
- `Manifest`: the specs of an update's tensors, in the order they travel.

A bottom module: it imports nothing from fedpeer, so the model, the codecs, the wire and gossip can
all import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import torch

__all__ = ["Manifest", "State", "StateView", "TensorSpec", "manifest_of"]

State: TypeAlias = dict[str, torch.Tensor]
StateView: TypeAlias = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor of an update, as the receiver expects it."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


Manifest: TypeAlias = Sequence[TensorSpec]


def manifest_of(tensors: StateView) -> list[TensorSpec]:
    """The manifest of `tensors` in their iteration order (every tensor travels as float32)."""
    return [TensorSpec(name, tuple(t.shape), "float32") for name, t in tensors.items()]
