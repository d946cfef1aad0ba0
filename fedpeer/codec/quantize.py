"""Blockwise quantization of one flat float vector ("part"): int8 or int4 codes with fp16 scales.

A part x of n values is cut into blocks of `block` consecutive values. Each block b stores one fp16
scale s_b and one integer code per value; the part itself stores one fp32 scale M = max|x|:

    x_i ≈ M · s_b · c_i / qmax,   c_i ∈ [-qmax, qmax],   s_b = max_{i∈b} |x_i| / M ∈ [0, 1]

Why the per-part fp32 scale: late-training updates are small (|x| ~ 1e-6). Plain fp16 scales
absmax/qmax would land among fp16 subnormals or flush to zero and silently drop whole blocks;
relative block scales in [0, 1] keep fp16's 11-bit precision whatever the magnitude of the update.

`bits = 16` stores x / M as fp16 (no codes, no block scales). Codes are symmetric (int8 in
[-127, 127], int4 in [-7, 7]) so that zero is exact and the quantizer has no sign bias; int4 codes
are packed two per byte (low nibble first) as c + 8.

Encoding runs on the device of x; decoding runs on CPU tensors built from untrusted bytes and
checks that every scale is finite and non-negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedpeer.codec.options import check_quant
from fedpeer.errors import CodecError

__all__ = ["Quantized", "dequantize", "part_sizes", "quantize"]

# The bit widths and block bounds, and their check, are in `fedpeer.codec.options`.
_QMAX = {4: 7, 8: 127}


@dataclass(frozen=True)
class Quantized:
    """One quantized part: integer codes, fp16 values (block scales, or the data at 16 bits), fp32 scale."""

    codes: torch.Tensor  # uint8, ceil(n·bits/8) bytes (empty at 16 bits)
    halfs: torch.Tensor  # float16: one scale per block, or the n values / M at 16 bits
    scale: torch.Tensor  # float32, shape (1,): M = max|x|


def part_sizes(n: int, bits: int, block: int) -> tuple[int, int]:
    """(code bytes, fp16 items) of a part of n values; the fp32 scale adds one float32."""
    if bits == 16:
        return 0, n
    return (n * bits + 7) // 8, -(-n // block)


def quantize(x: torch.Tensor, bits: int, block: int, generator: torch.Generator | None = None) -> Quantized:
    """Quantize a flat float32 vector on its device; `generator` turns on stochastic rounding.

    1. M = max|x| (fp32); y = x / M, so that |y| <= 1 whatever the magnitude of x.
    2. At 16 bits: y as fp16, done.
    3. Per block: s_b = max|y| over the block, rounded to fp16 *before* use, so that the decoder
       multiplies by exactly the scale the encoder divided by.
    4. c = round(y / s_b · qmax), to nearest or stochastically (floor(v + u), u ~ U[0, 1): unbiased,
       E[c] = v), clamped to ±qmax (fp16 rounding of s_b may push |v| just past qmax).
    5. int8: codes as bytes; int4: c + 8 packed two per byte.
    """
    check_quant(bits, block)
    x = x.reshape(-1).to(torch.float32)
    m = x.abs().max() if x.numel() else torch.zeros((), device=x.device)
    if not bool(torch.isfinite(m)):
        raise CodecError("cannot quantize NaN or Inf")
    y = x / m if float(m) > 0 else torch.zeros_like(x)
    scale = m.reshape(1).to(torch.float32)
    if bits == 16:
        return Quantized(torch.empty(0, dtype=torch.uint8, device=x.device), y.to(torch.float16), scale)
    n, qmax = y.numel(), _QMAX[bits]
    blocks = -(-n // block)
    padded = torch.nn.functional.pad(y, (0, blocks * block - n)).reshape(blocks, block)
    s16 = padded.abs().amax(dim=1).to(torch.float16)
    s32 = s16.to(torch.float32)
    inv = torch.where(s32 > 0, qmax / s32.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(s32))
    v = (padded * inv[:, None]).reshape(-1)[:n]
    if generator is None:
        c = torch.round(v)
    else:
        c = torch.floor(v + torch.rand(v.shape, generator=generator, device=v.device, dtype=v.dtype))
    c = c.clamp_(-qmax, qmax).to(torch.int16)
    return Quantized(_pack(c, bits), s16, scale)


def dequantize(q: Quantized, n: int, bits: int, block: int) -> torch.Tensor:
    """Inverse of `quantize` for n values (fp32, on the device of the codes); checks the scales."""
    check_quant(bits, block)
    if q.scale.numel() != 1 or not bool(torch.isfinite(q.scale).all()) or float(q.scale) < 0:
        raise CodecError("part scale is negative, NaN or Inf")
    m = q.scale.to(torch.float32)
    halfs = q.halfs.to(torch.float32)
    if not bool(torch.isfinite(halfs).all()):
        raise CodecError("fp16 values or block scales are NaN or Inf")
    if bits == 16:
        return halfs * m
    if bool((halfs < 0).any()):
        raise CodecError("negative block scale")
    c = _unpack(q.codes, n, bits).to(torch.float32)
    # One multiply per block, then broadcast: the scales never get expanded to n values.
    steps = halfs * (m / _QMAX[bits])
    padded = torch.nn.functional.pad(c, (0, steps.numel() * block - n)).reshape(-1, block)
    return (padded * steps[:, None]).reshape(-1)[:n]


def _pack(c: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return c.to(torch.int8).view(torch.uint8)
    u = (c + 8).to(torch.uint8)
    if u.numel() % 2:
        u = torch.nn.functional.pad(u, (0, 1), value=8)  # pad nibble decodes to 0, never read back
    pairs = u.reshape(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def _unpack(codes: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    if bits == 8:
        return codes.view(torch.int8)[:n]
    low = (codes & 0x0F).to(torch.int16) - 8
    high = (codes >> 4).to(torch.int16) - 8
    return torch.stack((low, high), dim=1).reshape(-1)[:n]
