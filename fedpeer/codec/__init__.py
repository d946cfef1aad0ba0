"""Codecs: global-adapter update tensors <-> one bytes payload (see `base` for the interface).

Importing this package registers the built-in codecs: `lossless` and `fp16` (v1) and `pipeline`
(low-rank where it pays, blockwise int8/int4, byte-shuffle, zstd; lossy, with a bytes budget mode).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpeer.codec import pipeline, v1  # noqa: F401  (registers "lossless", "fp16", "pipeline")
from fedpeer.codec.base import (
    Codec,
    CodecError,
    DecodeLimits,
    Encoded,
    TensorSpec,
    available_codecs,
    get_codec,
    manifest_of,
)
from fedpeer.codec.pipeline import EncodeStats, PipelineCodec, lora_fp32_bytes

if TYPE_CHECKING:
    from fedpeer.config import CodecConfig

__all__ = [
    "Codec",
    "CodecError",
    "DecodeLimits",
    "EncodeStats",
    "Encoded",
    "PipelineCodec",
    "TensorSpec",
    "available_codecs",
    "codec_from_config",
    "get_codec",
    "lora_fp32_bytes",
    "manifest_of",
]


def codec_from_config(cfg: CodecConfig) -> Codec:
    """The sender's codec for a `[codec]` table (receivers decode from the frame's params alone)."""
    if cfg.name == PipelineCodec.name:
        return get_codec(
            cfg.name,
            zstd_level=cfg.zstd_level,
            bits=cfg.bits,
            block=cfg.block,
            rank_fraction=cfg.rank_fraction,
            methods=tuple(cfg.methods),
            stochastic=cfg.stochastic,
            budget_bytes=cfg.budget_bytes,
        )
    return get_codec(cfg.name, zstd_level=cfg.zstd_level)
