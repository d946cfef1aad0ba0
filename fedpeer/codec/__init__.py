"""Codecs: global-adapter update tensors <-> one bytes payload (see `base` for the interface).

Importing this package registers the built-in codecs.
"""

from fedpeer.codec import v1  # noqa: F401  (registers "lossless" and "fp16")
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

__all__ = [
    "Codec",
    "CodecError",
    "DecodeLimits",
    "Encoded",
    "TensorSpec",
    "available_codecs",
    "get_codec",
    "manifest_of",
]
