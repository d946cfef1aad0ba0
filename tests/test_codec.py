"""Codec v1: round trips, error bounds for fp16, and hostile payloads rejected before allocation."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.codec import (
    CodecError,
    DecodeLimits,
    TensorSpec,
    available_codecs,
    get_codec,
    manifest_of,
)
from fedpeer.codec.bytes import shuffle, unshuffle, unshuffle_split, zstd_compress, zstd_decompress

LIMITS = DecodeLimits()
CODECS = ("lossless", "fp16")


def _round_trip(name: str, tensors: dict[str, torch.Tensor], **options: object) -> dict[str, torch.Tensor]:
    codec = get_codec(name, **options)
    enc = codec.encode(tensors)
    return codec.decode(enc.payload, manifest_of(tensors), enc.params, LIMITS)


def _payload(values: np.ndarray, itemsize: int, *, content_size: bool = True) -> bytes:
    """A payload built by hand, the way a hostile or buggy peer could."""
    raw = shuffle(values.tobytes(), itemsize)
    return zstandard.ZstdCompressor(write_content_size=content_size).compress(raw)


# --- round trips ---------------------------------------------------------------------------------

SHAPES = [
    pytest.param({"w": (4, 8)}, id="one-matrix"),
    pytest.param({"a": (3,), "b": (2, 5), "c": (2, 3, 4)}, id="mixed-ranks"),
    pytest.param({"s": ()}, id="scalar"),
    pytest.param({"big": (256, 64), "bias": (64,)}, id="lora-like"),
]


@pytest.mark.parametrize("shapes", SHAPES)
def test_lossless_round_trip_is_bit_exact(shapes: dict[str, tuple[int, ...]]) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(s, generator=gen) * 10.0 for k, s in shapes.items()}
    out = _round_trip("lossless", tensors)
    assert list(out) == list(tensors)
    for k, t in tensors.items():
        assert out[k].dtype == torch.float32 and out[k].device.type == "cpu"
        assert torch.equal(out[k], t)


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_fp16_round_trip_within_relative_error(shapes: dict[str, tuple[int, ...]], scale: float) -> None:
    gen = torch.Generator().manual_seed(1)
    # Keep magnitudes in fp16's normal range, where the relative error is at most 2**-11.
    tensors = {
        k: (torch.rand(s, generator=gen) + 0.1) * scale * torch.sign(torch.randn(s, generator=gen))
        for k, s in shapes.items()
    }
    tensors = {k: torch.where(t == 0, torch.full_like(t, scale), t) for k, t in tensors.items()}
    out = _round_trip("fp16", tensors)
    assert list(out) == list(tensors)
    for k, t in tensors.items():
        assert out[k].dtype == torch.float32 and out[k].shape == t.shape
        rel = ((out[k] - t).abs() / t.abs()).max().item()
        assert rel <= 1e-3, (k, rel)


def test_fp16_is_not_exact_so_the_bound_test_means_something() -> None:
    t = {"x": torch.tensor([1.0 + 1e-4, 3.14159265])}
    out = _round_trip("fp16", t)
    assert not torch.equal(out["x"], t["x"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_encode_accepts_any_float_dtype_and_does_not_mutate(dtype: torch.dtype) -> None:
    t = torch.linspace(-2, 2, 12, dtype=dtype).reshape(3, 4)
    before = t.clone()
    out = _round_trip("lossless", {"t": t})
    assert torch.equal(t, before)
    assert torch.equal(out["t"], t.to(torch.float32))


def test_encode_non_contiguous_view() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    t = {"t": base.T, "u": base[:, ::2]}
    out = _round_trip("lossless", t)
    assert torch.equal(out["t"], base.T) and torch.equal(out["u"], base[:, ::2])


def test_decoded_tensors_are_independent() -> None:
    out = _round_trip("lossless", {"a": torch.ones(3), "b": torch.ones(3)})
    out["a"].add_(1.0)
    assert torch.equal(out["b"], torch.ones(3))


def test_empty_update_round_trips() -> None:
    assert _round_trip("lossless", {}) == {}


def test_zstd_level_is_passed_and_validated() -> None:
    t = {"z": torch.zeros(4096)}
    enc = get_codec("lossless", zstd_level=19).encode(t)
    assert enc.params == {"zstd_level": "19"}
    assert enc.raw_bytes == 4096 * 4
    assert len(enc.payload) < 200  # zeros compress
    with pytest.raises(CodecError, match="zstd_level"):
        get_codec("fp16", zstd_level=0)


@pytest.mark.parametrize(("name", "ratio"), [("lossless", 1.0), ("fp16", 2.0)])
def test_estimate_ratio(name: str, ratio: float) -> None:
    assert get_codec(name).estimate_ratio([TensorSpec("a", (4, 4))]) == ratio


def test_fp16_payload_is_about_half_of_lossless() -> None:
    t = {"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(2))}
    lossless = len(get_codec("lossless").encode(t).payload)
    fp16 = len(get_codec("fp16").encode(t).payload)
    assert fp16 < 0.6 * lossless


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-2, 1e3),
)
def test_round_trip_property(shapes: list[list[int]], seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors = {f"t{i}": torch.randn(tuple(s), generator=gen) * scale for i, s in enumerate(shapes)}
    exact = _round_trip("lossless", tensors)
    half = _round_trip("fp16", tensors)
    for k, t in tensors.items():
        assert torch.equal(exact[k], t)
        # Absolute+relative bound covers fp16 subnormals near zero.
        assert torch.allclose(half[k], t, rtol=1e-3, atol=1e-4 * scale)


# --- byte shuffle --------------------------------------------------------------------------------


@given(data=st.binary(max_size=256), itemsize=st.sampled_from([1, 2, 4, 8]))
def test_shuffle_round_trip(data: bytes, itemsize: int) -> None:
    data = data[: len(data) - len(data) % itemsize]
    shuffled = shuffle(data, itemsize)
    assert len(shuffled) == len(data)
    assert unshuffle(shuffled, itemsize) == data


def test_shuffle_groups_bytes_by_position() -> None:
    assert shuffle(b"abcdABCD", 4) == b"aAbBcCdD"
    assert unshuffle(b"aAbBcCdD", 4) == b"abcdABCD"
    # Two-byte items: plane 0 is "aAbB", plane 1 is "cCdD", so the items are ac, AC, bd, BD.
    parts = unshuffle_split(b"aAbBcCdD", 2, [1, 3])
    assert [p.tobytes() for p in parts] == [b"ac", b"ACbdBD"]


def test_unshuffle_split_cuts_items() -> None:
    raw = bytes(range(12))  # six 2-byte items
    parts = unshuffle_split(shuffle(raw, 2), 2, [1, 2, 3])
    assert [p.tobytes() for p in parts] == [raw[0:2], raw[2:6], raw[6:12]]
    with pytest.raises(CodecError):
        unshuffle_split(shuffle(raw, 2), 2, [1, 2])


@pytest.mark.parametrize("fn", [shuffle, unshuffle])
def test_shuffle_refuses_partial_items(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CodecError, match="multiple"):
        fn(b"abcde", 4)


# --- zstd helper ---------------------------------------------------------------------------------


def test_zstd_frame_declares_content_size() -> None:
    frame = zstd_compress(b"x" * 1000, 3)
    assert zstandard.get_frame_parameters(frame).content_size == 1000
    assert zstd_decompress(frame, 1000, 1000) == b"x" * 1000


VALID = zstd_compress(b"payload-" * 64, 3)
HOSTILE_FRAMES = [
    pytest.param(
        zstandard.ZstdCompressor(write_content_size=False).compress(b"payload-" * 64),
        512,
        "does not declare",
        id="no-content-size",
    ),
    pytest.param(VALID, 511, "declares 512", id="size-differs-from-manifest"),
    pytest.param(VALID[:-5], 512, "corrupt", id="truncated"),
    pytest.param(VALID + b"trailing", 512, "corrupt", id="trailing-garbage"),
    pytest.param(VALID + VALID, 512, "corrupt", id="two-frames"),
    pytest.param(b"\x00" * 64, 512, "not a zstd frame", id="garbage"),
    pytest.param(b"", 512, "not a zstd frame", id="empty"),
    pytest.param(b"\x28\xb5\x2f\xfd", 512, "header", id="magic-only"),
    pytest.param(
        struct.pack("<II", 0x184D2A50, 512) + b"\x00" * 512, 512, "not a zstd frame", id="skippable-frame"
    ),
]


@pytest.mark.parametrize(("frame", "expected", "message"), HOSTILE_FRAMES)
def test_zstd_decompress_refuses(frame: bytes, expected: int, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        zstd_decompress(frame, expected, 1 << 20)


def test_zstd_decompress_refuses_declared_size_above_limit() -> None:
    with pytest.raises(CodecError, match="limit"):
        zstd_decompress(VALID, 512, 511)
    # The header alone is checked, so a bomb declaring 1 GiB in a few bytes costs nothing.
    bomb = zstd_compress(b"\x00" * (1 << 24), 1)
    assert len(bomb) < 1024
    start = time.perf_counter()
    with pytest.raises(CodecError, match="declares 16777216 bytes, above the 1048576-byte limit"):
        zstd_decompress(bomb, 16, 1 << 20)
    assert time.perf_counter() - start < 0.5


def test_zstd_decompress_refuses_corrupted_block() -> None:
    frame = bytearray(zstd_compress(bytes(range(256)) * 8, 3))
    frame[-3] ^= 0xFF
    frame[-6] ^= 0xFF
    with pytest.raises(CodecError):
        zstd_decompress(bytes(frame), 2048, 1 << 20)


# --- hostile payloads through the codec ----------------------------------------------------------


@pytest.mark.parametrize("name", CODECS)
def test_decode_refuses_nan_and_inf(name: str) -> None:
    dtype = np.float32 if name == "lossless" else np.float16
    manifest = [TensorSpec("ok", (2,)), TensorSpec("bad", (3,))]
    for poison in (np.nan, np.inf, -np.inf):
        values = np.array([1.0, 2.0, 3.0, poison, 5.0], dtype=dtype)
        payload = _payload(values, values.itemsize)
        with pytest.raises(CodecError, match="'bad'.*NaN or Inf"):
            get_codec(name).decode(payload, manifest, {}, LIMITS)


def test_hand_built_payload_decodes_when_valid() -> None:
    """The hand-built payloads above are well formed: only the poison makes them fail."""
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0], dtype=np.float32)
    out = get_codec("lossless").decode(_payload(values, 4), [TensorSpec("a", (5,))], {}, LIMITS)
    assert out["a"].tolist() == values.tolist()


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("limit", [1 << 30, 1 << 60])
def test_huge_manifest_is_refused_before_allocation(name: str, limit: int) -> None:
    payload = get_codec(name).encode({"a": torch.ones(4)}).payload
    start = time.perf_counter()
    with pytest.raises(CodecError, match="limit|declares"):
        get_codec(name).decode(payload, [TensorSpec("a", (2**40,))], {}, DecodeLimits(limit))
    assert time.perf_counter() - start < 0.5


def test_manifest_many_huge_dims_refused_without_big_ints() -> None:
    manifest = [TensorSpec("a", (2**62,) * 10_000)]
    with pytest.raises(CodecError, match="exceeds"):
        get_codec("lossless").decode(b"", manifest, {}, LIMITS)


def test_total_size_over_limit_is_refused() -> None:
    tensors = {"a": torch.ones(100), "b": torch.ones(100)}
    enc = get_codec("lossless").encode(tensors)
    with pytest.raises(CodecError, match="exceeds"):
        get_codec("lossless").decode(enc.payload, manifest_of(tensors), enc.params, DecodeLimits(799))
    assert len(get_codec("lossless").decode(enc.payload, manifest_of(tensors), {}, DecodeLimits(800))) == 2


BAD_MANIFESTS = [
    pytest.param([TensorSpec("a", (2,)), TensorSpec("a", (2,))], "twice", id="duplicate-name"),
    pytest.param([TensorSpec("a", (0, 4))], "non-positive", id="zero-dim"),
    pytest.param([TensorSpec("a", (-1, -4))], "non-positive", id="negative-dims"),
    pytest.param([TensorSpec("a", (4,), "float16")], "dtype", id="wrong-dtype"),
    pytest.param([TensorSpec("", (4,))], "named", id="empty-name"),
    pytest.param([TensorSpec("a", (2.0, 2))], "non-int", id="float-dim"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("manifest", "message"), BAD_MANIFESTS)
def test_bad_manifest_refused(manifest: list[TensorSpec], message: str) -> None:
    payload = get_codec("lossless").encode({"x": torch.ones(4)}).payload
    with pytest.raises(CodecError, match=message):
        get_codec("lossless").decode(payload, manifest, {}, LIMITS)


@pytest.mark.parametrize("name", CODECS)
def test_payload_for_other_manifest_refused(name: str) -> None:
    payload = get_codec(name).encode({"x": torch.ones(6)}).payload
    with pytest.raises(CodecError, match="declares"):
        get_codec(name).decode(payload, [TensorSpec("x", (7,))], {}, LIMITS)


@pytest.mark.parametrize("name", CODECS)
def test_frame_without_content_size_refused_by_codec(name: str) -> None:
    values = np.ones(4, dtype=np.float32 if name == "lossless" else np.float16)
    payload = _payload(values, values.itemsize, content_size=False)
    with pytest.raises(CodecError, match="does not declare"):
        get_codec(name).decode(payload, [TensorSpec("x", (4,))], {}, LIMITS)


def test_lossless_payload_is_not_an_fp16_payload() -> None:
    t = {"x": torch.ones(4)}
    payload = get_codec("lossless").encode(t).payload
    with pytest.raises(CodecError):
        get_codec("fp16").decode(payload, manifest_of(t), {}, LIMITS)


# --- encode-side refusals ------------------------------------------------------------------------


ENCODE_REFUSALS = [
    pytest.param(
        "fp16",
        {"ok": torch.ones(2), "huge": torch.tensor([1.0, 7e4])},
        "'huge'.*overflow",
        id="fp16-overflow",
    ),
    pytest.param("fp16", {"n": torch.tensor([float("nan")])}, "'n'.*NaN", id="fp16-nan"),
    pytest.param("fp16", {"i": torch.tensor([float("inf")])}, "'i'.*NaN or Inf", id="fp16-inf"),
    pytest.param("lossless", {"n": torch.tensor([1.0, float("nan")])}, "'n'.*NaN", id="lossless-nan"),
    pytest.param("lossless", {"e": torch.ones(0, 3)}, "'e'.*empty", id="empty-tensor"),
    pytest.param("lossless", {"i": torch.ones(3, dtype=torch.int64)}, "'i'.*floating", id="int-tensor"),
]


@pytest.mark.parametrize(("name", "tensors", "message"), ENCODE_REFUSALS)
def test_encode_refuses(name: str, tensors: dict[str, torch.Tensor], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        get_codec(name).encode(tensors)


def test_fp16_largest_finite_value_is_accepted() -> None:
    out = _round_trip("fp16", {"m": torch.tensor([65504.0, -65504.0])})
    assert out["m"].tolist() == [65504.0, -65504.0]


# --- registry ------------------------------------------------------------------------------------


def test_registry_lists_v1_codecs() -> None:
    assert {"lossless", "fp16"} <= set(available_codecs())


def test_unknown_codec_named_in_error() -> None:
    with pytest.raises(CodecError, match="unknown codec 'int3'.*fp16.*lossless"):
        get_codec("int3")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_encode_cuda_tensors() -> None:
    t = {"a": torch.randn(5, 7, device="cuda"), "b": torch.randn(3)}
    out = _round_trip("lossless", t)
    assert torch.equal(out["a"], t["a"].cpu()) and torch.equal(out["b"], t["b"])


def test_a_large_payload_compressed_on_threads_is_one_checked_frame() -> None:
    import zstandard

    from fedpeer.codec.bytes import ZSTD_THREADS_FROM

    gen = np.random.default_rng(0)
    data = gen.integers(0, 4, ZSTD_THREADS_FROM + 12345, dtype=np.uint8).tobytes()
    frame = zstd_compress(data, 3)
    # zstd's multi-threaded mode still writes one frame that declares its size (decode requires it).
    assert zstandard.get_frame_parameters(frame).content_size == len(data)
    assert len(frame) < len(data) // 2
    assert zstd_decompress(frame, len(data), len(data)) == data
