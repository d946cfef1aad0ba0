"""The codec interface: tensors of the global-adapter update <-> one bytes payload.

A codec is registered under a name that travels in the frame header and the handshake. The sender
encodes with its own options; the receiver decodes from the payload, the tensor manifest and the
codec parameters of the header alone, and validates everything against `DecodeLimits` before it
allocates (peer bytes are untrusted). The checks every codec shares are here: `check_manifest`,
`check_payload` (decode) and `check_encodable` (encode).

The built-in codecs register when their module is imported; `get_codec` and `available_codecs`
import them first, so that the package itself can stay free of torch (see `fedpeer.codec`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedpeer.errors import CodecError
from fedpeer.tensors import Manifest, State, StateView, TensorSpec, manifest_of

__all__ = [
    "Codec",
    "CodecError",
    "DecodeLimits",
    "Encoded",
    "FP32_BYTES",
    "TensorSpec",
    "available_codecs",
    "check_encodable",
    "check_manifest",
    "check_payload",
    "fp32_bytes",
    "get_codec",
    "manifest_of",
    "register",
]

# Bytes of one value as plain fp32: what ratios and raw sizes are counted against.
FP32_BYTES = 4


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
    def encode(self, tensors: StateView) -> Encoded:
        """Compress tensors (any device, float) in their iteration order."""

    @abstractmethod
    def decode(
        self, payload: bytes, manifest: Manifest, params: Mapping[str, str], limits: DecodeLimits
    ) -> State:
        """Rebuild float32 CPU tensors in manifest order or raise CodecError."""

    @abstractmethod
    def estimate_ratio(self, manifest: Manifest) -> float:
        """Expected fp32 bytes / payload bytes for tensors of this manifest (before zstd)."""


_REGISTRY: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"codec name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _import_builtins() -> None:
    """Import the built-in codecs, which registers them (the package does not import them itself)."""
    from fedpeer.codec import pipeline, v1  # noqa: F401


def get_codec(name: str, **options: object) -> Codec:
    _import_builtins()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None
    return cls(**options)  # type: ignore[arg-type]


def available_codecs() -> list[str]:
    _import_builtins()
    return sorted(_REGISTRY)


def fp32_bytes(manifest: Manifest) -> int:
    """Bytes of the manifest's tensors as plain fp32 (`Encoded.raw_bytes`)."""
    return FP32_BYTES * sum(s.numel for s in manifest)


# ----------------------------------------------------------------------------- shared checks
def check_encodable(name: str, t: torch.Tensor) -> None:
    """Refuse what no codec can send: not a floating-point tensor, or empty (decoders refuse zero dims)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise CodecError(f"tensor {name!r} must be a floating-point torch.Tensor")
    if t.numel() == 0:
        raise CodecError(f"tensor {name!r} is empty (shape {tuple(t.shape)}); decoders refuse zero dims")


def check_payload(payload: object) -> None:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")


def check_manifest(manifest: Manifest, max_items: int) -> list[int]:
    """Element count per manifest entry, refusing bad entries before anything is allocated: not a
    named TensorSpec, a name twice, a dtype other than float32, a dim that is not a positive int,
    or more than `max_items` values in all."""
    counts: list[int] = []
    seen: set[str] = set()
    total = 0
    for spec in manifest:
        if not isinstance(spec, TensorSpec) or not isinstance(spec.name, str) or spec.name == "":
            raise CodecError(f"manifest entry {spec!r} is not a named TensorSpec")
        if spec.name in seen:
            raise CodecError(f"manifest names tensor {spec.name!r} twice")
        seen.add(spec.name)
        if spec.dtype != "float32":
            raise CodecError(f"tensor {spec.name!r}: dtype {spec.dtype!r} is not supported (float32 only)")
        n = 1
        for d in spec.shape:
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise CodecError(
                    f"tensor {spec.name!r}: shape {spec.shape!r} has a non-positive or non-int dim"
                )
            n *= d
            # Checked per dim so a hostile shape cannot even build a huge Python int.
            if total + n > max_items:
                raise CodecError(f"tensor {spec.name!r}: shape {spec.shape!r} exceeds the payload limit")
        total += n
        counts.append(n)
    return counts
