"""Byte layout of the pipeline codec: the payload's sections and the params that describe them.

Payload, before zstd: codes (uint8) | fp16 values, byte-shuffled | fp32 part scales, byte-shuffled;
each section holds the parts in group order, then part order. Params: layout version `v`, `block`,
`plan` (one `method/ranks/bits` entry per group, `;`-separated) and `zstd_level` (informational:
zstd frames are self-describing).

Reading trusts nothing: `parse_params` refuses unknown, missing or malformed fields and checks every
plan entry against its group's dims, `section_sizes` bounds the exact sizes by the payload limit
before zstd allocates anything, and part scales must be finite and non-negative.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedpeer.codec.bytes import shuffle, unshuffle
from fedpeer.codec.factorize import Group, part_shapes
from fedpeer.codec.options import FACTOR_METHODS, check_quant
from fedpeer.codec.plan import GroupPlan, Option
from fedpeer.codec.quantize import Quantized, dequantize, part_sizes
from fedpeer.errors import CodecError

__all__ = [
    "LAYOUT_VERSION",
    "Sections",
    "params_for",
    "parse_params",
    "read_groups",
    "section_sizes",
    "serialize",
]

LAYOUT_VERSION = "1"
_PARAM_KEYS = {"v", "block", "plan", "zstd_level"}
_ENTRY = re.compile(r"([a-z]{2,6})/((?:[0-9]{1,9}(?:,[0-9]{1,9}){0,2})?)/([0-9]{1,2})")


# ------------------------------------------------------------------------------------------ write
def params_for(block: int, chosen: Sequence[Option], zstd_level: int) -> dict[str, str]:
    return {
        "v": LAYOUT_VERSION,
        "block": str(block),
        "plan": ";".join(str(o.plan) for o in chosen),
        "zstd_level": str(zstd_level),  # informational: zstd frames are self-describing
    }


def serialize(chosen: Sequence[Option]) -> bytes:
    """codes | shuffled fp16 values | shuffled fp32 scales, each in group then part order."""
    parts = [q for option in chosen for q in option.parts]
    if not parts:
        return b""
    codes = torch.cat([q.codes for q in parts]).cpu().numpy().tobytes()
    halfs = torch.cat([q.halfs for q in parts]).cpu().numpy().astype("<f2", copy=False)
    scales = torch.cat([q.scale for q in parts]).cpu().numpy().astype("<f4", copy=False)
    return codes + shuffle(halfs, 2) + shuffle(scales, 4)


# ------------------------------------------------------------------------------------------- read
def parse_params(params: Mapping[str, str], groups: Sequence[Group]) -> tuple[int, list[GroupPlan]]:
    """Block size and one checked plan per group; any unknown, missing or malformed field is refused."""
    if (
        not isinstance(params, Mapping)
        or not set(params) <= _PARAM_KEYS
        or not {"v", "block", "plan"} <= set(params)
    ):
        raise CodecError(f"pipeline params must be {sorted(_PARAM_KEYS)} (zstd_level optional)")
    if any(not isinstance(v, str) for v in params.values()):
        raise CodecError("pipeline params must be strings")
    if params["v"] != LAYOUT_VERSION:
        raise CodecError(
            f"pipeline layout version {params['v'][:16]!r} is not supported (only {LAYOUT_VERSION})"
        )
    block = _small_int(params["block"], "block")
    plan = params["plan"]
    # ~20 characters per entry at most; checked before splitting so a huge string costs nothing.
    if len(plan) > 32 * len(groups) + 32:
        raise CodecError(
            f"pipeline plan of {len(plan)} characters is too long for {len(groups)} tensor groups"
        )
    entries = plan.split(";") if plan else []
    if len(entries) != len(groups):
        raise CodecError(f"pipeline plan has {len(entries)} entries, the manifest makes {len(groups)} groups")
    return block, [_parse_entry(e, g, block) for e, g in zip(entries, groups, strict=True)]


def _parse_entry(entry: str, group: Group, block: int) -> GroupPlan:
    match = _ENTRY.fullmatch(entry)
    if match is None:
        raise CodecError(f"malformed pipeline plan entry {entry[:40]!r}")
    method, ranks_text, bits_text = match.groups()
    ranks = tuple(int(r) for r in ranks_text.split(",")) if ranks_text else ()
    plan = GroupPlan(method, ranks, int(bits_text))
    check_quant(plan.bits, block)
    if method in FACTOR_METHODS and not group.factorizable:
        raise CodecError(f"{method} is not allowed for a tensor group of dims {group.dims}")
    if method in ("tucker", "tt") and group.dims[0] < 2:
        raise CodecError(f"{method} needs a stack of at least two matrices, the group has {group.dims[0]}")
    part_shapes(plan.method, plan.ranks, group.dims)  # ranks within the group's dims
    return plan


def _small_int(text: str, what: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise CodecError(f"pipeline {what} {text[:16]!r} is not a small non-negative integer")
    return int(text)


@dataclass(frozen=True)
class Sections:
    """Item counts of the three sections: code bytes, fp16 values, fp32 part scales."""

    codes: int
    halfs: int
    scales: int

    @property
    def nbytes(self) -> int:
        return self.codes + 2 * self.halfs + 4 * self.scales


def section_sizes(
    layout: Sequence[Sequence[tuple[int, ...]]], plans: Sequence[GroupPlan], block: int, limit: int
) -> Sections:
    """Exact section sizes of the parts of shapes `layout[g]` at `plans[g].bits`, refused once
    they pass `limit` bytes (before anything is allocated)."""
    n_codes = n_halfs = n_scales = 0
    for shapes, plan in zip(layout, plans, strict=True):
        for shape in shapes:
            codes, halfs = part_sizes(math.prod(shape), plan.bits, block)
            n_codes, n_halfs, n_scales = n_codes + codes, n_halfs + halfs, n_scales + 1
            if n_codes + 2 * n_halfs + 4 * n_scales > limit:
                raise CodecError(f"the plan needs more than the {limit}-byte payload limit")
    return Sections(n_codes, n_halfs, n_scales)


def read_groups(
    raw: bytes,
    sizes: Sections,
    layout: Sequence[Sequence[tuple[int, ...]]],
    plans: Sequence[GroupPlan],
    block: int,
) -> Iterator[list[torch.Tensor]]:
    """The dequantized parts of each group in turn (raw: the decompressed payload, `sizes.nbytes`).
    The part scales are checked first; each group's parts are dequantized only when it is reached."""
    codes, halfs, scales = _sections(raw, sizes)
    cursor = [0, 0, 0]
    for shapes, plan in zip(layout, plans, strict=True):
        yield [_take_part(codes, halfs, scales, cursor, s, plan.bits, block) for s in shapes]


