"""Codec settings, defined here and nowhere else: codec names, zstd levels, quantization bits and
block sizes, factorization methods, and the one check of each.

Each setting has one rule, worded once; callers only choose how the error opens:

- `validate_codec_options`: a `[codec]` table (`fedpeer.config`), ConfigError "codec.bits must ...".
- `check_pipeline_options`, `check_zstd_level`: codec constructors, CodecError "pipeline: bits ...".
- `check_quant`: bits and block of a layout (encoder, and plan entries from peers when decoding).

No torch here: the config is checked before torch is imported, so a wrong value is reported at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from fedpeer.errors import CodecError, ConfigError

__all__ = [
    "BITS",
    "CODEC_NAMES",
    "CODEC_SETTINGS",
    "FACTOR_METHODS",
    "MAX_BLOCK",
    "MAX_ZSTD_LEVEL",
    "METHODS",
    "MIN_BLOCK",
    "MIN_ZSTD_LEVEL",
    "check_pipeline_options",
    "check_quant",
    "check_zstd_level",
    "validate_codec_options",
]

# The registered names of the built-in codecs (codec/v1.py, codec/pipeline.py).
CODEC_NAMES = ("lossless", "fp16", "pipeline")
# Levels 1-3 suit noise-like floats and int codes; higher levels cost far more CPU for little.
MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL = 1, 22
# Quantization bit widths of the pipeline (16 = fp16 values, no codes).
BITS = (4, 8, 16)
# Blocks of 64 values cost 0.25 bit/value of fp16 scale at int8/int4 and follow the local magnitude
# of LoRA updates closely; the bounds keep hostile headers from asking for absurd layouts.
MIN_BLOCK, MAX_BLOCK = 8, 1 << 16
# What the pipeline may factorize a tensor group with (codec/factorize.py), and every plan method.
FACTOR_METHODS = ("svd", "tucker", "tt")
METHODS = ("dense", "zero", *FACTOR_METHODS)


def _int_in(low: int, high: int) -> Callable[[object], str | None]:
    def rule(v: object) -> str | None:
        if isinstance(v, int) and not isinstance(v, bool) and low <= v <= high:
            return None
        return f"must be an integer in {low}..{high}, got {v!r}"

    return rule


def _name(v: object) -> str | None:
    return None if v in CODEC_NAMES else f"must be one of {', '.join(CODEC_NAMES)}, got {v!r}"


def _max_payload_mb(v: object) -> str | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
        return None
    return f"must be > 0, got {v!r}"


def _bits(v: object) -> str | None:
    return None if not isinstance(v, bool) and v in BITS else f"must be one of {BITS}, got {v!r}"


def _rank_fraction(v: object) -> str | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 1:
        return None
    return f"must be in (0, 1], got {v!r}"


def _methods(v: object) -> str | None:
    if not isinstance(v, str) and isinstance(v, Sequence) and set(v) <= set(FACTOR_METHODS):
        return None
    return f"must be a list drawn from {', '.join(FACTOR_METHODS)}, got {v!r}"


def _stochastic(v: object) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def _budget_bytes(v: object) -> str | None:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return None
    return f"must be an integer >= 0 (0 = off), got {v!r}"


# One rule per setting, in the order a `[codec]` table is checked: the reason a value is refused,
# or None when it is fine.
_RULES: dict[str, Callable[[object], str | None]] = {
    "name": _name,
    "zstd_level": _int_in(MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL),
    "max_payload_mb": _max_payload_mb,
    "bits": _bits,
    "block": _int_in(MIN_BLOCK, MAX_BLOCK),
    "rank_fraction": _rank_fraction,
    "methods": _methods,
    "stochastic": _stochastic,
    "budget_bytes": _budget_bytes,
}
# The settings of a `[codec]` table (fedpeer.config.CodecConfig), in the order they are checked.
CODEC_SETTINGS = tuple(_RULES)


def _check(error: type[Exception], opening: str, settings: dict[str, object]) -> None:
    """Raise `error("<opening><setting> <reason>")` for the first setting (in order) that is refused."""
    for setting, value in settings.items():
        reason = _RULES[setting](value)
        if reason is not None:
            raise error(f"{opening}{setting} {reason}")


def check_zstd_level(codec: str, zstd_level: object) -> None:
    _check(CodecError, f"{codec}: ", {"zstd_level": zstd_level})


def check_quant(bits: object, block: object) -> None:
    """Refuse bit widths and block sizes outside what the wire format defines."""
    _check(CodecError, "quantization ", {"bits": bits, "block": block})


def check_pipeline_options(
    zstd_level: object,
    bits: object,
    block: object,
    rank_fraction: object,
    methods: object,
    stochastic: object,
    budget_bytes: object,
) -> None:
    """The pipeline codec's constructor options (CodecError naming the option)."""
    check_zstd_level("pipeline", zstd_level)
    check_quant(bits, block)
    _check(
        CodecError,
        "pipeline: ",
        {
            "rank_fraction": rank_fraction,
            "methods": methods,
            "stochastic": stochastic,
            "budget_bytes": budget_bytes,
        },
    )


def validate_codec_options(settings: Mapping[str, object], where: str = "codec") -> None:
    """A `[codec]` table's settings by name (each of `CODEC_SETTINGS`, e.g. `dataclasses.asdict` of
    the config), checked in that order; ConfigError names the field ("codec.bits must be one of
    (4, 8, 16), got 3"). The pipeline-only settings are checked whatever the codec `name` is."""
    if set(settings) != set(CODEC_SETTINGS):
        raise ValueError(
            f"codec settings {sorted(set(settings) ^ set(CODEC_SETTINGS))} have no rule or no value"
        )
    _check(ConfigError, f"{where}.", {name: settings[name] for name in CODEC_SETTINGS})
