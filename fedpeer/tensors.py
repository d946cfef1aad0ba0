"""The tensor vocabulary every layer shares: a state, a tensor spec, a manifest.

- `State`: named tensors that a function owns or returns (a model's adapter, an update, a public copy).
- `StateView`: named tensors that a function only reads (any mapping will do).
- `TensorSpec`: name, shape and dtype of one tensor, as a receiver expects it.
- `Manifest`: the specs of an update's tensors, in the order they travel; `manifest_digest` is what
  a frame carries of it.

A bottom module: it imports nothing from fedpeer, so the model, the codecs, the wire and gossip can
all import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import torch

__all__ = [
    "MANIFEST_DIGEST_BYTES",
    "Manifest",
    "State",
    "StateView",
    "TensorSpec",
    "manifest_digest",
    "manifest_of",
]

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


# BLAKE2b-128: collisions would need 2^64 work; a frame spends 16 bytes on it instead of a few
# hundred on the names and shapes themselves.
MANIFEST_DIGEST_BYTES = 16


def manifest_digest(manifest: Manifest) -> bytes:
    """A digest of the specs, in order: name, dtype and shape of each, unambiguously framed (lengths
    first), so that two manifests share a digest only when they are equal."""
    h = hashlib.blake2b(digest_size=MANIFEST_DIGEST_BYTES, person=b"fedpeer-manifest")
    h.update(len(manifest).to_bytes(8, "little"))
    for spec in manifest:
        for text in (spec.name, spec.dtype):
            raw = text.encode()
            h.update(len(raw).to_bytes(8, "little") + raw)
        h.update(len(spec.shape).to_bytes(8, "little"))
        for d in spec.shape:
            h.update(int(d).to_bytes(8, "little", signed=True))
    return h.digest()