def _sections(raw: bytes, sizes: Sections) -> tuple[torch.Tensor, ...]:
    n_codes, n_halfs = sizes.codes, sizes.halfs
    codes = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, count=n_codes).copy())
    h = unshuffle(raw[n_codes : n_codes + 2 * n_halfs], 2)
    s = unshuffle(raw[n_codes + 2 * n_halfs :], 4)
    halfs = torch.from_numpy(np.frombuffer(h, dtype="<f2").astype(np.float16))
    scales = torch.from_numpy(np.frombuffer(s, dtype="<f4").astype(np.float32))
    if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
        raise CodecError("a part scale is negative, NaN or Inf")
    return codes, halfs, scales


def _take_part(
    codes: torch.Tensor,
    halfs: torch.Tensor,
    scales: torch.Tensor,
    cursor: list[int],
    shape: tuple[int, ...],
    bits: int,
    block: int,
) -> torch.Tensor:
    n = math.prod(shape)
    n_codes, n_halfs = part_sizes(n, bits, block)
    c, h, s = cursor
    q = Quantized(codes[c : c + n_codes], halfs[h : h + n_halfs], scales[s : s + 1])
    cursor[:] = [c + n_codes, h + n_halfs, s + 1]
    return dequantize(q, n, bits, block).reshape(shape)
