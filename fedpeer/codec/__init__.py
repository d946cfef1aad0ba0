"""Codecs: global-adapter update tensors <-> one bytes payload (see `base` for the interface).

The built-in codecs are `lossless` and `fp16` (v1) and `pipeline` (low-rank where it pays, blockwise
int8/int4, byte-shuffle, zstd; lossy, with a bytes budget mode). Their settings and the checks of
each are in `options`.

Importing this package imports no torch: `fedpeer.config` checks a `[codec]` table with `options`
before torch is loaded, so that a wrong value is reported at once. The names below load on first use
(`from fedpeer.codec import PipelineCodec` imports the codec then), and `get_codec` and
`available_codecs` import the built-in codecs, which registers them.

Modules, in pipeline order: `options` (settings), `base` (interface, registry, shared checks),
`v1`, `pipeline` (the codec) with its stages `factorize`, `plan`, `quantize`, `layout`, `bytes`,
and `stats`, `threads`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedpeer.codec.base import (
        Codec,
        CodecError,
        DecodeLimits,
        Encoded,
        available_codecs,
        get_codec,
    )
    from fedpeer.codec.pipeline import PipelineCodec
    from fedpeer.codec.stats import EncodeStats, lora_fp32_bytes
    from fedpeer.config import CodecConfig
    from fedpeer.tensors import TensorSpec, manifest_of

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

# Where each name of the package lives; imported on first access.
_HOMES = {
    "Codec": "fedpeer.codec.base",
    "CodecError": "fedpeer.errors",
    "DecodeLimits": "fedpeer.codec.base",
    "EncodeStats": "fedpeer.codec.stats",
    "Encoded": "fedpeer.codec.base",
    "PipelineCodec": "fedpeer.codec.pipeline",
    "TensorSpec": "fedpeer.tensors",
    "available_codecs": "fedpeer.codec.base",
    "get_codec": "fedpeer.codec.base",
    "lora_fp32_bytes": "fedpeer.codec.stats",
    "manifest_of": "fedpeer.tensors",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def codec_from_config(cfg: CodecConfig) -> Codec:
    """The sender's codec for a `[codec]` table (receivers decode from the frame's params alone)."""
    from fedpeer.codec.base import get_codec
    from fedpeer.codec.pipeline import PipelineCodec

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
