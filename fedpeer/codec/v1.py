"""Version-1 codecs: every tensor flattened in manifest order, cast, byte-shuffled, one zstd frame.

- `lossless`: float32, exact round trip.
- `fp16`: float16 on the wire (half the bytes before zstd); decoded back to float32.

Decoding trusts nothing in the payload or the params: sizes come from the manifest (which the caller
has checked against the local model) and are bounded by `DecodeLimits` before decompressing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch

from fedpeer.codec.base import Codec, DecodeLimits, Encoded, TensorSpec, register
from fedpeer.codec.bytes import shuffle, unshuffle_split, zstd_compress, zstd_decompress
from fedpeer.errors import CodecError

__all__ = ["Fp16Codec", "LosslessCodec"]

_FP32_BYTES = 4


class _ShuffledZstdCodec(Codec):
    """Shared pipeline; subclasses pick the wire dtype."""

    wire_dtype: ClassVar[np.dtype]
    wire_torch_dtype: ClassVar[torch.dtype]

    def __init__(self, zstd_level: int = 3) -> None:
        # Levels 1-3: noise-like floats gain little from higher levels, which cost far more CPU.
        if isinstance(zstd_level, bool) or not isinstance(zstd_level, int) or not 1 <= zstd_level <= 22:
            raise CodecError(f"{self.name}: zstd_level must be an integer in 1..22, got {zstd_level!r}")
        self.zstd_level = zstd_level

    def encode(self, tensors: Mapping[str, torch.Tensor]) -> Encoded:
        flat = _flatten_fp32(tensors)
        wire = flat.to(self.wire_torch_dtype)
        if not bool(torch.isfinite(wire).all()):
            # Only on failure do we pay for locating the tensor; the happy path is one reduction.
            raise CodecError(f"{self.name}: cannot encode {_first_bad(tensors, self.wire_torch_dtype)}")
        # '<' pins little-endian on the wire whatever the host; a no-op view on x86/ARM.
        raw = wire.cpu().numpy().astype(self.wire_dtype.newbyteorder("<"), copy=False)
        payload = zstd_compress(shuffle(raw, self.wire_dtype.itemsize), self.zstd_level)
        return Encoded(payload, {"zstd_level": str(self.zstd_level)}, raw_bytes=flat.numel() * _FP32_BYTES)

    def decode(
        self, payload: bytes, manifest: Sequence[TensorSpec], params: Mapping[str, str], limits: DecodeLimits
    ) -> dict[str, torch.Tensor]:
        itemsize = self.wire_dtype.itemsize
        counts = _checked_counts(manifest, limits.max_payload_bytes // itemsize)
        expected = sum(counts) * itemsize  # <= the limit: _checked_counts bounded the items
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
        raw = zstd_decompress(payload, expected, limits.max_payload_bytes)
        out: dict[str, torch.Tensor] = {}
        for spec, chunk in zip(manifest, unshuffle_split(raw, itemsize, counts), strict=True):
            values = chunk.view(self.wire_dtype.newbyteorder("<")).astype(np.float32, copy=False)
            if not np.isfinite(values).all():
                raise CodecError(f"{self.name}: tensor {spec.name!r} decodes to NaN or Inf; refused")
            out[spec.name] = torch.from_numpy(values).reshape(spec.shape)
        return out


@register
class LosslessCodec(_ShuffledZstdCodec):
    """fp32 -> byte-shuffle -> zstd; decode is bit-exact."""

    name = "lossless"
    wire_dtype = np.dtype(np.float32)
    wire_torch_dtype = torch.float32

    def estimate_ratio(self, manifest: Sequence[TensorSpec]) -> float:
        return 1.0


@register
class Fp16Codec(_ShuffledZstdCodec):
    """fp16 -> byte-shuffle -> zstd; values beyond fp16 range are refused rather than clamped,
    since a clamped update would silently diverge from the sender's own public copy."""

    name = "fp16"
    wire_dtype = np.dtype(np.float16)
    wire_torch_dtype = torch.float16

    def estimate_ratio(self, manifest: Sequence[TensorSpec]) -> float:
        return 2.0


def _flatten_fp32(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One contiguous fp32 vector of all tensors in iteration order (inputs left untouched)."""
    parts = []
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise CodecError(f"tensor {name!r} must be a floating-point torch.Tensor")
        if t.numel() == 0:
            raise CodecError(f"tensor {name!r} is empty (shape {tuple(t.shape)}); decoders refuse zero dims")
        parts.append(t.detach().reshape(-1).to(torch.float32))
    if not parts:
        return torch.empty(0, dtype=torch.float32)
    # torch.cat copies once; the inputs are never written to.
    return torch.cat([p.to(parts[0].device) for p in parts])


def _first_bad(tensors: Mapping[str, torch.Tensor], wire: torch.dtype) -> str:
    for name, t in tensors.items():
        t32 = t.detach().to(torch.float32)
        if not bool(torch.isfinite(t32).all()):
            return f"tensor {name!r}: it contains NaN or Inf"
        if not bool(torch.isfinite(t32.to(wire)).all()):
            return f"tensor {name!r}: values up to {t32.abs().max().item():.4g} overflow {wire}"
    return "tensors: non-finite values"


def _checked_counts(manifest: Sequence[TensorSpec], max_items: int) -> list[int]:
    """Element count per manifest entry, refusing bad entries before anything is allocated."""
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
