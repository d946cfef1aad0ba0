"""The codec interface: tensors of the global-adapter update <-> one bytes payload.

A codec is registered under a name that travels in the frame header and the handshake. The sender
encodes with its own options; the receiver decodes from the payload, the tensor manifest and the
codec parameters of the header alone, and validates everything against `DecodeLimits` before it
allocates (peer bytes are untrusted).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedpeer.errors import CodecError

__all__ = [
    "Codec",
    "CodecError",
    "DecodeLimits",
    "Encoded",
    "TensorSpec",
    "available_codecs",
    "get_codec",
    "manifest_of",
    "register",
]


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


@dataclass(frozen=True)
class Encoded:
    payload: bytes
    params: dict[str, str]
    raw_bytes: int  # the same tensors as plain fp32, for ratios


@dataclass(frozen=True)
class DecodeLimits:
    # Upper bound on the decompressed size of one payload; larger declared sizes are refused.
    max_payload_bytes: int = 1 << 30


class Codec(ABC):
    name: ClassVar[str]

    @abstractmethod
    def encode(self, tensors: Mapping[str, torch.Tensor]) -> Encoded:
        """Compress tensors (any device, float) in their iteration order."""

    @abstractmethod
    def decode(
        self, payload: bytes, manifest: Sequence[TensorSpec], params: Mapping[str, str], limits: DecodeLimits
    ) -> dict[str, torch.Tensor]:
        """Rebuild float32 CPU tensors in manifest order or raise CodecError."""

    @abstractmethod
    def estimate_ratio(self, manifest: Sequence[TensorSpec]) -> float:
        """Expected fp32 bytes / payload bytes for tensors of this manifest (before zstd)."""


_REGISTRY: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"codec name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_codec(name: str, **options: object) -> Codec:
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None
    return cls(**options)  # type: ignore[arg-type]


def available_codecs() -> list[str]:
    return sorted(_REGISTRY)


def manifest_of(tensors: Mapping[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(name, tuple(t.shape), "float32") for name, t in tensors.items()]
