"""Version-1 codecs: every tensor flattened in manifest order, cast, byte-shuffled, one zstd frame.

- `lossless`: float32, exact round trip.
- `fp16`: float16 on the wire (half the bytes before zstd); decoded back to float32.

Decoding trusts nothing in the payload or the params: sizes come from the manifest (which the caller
has checked against the local model) and are bounded by `DecodeLimits` before decompressing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch

from fedpeer.codec.base import (
    FP32_BYTES,
    Codec,
    DecodeLimits,
    Encoded,
    check_encodable,
    check_manifest,
    check_payload,
    register,
)
from fedpeer.codec.bytes import shuffle, unshuffle_split, zstd_compress, zstd_decompress
from fedpeer.codec.options import check_zstd_level
from fedpeer.errors import CodecError
from fedpeer.tensors import Manifest, State, StateView

__all__ = ["Fp16Codec", "LosslessCodec"]


class _ShuffledZstdCodec(Codec):
    """Shared pipeline; subclasses pick the wire dtype."""

    wire_dtype: ClassVar[np.dtype]
    wire_torch_dtype: ClassVar[torch.dtype]

    def __init__(self, zstd_level: int = 3) -> None:
        check_zstd_level(self.name, zstd_level)
        self.zstd_level = zstd_level

    def encode(self, tensors: StateView) -> Encoded:
        flat = _flatten_fp32(tensors)
        wire = flat.to(self.wire_torch_dtype)
        if not bool(torch.isfinite(wire).all()):
            # Only on failure do we pay for locating the tensor; the happy path is one reduction.
            raise CodecError(f"{self.name}: cannot encode {_first_bad(tensors, self.wire_torch_dtype)}")
        # '<' pins little-endian on the wire whatever the host; a no-op view on x86/ARM.
        raw = wire.cpu().numpy().astype(self.wire_dtype.newbyteorder("<"), copy=False)
        payload = zstd_compress(shuffle(raw, self.wire_dtype.itemsize), self.zstd_level)
        return Encoded(payload, {"zstd_level": str(self.zstd_level)}, raw_bytes=flat.numel() * FP32_BYTES)

    def decode(
        self, payload: bytes, manifest: Manifest, params: Mapping[str, str], limits: DecodeLimits
    ) -> State:
        itemsize = self.wire_dtype.itemsize
        counts = check_manifest(manifest, limits.max_payload_bytes // itemsize)
        expected = sum(counts) * itemsize  # <= the limit: check_manifest bounded the items
        check_payload(payload)
        raw = zstd_decompress(payload, expected, limits.max_payload_bytes)
        out: State = {}
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

    def estimate_ratio(self, manifest: Manifest) -> float:
        return 1.0


@register
class Fp16Codec(_ShuffledZstdCodec):
    """fp16 -> byte-shuffle -> zstd; values beyond fp16 range are refused rather than clamped,
    since a clamped update would silently diverge from the sender's own public copy."""

    name = "fp16"
    wire_dtype = np.dtype(np.float16)
    wire_torch_dtype = torch.float16

    def estimate_ratio(self, manifest: Manifest) -> float:
        return 2.0


def _flatten_fp32(tensors: StateView) -> torch.Tensor:
    """One contiguous fp32 vector of all tensors in iteration order (inputs left untouched)."""
    parts = []
    for name, t in tensors.items():
        check_encodable(name, t)
        parts.append(t.detach().reshape(-1).to(torch.float32))
    if not parts:
        return torch.empty(0, dtype=torch.float32)
    # torch.cat copies once; the inputs are never written to.
    return torch.cat([p.to(parts[0].device) for p in parts])


def _first_bad(tensors: StateView, wire: torch.dtype) -> str:
    for name, t in tensors.items():
        t32 = t.detach().to(torch.float32)
        if not bool(torch.isfinite(t32).all()):
            return f"tensor {name!r}: it contains NaN or Inf"
        if not bool(torch.isfinite(t32.to(wire)).all()):
            return f"tensor {name!r}: values up to {t32.abs().max().item():.4g} overflow {wire}"
    return "tensors: non-finite values"
