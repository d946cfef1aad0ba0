"""Byte-level stages shared by codecs: byte-shuffle and single-frame zstd.

Byte-shuffle groups the k-th byte of every float together (all sign/exponent bytes, then all
mantissa bytes): exponents of neighbouring values repeat, so zstd finds runs it cannot see in
interleaved floats.

`zstd_decompress` reads untrusted bytes. python-zstandard sizes its output buffer from the frame
header's declared content size and ignores `max_output_size` when a size is declared, so the header
is checked against the caller's expected size and bound before anything is decompressed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zstandard

from fedpeer.errors import CodecError

__all__ = ["shuffle", "unshuffle", "unshuffle_split", "zstd_compress", "zstd_decompress"]

Buffer = bytes | bytearray | memoryview

# Little-endian magic number that opens every regular zstd frame (skippable frames use others).
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Payload size from which zstd compresses on worker threads (about 2 M fp32 values).
ZSTD_THREADS_FROM = 8 * 2**20


def _planes(data: Buffer | np.ndarray, itemsize: int) -> tuple[np.ndarray, int]:
    if itemsize < 1:
        raise CodecError(f"byte-shuffle item size must be >= 1, got {itemsize}")
    flat = np.frombuffer(data, dtype=np.uint8)
    if flat.size % itemsize:
        raise CodecError(f"byte-shuffle input of {flat.size} bytes is not a multiple of item size {itemsize}")
    return flat, flat.size // itemsize


def shuffle(raw: Buffer | np.ndarray, itemsize: int) -> bytes:
    """Byte-transpose `raw` (n items of `itemsize` bytes): byte 0 of every item, then byte 1, ..."""
    flat, n = _planes(raw, itemsize)
    return np.ascontiguousarray(flat.reshape(n, itemsize).T).tobytes()


def unshuffle(data: Buffer, itemsize: int) -> bytes:
    """Inverse of `shuffle`."""
    _, n = _planes(data, itemsize)
    return unshuffle_split(data, itemsize, [n])[0].tobytes()


def unshuffle_split(data: Buffer, itemsize: int, counts: Sequence[int]) -> list[np.ndarray]:
    """Inverse of `shuffle`, cut into consecutive runs of `counts[i]` items.

    Each run comes back as its own writable, contiguous uint8 array, so callers get independent
    tensors from a single copy of the bytes.
    """
    flat, n = _planes(data, itemsize)
    if any(c < 0 for c in counts) or sum(counts) != n:
        raise CodecError(f"item counts {list(counts)[:8]} do not add up to the {n} items of the buffer")
    planes = flat.reshape(itemsize, n)
    out, start = [], 0
    for count in counts:
        # .copy() rather than ascontiguousarray: a one-item run is already contiguous and would
        # otherwise come back as a read-only view of `data`.
        out.append(planes[:, start : start + count].T.copy().reshape(-1))
        start += count
    return out


def zstd_compress(data: Buffer, level: int) -> bytes:
    """One zstd frame without dictionary that declares its content size (decoders require it).

    Payloads of ZSTD_THREADS_FROM bytes and more are compressed by zstd's worker threads, one per
    core (a large adapter's update); smaller ones on the caller's thread, where threads cost more
    than they save."""
    threads = -1 if memoryview(data).nbytes >= ZSTD_THREADS_FROM else 0
    try:
        return zstandard.ZstdCompressor(level=level, write_content_size=True, threads=threads).compress(data)
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd compression failed: {exc}") from None


def zstd_decompress(frame: Buffer, expected_size: int, max_size: int) -> bytes:
    """Decompress one untrusted zstd frame that must declare exactly `expected_size` bytes.

    Refused with CodecError: no zstd magic, undeclared or mismatching content size, a size above
    `max_size`, a dictionary id, truncated or corrupt data, and any bytes after the frame.
    """
    if expected_size < 0:
        raise CodecError(f"expected payload size must be >= 0, got {expected_size}")
    if expected_size > max_size:
        raise CodecError(f"payload of {expected_size} bytes is above the {max_size}-byte limit")
    frame = bytes(frame) if not isinstance(frame, bytes) else frame
    if frame[:4] != _ZSTD_MAGIC:
        raise CodecError("payload is not a zstd frame (bad magic number)")
    try:
        header = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise CodecError(f"unreadable zstd frame header: {exc}") from None
    declared = header.content_size
    if declared == zstandard.CONTENTSIZE_UNKNOWN:
        raise CodecError("zstd frame does not declare its content size; refused")
    if declared > max_size:
        raise CodecError(f"zstd frame declares {declared} bytes, above the {max_size}-byte limit")
    if declared != expected_size:
        raise CodecError(f"zstd frame declares {declared} bytes but the manifest needs {expected_size}")
    if header.dict_id != 0:
        raise CodecError(f"zstd frame needs dictionary {header.dict_id}; dictionaries are not supported")
    try:
        # allow_extra_data=False: a second frame or trailing garbage is an error, not silently dropped.
        out = zstandard.ZstdDecompressor().decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise CodecError(f"corrupt zstd payload: {exc}") from None
    if len(out) != expected_size:
        raise CodecError(f"zstd payload decompressed to {len(out)} bytes, expected {expected_size}")
    return out
