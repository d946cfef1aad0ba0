"""Blockwise quantization: per-element error bounds, tiny magnitudes, stochastic rounding, hostile scales."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.codec.options import MAX_BLOCK, MIN_BLOCK, check_quant
from fedpeer.codec.quantize import Quantized, dequantize, part_sizes, quantize
from fedpeer.errors import CodecError

QMAX = {4: 7, 8: 127}


def _bound(x: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """Largest error allowed per element with round-to-nearest.

    Half a quantization step of the block (absmax / qmax / 2), plus the fp16 rounding of the block
    scale (relative 2**-11, which can also clamp the block's largest value) and of M.
    """
    if bits == 16:
        m = x.abs().max()
        return x.abs() * 2.0**-11 + m * 2.0**-24
    n = x.numel()
    pad = torch.nn.functional.pad(x.abs(), (0, -(-n // block) * block - n)).reshape(-1, block)
    absmax = pad.amax(dim=1).repeat_interleave(block)[:n]
    return absmax * (0.5 / QMAX[bits] + 2.0**-10) + 1e-30


def _round_trip(x: torch.Tensor, bits: int, block: int, gen: torch.Generator | None = None) -> torch.Tensor:
    return dequantize(quantize(x, bits, block, gen), x.numel(), bits, block)


@pytest.mark.parametrize("bits", [4, 8, 16])
@pytest.mark.parametrize("block", [8, 64, 100])
@pytest.mark.parametrize("scale", [1e-9, 1e-3, 1.0, 1e5])
def test_round_trip_within_per_element_bound(bits: int, block: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(bits * block)
    # Heavy-tailed values with blocks of very different magnitudes, the hard case for block scales.
    x = torch.randn(1000, generator=gen) * torch.logspace(-3, 0, 1000)[torch.randperm(1000, generator=gen)]
    x = x * scale
    err = (_round_trip(x, bits, block) - x).abs()
    assert bool((err <= _bound(x, bits, block)).all()), float((err / _bound(x, bits, block)).max())


@pytest.mark.parametrize(("bits", "max_rel"), [(4, 0.13), (8, 0.008), (16, 3e-4)])
def test_relative_error_on_gaussians(bits: int, max_rel: float) -> None:
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    rel = float((_round_trip(x, bits, 64) - x).norm() / x.norm())
    assert rel <= max_rel
    assert rel >= max_rel / 4  # the stage is really lossy: the bound is not vacuous


def test_tiny_updates_keep_their_precision() -> None:
    """Block scales relative to a per-part fp32 scale: plain fp16 scales would flush these to zero."""
    x = torch.randn(512, generator=torch.Generator().manual_seed(1)) * 1e-9
    assert float(torch.tensor(1e-9 / 127).half()) == 0.0  # what a plain fp16 scale would be
    rel = float((_round_trip(x, 8, 64) - x).norm() / x.norm())
    assert rel < 0.01


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_zeros_and_block_maxima_are_exact(bits: int) -> None:
    assert torch.equal(_round_trip(torch.zeros(70), bits, 64), torch.zeros(70))
    x = torch.tensor([0.0, -3.0, 1.5, 0.0, 2.0])
    out = _round_trip(x, bits, 8)
    assert out[0] == 0 and out[3] == 0 and out[1] == -3.0  # the block's absmax maps to ±qmax exactly


@pytest.mark.parametrize("bits", [4, 8])
def test_stochastic_rounding_is_unbiased_and_within_one_step(bits: int) -> None:
    x = torch.randn(2048, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(3)
    draws = torch.stack([_round_trip(x, bits, 64, gen) for _ in range(64)])
    nearest = _round_trip(x, bits, 64)
    step_bound = 2 * _bound(x, bits, 64)  # a stochastic draw is at most one step away
    assert bool(((draws - x).abs() <= step_bound).all())
    bias = float((draws.mean(0) - x).norm() / x.norm())
    single = float((draws[0] - x).norm() / x.norm())
    # Averaging 64 independent draws shrinks the error ~8x; a biased rounding would not.
    assert bias < single / 4
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], nearest)


@pytest.mark.parametrize("n", [1, 7, 8, 63, 64, 65, 1001])
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_sizes_match_the_layout(n: int, bits: int) -> None:
    q = quantize(torch.randn(n), bits, 8)
    codes, halfs = part_sizes(n, bits, 8)
    assert (q.codes.numel(), q.halfs.numel(), q.scale.numel()) == (codes, halfs, 1)
    assert q.codes.dtype == torch.uint8 and q.halfs.dtype == torch.float16 and q.scale.dtype == torch.float32


def test_int4_codes_use_both_nibbles() -> None:
    q = quantize(torch.tensor([1.0, -1.0, 0.0]), 4, 8)
    # Low nibble first; the odd tail is padded with a zero code (8).
    assert q.codes.tolist() == [(7 + 8) | ((-7 + 8) << 4), 8 | (8 << 4)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    bits=st.sampled_from([4, 8, 16]),
    block=st.sampled_from([8, 16, 64, 256]),
    exponent=st.integers(-12, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_property(n: int, bits: int, block: int, exponent: int, seed: int) -> None:
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 10.0**exponent
    out = _round_trip(x, bits, block)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert bool(((out - x).abs() <= _bound(x, bits, block)).all())


@pytest.mark.parametrize(
    ("bits", "block"),
    [(3, 64), (32, 64), (True, 64), (8, MIN_BLOCK - 1), (8, MAX_BLOCK + 1), (8, 64.0), (8, True)],
)
def test_bad_bits_or_block_refused(bits: object, block: object) -> None:
    with pytest.raises(CodecError):
        check_quant(bits, block)  # type: ignore[arg-type]


HOSTILE = [
    pytest.param([1.0], [float("nan")], 8, id="nan-block-scale"),
    pytest.param([1.0], [-1.0], 8, id="negative-block-scale"),
    pytest.param([float("inf")], [1.0], 8, id="inf-part-scale"),
    pytest.param([-2.0], [1.0], 8, id="negative-part-scale"),
    pytest.param([1.0], [float("inf")] * 8, 16, id="inf-fp16-value"),
]


@pytest.mark.parametrize(("scale", "halfs", "bits"), HOSTILE)
def test_hostile_scales_refused(scale: list[float], halfs: list[float], bits: int) -> None:
    codes = torch.zeros(0 if bits == 16 else 8, dtype=torch.uint8)
    q = Quantized(codes, torch.tensor(halfs, dtype=torch.float16), torch.tensor(scale))
    with pytest.raises(CodecError):
        dequantize(q, 8, bits, 8)


def test_quantize_refuses_nan() -> None:
    with pytest.raises(CodecError, match="NaN"):
        quantize(torch.tensor([1.0, float("nan")]), 8, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_quantize_on_cuda_matches_cpu() -> None:
    x = torch.randn(1000)
    q = quantize(x.cuda(), 8, 64)
    assert q.codes.device.type == "cuda"
    cpu = Quantized(q.codes.cpu(), q.halfs.cpu(), q.scale.cpu())
    torch.testing.assert_close(dequantize(cpu, 1000, 8, 64), _round_trip(x, 8, 64))
