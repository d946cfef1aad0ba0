"""The `pipeline` codec: low-rank where it pays → blockwise int8/int4 (fp16 scales) → byte-shuffle + zstd.

Encode (`PipelineCodec.encode`):

1. Group the tensors by shape (`factorize.group_manifest`) and stack each group to [L, m, n] (fp32,
   on the tensors' device: CUDA updates stay on the GPU until the final bytes).
2. Build each group's options: dense, and (fixed mode) each factorization method at the configured
   rank fraction, or (budget mode) a menu of methods × ranks × bit widths, plus sending nothing.
   Every option is factorized, quantized and reconstructed, so its error is measured, not guessed.
3. Choose. Fixed mode: per group, factorize only where it pays (`factorize.should_factorize`).
   Budget mode: the options that minimize the total squared error within `budget_bytes` (`allocate`).
4. Lay the chosen parts out as three sections, codes (uint8) | fp16 values | fp32 part scales; the
   float sections are byte-shuffled; the whole is one zstd frame.
5. Params for the decoder: layout version, block size and the plan, one `method/ranks/bits` entry per
   group. What was decided and why is in `codec.last_stats` (not on the wire: it would cost bytes).

Decode trusts nothing: the grouping comes from the manifest (already checked against the local
model), every plan entry is checked against its group's dims (ranks, bits, block), the exact section
sizes follow and are bounded by `DecodeLimits` before zstd allocates anything, scales must be finite,
and the rebuilt tensors must be finite.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedpeer.codec.base import Codec, DecodeLimits, Encoded, TensorSpec, manifest_of, register
from fedpeer.codec.bytes import shuffle, unshuffle, zstd_compress, zstd_decompress
from fedpeer.codec.factorize import (
    FACTOR_METHODS,
    Decision,
    Factorizer,
    Group,
    group_manifest,
    part_shapes,
    rank_ladder,
    ranks_for,
    reconstruct,
    should_factorize,
    transfer_cost,
)
from fedpeer.codec.quantize import Quantized, check_quant, dequantize, part_sizes, quantize
from fedpeer.codec.v1 import _checked_counts
from fedpeer.errors import CodecError

__all__ = ["EncodeStats", "GroupPlan", "GroupStats", "PipelineCodec", "allocate", "lora_fp32_bytes"]

LAYOUT_VERSION = "1"
_PARAM_KEYS = {"v", "block", "plan", "zstd_level"}
_ENTRY = re.compile(r"([a-z]{2,6})/((?:[0-9]{1,9}(?:,[0-9]{1,9}){0,2})?)/([0-9]{1,2})")
# zstd's worst-case growth of n incompressible bytes (ZSTD_compressBound) is below n/256 + 96 here.
_ZSTD_SLACK = 96


@dataclass(frozen=True)
class GroupPlan:
    method: str
    ranks: tuple[int, ...]
    bits: int

    def __str__(self) -> str:
        return f"{self.method}/{','.join(map(str, self.ranks))}/{self.bits}"


@dataclass
class _Option:
    plan: GroupPlan
    nbytes: int
    sq_error: float
    parts: list[Quantized] = field(default_factory=list)


@dataclass(frozen=True)
class GroupStats:
    """What the encoder did with one tensor group, and the options it measured (plan, bytes, rel. error)."""

    first: str
    members: int
    dims: tuple[int, int, int]
    plan: str
    nbytes: int
    rel_error: float
    decision: Decision | None
    options: tuple[tuple[str, int, float], ...]


@dataclass(frozen=True)
class EncodeStats:
    groups: tuple[GroupStats, ...]
    payload_bytes: int
    fp32_bytes: int
    rel_error: float  # ||q - decode(encode(q))|| / ||q|| over the whole update
    budget_bytes: int
    budget_met: bool
    encode_s: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready: totals and the plan and decision of each group."""
        return {
            "payload_bytes": self.payload_bytes,
            "fp32_bytes": self.fp32_bytes,
            "rel_error": self.rel_error,
            "budget_bytes": self.budget_bytes,
            "budget_met": self.budget_met,
            "encode_s": self.encode_s,
            "groups": [
                {
                    "first": g.first,
                    "members": g.members,
                    "dims": list(g.dims),
                    "plan": g.plan,
                    "bytes": g.nbytes,
                    "rel_error": g.rel_error,
                    "factorized": g.decision.factorize if g.decision else None,
                }
                for g in self.groups
            ],
        }


@register
class PipelineCodec(Codec):
    """Low-rank (per group, where it pays) → int8/int4/fp16 blocks → byte-shuffle → zstd. Lossy:
    use it with error feedback (CHOCO's public copies) and gossip.gamma < 1."""

    name = "pipeline"

    def __init__(
        self,
        zstd_level: int = 3,
        bits: int = 4,
        block: int = 64,
        rank_fraction: float = 0.5,
        methods: Sequence[str] = ("svd", "tucker"),
        stochastic: bool = False,
        budget_bytes: int = 0,
        seed: int = 0,
    ) -> None:
        _check_options(zstd_level, bits, block, rank_fraction, methods, stochastic, budget_bytes)
        self.zstd_level = zstd_level
        self.bits = bits
        self.block = block
        self.rank_fraction = float(rank_fraction)
        self.methods = tuple(methods)
        self.stochastic = stochastic
        self.budget_bytes = budget_bytes
        self.seed = seed
        self.last_stats: EncodeStats | None = None
        self._calls = 0

    # ------------------------------------------------------------------------------------ encode
    def encode(self, tensors: Mapping[str, torch.Tensor]) -> Encoded:
        start = time.perf_counter()
        on_cpu = all(t.device.type == "cpu" for t in tensors.values())
        with _cpu_single_threaded(on_cpu):
            return self._encode(tensors, start)

    def _encode(self, tensors: Mapping[str, torch.Tensor], start: float) -> Encoded:
        manifest = _checked_inputs(tensors)
        groups = group_manifest(manifest)
        stacks = _stacks(list(tensors.values()), groups)
        generator = self._generator(stacks)
        energies = [_sq_norm(x) for x in stacks]
        if self.budget_bytes > 0:
            menus = [self._budget_menu(g, x, generator) for g, x in zip(groups, stacks, strict=True)]
            chosen, payload, met = self._fit_budget(menus)
            decisions: list[Decision | None] = [None] * len(groups)
        else:
            menus, chosen, decisions, met = [], [], [], True
            for g, x, energy in zip(groups, stacks, energies, strict=True):
                menu, pick, decision = self._fixed_choice(g, x, energy, generator)
                menus.append(menu)
                chosen.append(pick)
                decisions.append(decision)
            payload = zstd_compress(_serialize(chosen), self.zstd_level)
        params = {
            "v": LAYOUT_VERSION,
            "block": str(self.block),
            "plan": ";".join(str(o.plan) for o in chosen),
            "zstd_level": str(self.zstd_level),  # informational: zstd frames are self-describing
        }
        met = met and (self.budget_bytes <= 0 or len(payload) <= self.budget_bytes)
        self.last_stats = _stats(
            manifest,
            groups,
            menus,
            chosen,
            decisions,
            energies,
            payload,
            met,
            self.budget_bytes,
            time.perf_counter() - start,
        )
        return Encoded(payload, params, raw_bytes=4 * sum(s.numel for s in manifest))

    def _generator(self, stacks: Sequence[torch.Tensor]) -> torch.Generator | None:
        if not self.stochastic:
            return None
        self._calls += 1
        device = stacks[0].device if stacks else torch.device("cpu")
        # A fresh stream per call: rounds draw independent noise, and a rerun draws the same.
        return torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + self._calls)

    def _fixed_choice(
        self, group: Group, x: torch.Tensor, energy: float, gen: torch.Generator | None
    ) -> tuple[list[_Option], _Option, Decision | None]:
        """Dense at `bits` against the cheapest (by `transfer_cost`) method at `rank_fraction`."""
        fac = Factorizer(x)
        dense = _option(fac, GroupPlan("dense", (), self.bits), self.block, gen)
        if not group.factorizable or self.rank_fraction >= 1.0:
            return [dense], dense, None
        factored = []
        for method in self._methods_for(group):
            plan = GroupPlan(method, ranks_for(method, self.rank_fraction, group.dims), self.bits)
            # No smaller than dense and less accurate: cannot pay, so not worth measuring.
            if _plan_bytes(plan, group.dims, self.block) < dense.nbytes:
                factored.append(_option(fac, plan, self.block, gen))
        if not factored:
            return [dense], dense, None
        best = min(factored, key=lambda o: transfer_cost(o.nbytes, o.sq_error, energy))
        decision = should_factorize((dense.nbytes, dense.sq_error), (best.nbytes, best.sq_error), energy)
        return [dense, *factored], best if decision.factorize else dense, decision

    def _budget_menu(self, group: Group, x: torch.Tensor, gen: torch.Generator | None) -> list[_Option]:
        """Nothing, dense at 16/8/4 bits, and each method × rank ladder × 8/4 bits smaller than dense fp16."""
        fac = Factorizer(x)
        menu = [_Option(GroupPlan("zero", (), 8), 0, _sq_norm(x))]
        menu += [_option(fac, GroupPlan("dense", (), b), self.block, gen) for b in (16, 8, 4)]
        if not group.factorizable:
            return menu
        for method in self._methods_for(group):
            for ranks in rank_ladder(method, group.dims):
                for bits in (8, 4):
                    plan = GroupPlan(method, ranks, bits)
                    if _plan_bytes(plan, group.dims, self.block) < menu[1].nbytes:
                        menu.append(_option(fac, plan, self.block, gen))
        return menu

    def _fit_budget(self, menus: Sequence[Sequence[_Option]]) -> tuple[list[_Option], bytes, bool]:
        """1. Allocate the raw (pre-zstd) budget, which is sure to fit after zstd. 2. zstd usually
        shrinks the layout (int4 codes, fp16 exponents): allocate again with the raw budget grown by
        the ratio it achieved, and keep that while the payload still fits (at most twice)."""
        costs = [[(o.nbytes, o.sq_error) for o in m] for m in menus]
        raw_budget = self._raw_budget()
        picks, met = allocate(costs, raw_budget)
        chosen = [m[p] for m, p in zip(menus, picks, strict=True)]
        payload = zstd_compress(_serialize(chosen), self.zstd_level)
        for _ in range(2):
            raw = sum(o.nbytes for o in chosen)
            if not met or raw == 0 or len(payload) >= 0.98 * self.budget_bytes:
                break
            raw_budget = max(raw_budget + 1, int(raw_budget * raw / len(payload)))
            picks, _ = allocate(costs, raw_budget)
            trial = [m[p] for m, p in zip(menus, picks, strict=True)]
            trial_payload = zstd_compress(_serialize(trial), self.zstd_level)
            if len(trial_payload) > self.budget_bytes:
                break
            chosen, payload = trial, trial_payload
        return chosen, payload, met

    def _methods_for(self, group: Group) -> list[str]:
        # Tucker and TT only mean something over a stack of several matrices.
        return [m for m in self.methods if m == "svd" or group.dims[0] >= 2]

    def _raw_budget(self) -> int:
        """Bytes before zstd that are sure to fit the budget after it (zstd may grow random bytes)."""
        return max(0, self.budget_bytes - self.budget_bytes // 256 - _ZSTD_SLACK)

    # ------------------------------------------------------------------------------------ decode
    def decode(
        self, payload: bytes, manifest: Sequence[TensorSpec], params: Mapping[str, str], limits: DecodeLimits
    ) -> dict[str, torch.Tensor]:
        """1. Bound the manifest (decoded fp32 bytes <= limit). 2. Parse and check the plan against
        the groups. 3. Exact section sizes, bounded, then zstd. 4. Dequantize, rebuild, check finite."""
        with _cpu_single_threaded(True):
            return self._decode(payload, manifest, params, limits)

    def _decode(
        self, payload: bytes, manifest: Sequence[TensorSpec], params: Mapping[str, str], limits: DecodeLimits
    ) -> dict[str, torch.Tensor]:
        _checked_counts(manifest, limits.max_payload_bytes // 4)
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
        groups = group_manifest(manifest)
        block, plans = _parse_params(params, groups)
        layout = [part_shapes(p.method, p.ranks, g.dims) for g, p in zip(groups, plans, strict=True)]
        sizes = [[(math.prod(s), p.bits) for s in shapes] for shapes, p in zip(layout, plans, strict=True)]
        n_codes, n_halfs, n_scales = _section_sizes(sizes, block, limits.max_payload_bytes)
        raw = zstd_decompress(payload, n_codes + 2 * n_halfs + 4 * n_scales, limits.max_payload_bytes)
        codes, halfs, scales = _sections(raw, n_codes, n_halfs, n_scales)
        out: dict[str, torch.Tensor] = {}
        cursor = [0, 0, 0]
        for group, plan, shapes in zip(groups, plans, layout, strict=True):
            parts = [_take_part(codes, halfs, scales, cursor, s, plan.bits, block) for s in shapes]
            stack = reconstruct(plan.method, parts, group.dims)
            if not bool(torch.isfinite(stack).all()):
                raise CodecError(
                    f"{self.name}: tensor group of {manifest[group.members[0]].name!r} decodes to NaN or Inf"
                )
            for j, i in enumerate(group.members):
                out[manifest[i].name] = stack[j].reshape(manifest[i].shape)
        return {spec.name: out[spec.name] for spec in manifest}

    def estimate_ratio(self, manifest: Sequence[TensorSpec]) -> float:
        """fp32 bytes over the budget, or over dense at `bits` (factorization can only add to it)."""
        fp32 = 4 * sum(s.numel for s in manifest)
        if self.budget_bytes > 0:
            return fp32 / max(1, self.budget_bytes)
        groups = group_manifest(manifest)
        dense = sum(_plan_bytes(GroupPlan("dense", (), self.bits), g.dims, self.block) for g in groups)
        return fp32 / max(1, dense)


# ---------------------------------------------------------------------------------------- threads
_THREADS_LOCK = threading.Lock()


@contextmanager
def _cpu_single_threaded(on_cpu: bool) -> Iterator[None]:
    """Run CPU codec work on one intra-op thread, then restore the caller's setting.

    Why: the codec's tensors are small (B_g is tens to hundreds of KB); threads buy nothing there,
    and on busy cores OpenMP barriers make each small LAPACK call 100-1000x slower (measured on 2
    loaded cores: a batched SVD of 12 x [96, 8] took 0.4 ms on one thread and 105 ms on two). The
    lock keeps concurrent encodes (in-process meshes) from restoring each other's setting in builds
    where the thread count is process-wide rather than per thread (OpenMP keeps it per thread).
    """
    if not on_cpu:
        yield
        return
    with _THREADS_LOCK:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------- options
def _option(fac: Factorizer, plan: GroupPlan, block: int, gen: torch.Generator | None) -> _Option:
    """Factorize, quantize, then rebuild exactly as the decoder will, to measure the error."""
    dims = (fac.x.shape[0], fac.x.shape[1], fac.x.shape[2])
    shapes = part_shapes(plan.method, plan.ranks, dims)
    raw_parts = fac.parts(plan.method, plan.ranks)
    if [tuple(p.shape) for p in raw_parts] != shapes:
        raise CodecError(
            f"{plan}: factorization returned {[tuple(p.shape) for p in raw_parts]}, expected {shapes}"
        )
    quantized = [quantize(p.reshape(-1), plan.bits, block, gen) for p in raw_parts]
    rebuilt = [
        dequantize(q, math.prod(s), plan.bits, block).reshape(s)
        for q, s in zip(quantized, shapes, strict=True)
    ]
    approx = reconstruct(plan.method, rebuilt, dims, device=fac.x.device)
    sq_error = _sq_norm(fac.x - approx)
    return _Option(plan, _plan_bytes(plan, dims, block), sq_error, quantized)


def _sq_norm(x: torch.Tensor) -> float:
    # float64: squares of small updates (|x| < 1e-19) underflow in float32 and would read as zero.
    return float(x.double().pow(2).sum())


def _plan_bytes(plan: GroupPlan, dims: tuple[int, int, int], block: int) -> int:
    total = 0
    for shape in part_shapes(plan.method, plan.ranks, dims):
        codes, halfs = part_sizes(math.prod(shape), plan.bits, block)
        total += codes + 2 * halfs + 4
    return total


def allocate(menus: Sequence[Sequence[tuple[int, float]]], budget: int) -> tuple[list[int], bool]:
    """One option per group, (bytes, squared error) each, minimizing total error within `budget` bytes.

    1. Price λ: each group alone takes argmin(error + λ·bytes); its bytes fall as λ rises.
    2. Bisect λ (geometrically) to the lowest price whose picks fit the budget.
    3. Spend what is left greedily: the upgrade with the most error removed per extra byte that
       still fits, until none does (the price only reaches the convex hull of each menu).
    Returns the picks and whether they fit (False only when even the smallest options do not).
    """

    def picks_at(price: float) -> list[int]:
        return [_argmin(m, lambda o: (o[1] + price * o[0], o[0])) for m in menus]

    def total(picks: Sequence[int]) -> int:
        return sum(m[p][0] for m, p in zip(menus, picks, strict=True))

    smallest = [_argmin(m, lambda o: (o[0], o[1])) for m in menus]
    if total(smallest) > budget:
        return smallest, False
    picks = picks_at(0.0)
    if total(picks) > budget:
        lo, hi = 0.0, 1.0
        while total(picks_at(hi)) > budget:
            hi *= 16.0
        for _ in range(60):
            mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e6
            lo, hi = (mid, hi) if total(picks_at(mid)) > budget else (lo, mid)
        picks = picks_at(hi)
        if total(picks) > budget:
            picks = smallest
    return _spend_leftover(menus, picks, budget - total(picks)), True


def _argmin(
    menu: Sequence[tuple[int, float]], key: Callable[[tuple[int, float]], tuple[float, float]]
) -> int:
    return min(range(len(menu)), key=lambda k: key(menu[k]))


def _spend_leftover(menus: Sequence[Sequence[tuple[int, float]]], picks: list[int], left: int) -> list[int]:
    while True:
        best: tuple[float, int, int] | None = None
        for g, (menu, p) in enumerate(zip(menus, picks, strict=True)):
            for k, (nbytes, err) in enumerate(menu):
                extra, gain = nbytes - menu[p][0], menu[p][1] - err
                if gain > 0 and extra <= left:
                    rate = gain / max(extra, 1)
                    if best is None or rate > best[0]:
                        best = (rate, g, k)
        if best is None:
            return picks
        _, g, k = best
        left -= menus[g][k][0] - menus[g][picks[g]][0]
        picks[g] = k


# ---------------------------------------------------------------------------------------- layout
def _serialize(chosen: Sequence[_Option]) -> bytes:
    """codes | shuffled fp16 values | shuffled fp32 scales, each in group then part order."""
    parts = [q for option in chosen for q in option.parts]
    if not parts:
        return b""
    codes = torch.cat([q.codes for q in parts]).cpu().numpy().tobytes()
    halfs = torch.cat([q.halfs for q in parts]).cpu().numpy().astype("<f2", copy=False)
    scales = torch.cat([q.scale for q in parts]).cpu().numpy().astype("<f4", copy=False)
    return codes + shuffle(halfs, 2) + shuffle(scales, 4)


def _section_sizes(
    sizes: Sequence[Sequence[tuple[int, int]]], block: int, limit: int
) -> tuple[int, int, int]:
    n_codes = n_halfs = n_scales = 0
    for group in sizes:
        for numel, bits in group:
            codes, halfs = part_sizes(numel, bits, block)
            n_codes, n_halfs, n_scales = n_codes + codes, n_halfs + halfs, n_scales + 1
            if n_codes + 2 * n_halfs + 4 * n_scales > limit:
                raise CodecError(f"the plan needs more than the {limit}-byte payload limit")
    return n_codes, n_halfs, n_scales


def _sections(raw: bytes, n_codes: int, n_halfs: int, n_scales: int) -> tuple[torch.Tensor, ...]:
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


# ---------------------------------------------------------------------------------------- checks
def _check_options(
    zstd_level: object,
    bits: object,
    block: object,
    rank_fraction: object,
    methods: object,
    stochastic: object,
    budget_bytes: object,
) -> None:
    if isinstance(zstd_level, bool) or not isinstance(zstd_level, int) or not 1 <= zstd_level <= 22:
        raise CodecError(f"pipeline: zstd_level must be an integer in 1..22, got {zstd_level!r}")
    check_quant(bits, block)  # type: ignore[arg-type]
    if (
        isinstance(rank_fraction, bool)
        or not isinstance(rank_fraction, int | float)
        or not 0 < rank_fraction <= 1
    ):
        raise CodecError(f"pipeline: rank_fraction must be in (0, 1], got {rank_fraction!r}")
    if (
        isinstance(methods, str)
        or not isinstance(methods, Sequence)
        or not set(methods) <= set(FACTOR_METHODS)
    ):
        raise CodecError(
            f"pipeline: methods must be a list drawn from {', '.join(FACTOR_METHODS)}, got {methods!r}"
        )
    if not isinstance(stochastic, bool):
        raise CodecError(f"pipeline: stochastic must be true or false, got {stochastic!r}")
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
        raise CodecError(f"pipeline: budget_bytes must be an integer >= 0 (0 = off), got {budget_bytes!r}")


def _checked_inputs(tensors: Mapping[str, torch.Tensor]) -> list[TensorSpec]:
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise CodecError(f"tensor {name!r} must be a floating-point torch.Tensor")
        if t.numel() == 0:
            raise CodecError(f"tensor {name!r} is empty (shape {tuple(t.shape)}); decoders refuse zero dims")
        if not bool(torch.isfinite(t).all()):
            raise CodecError(f"cannot encode tensor {name!r}: it contains NaN or Inf")
    return manifest_of(tensors)


def _stacks(values: Sequence[torch.Tensor], groups: Sequence[Group]) -> list[torch.Tensor]:
    device = values[0].device if values else torch.device("cpu")
    return [
        torch.stack([values[i].detach().to(device=device, dtype=torch.float32) for i in g.members]).reshape(
            g.dims
        )
        for g in groups
    ]


def _parse_params(params: Mapping[str, str], groups: Sequence[Group]) -> tuple[int, list[GroupPlan]]:
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


# ---------------------------------------------------------------------------------------- stats
def _stats(
    manifest: Sequence[TensorSpec],
    groups: Sequence[Group],
    menus: Sequence[Sequence[_Option]],
    chosen: Sequence[_Option],
    decisions: Sequence[Decision | None],
    energies: Sequence[float],
    payload: bytes,
    met: bool,
    budget: int,
    seconds: float,
) -> EncodeStats:
    def rel(err: float, energy: float) -> float:
        return math.sqrt(err / energy) if energy > 0 else 0.0

    per_group = tuple(
        GroupStats(
            first=manifest[g.members[0]].name,
            members=len(g.members),
            dims=g.dims,
            plan=str(c.plan),
            nbytes=c.nbytes,
            rel_error=rel(c.sq_error, e),
            decision=d,
            options=tuple((str(o.plan), o.nbytes, rel(o.sq_error, e)) for o in menu),
        )
        for g, menu, c, d, e in zip(groups, menus, chosen, decisions, energies, strict=True)
    )
    total_err, total_energy = sum(c.sq_error for c in chosen), sum(energies)
    return EncodeStats(
        per_group,
        len(payload),
        4 * sum(s.numel for s in manifest),
        rel(total_err, total_energy),
        budget,
        met,
        seconds,
    )


def lora_fp32_bytes(manifest: Sequence[TensorSpec], in_features: Mapping[str, int] | None = None) -> int:
    """Bytes of the plain fp32 LoRA exchange (A and B of every adapted layer) for this update.

    Every tensor of the manifest counts at 4 bytes per value. A `lora_B` [out, r] whose `lora_A`
    (same name with lora_A) is not in the manifest (FFA-LoRA: A frozen, not sent) adds its A,
    [r, in], with `in` from `in_features[name of B]`, or out when absent (square projections such as
    attention q/v; pass the real in_features for MLP projections).
    """
    names = {spec.name for spec in manifest}
    total = 0
    for spec in manifest:
        total += 4 * spec.numel
        if (
            "lora_B" in spec.name
            and len(spec.shape) == 2
            and spec.name.replace("lora_B", "lora_A") not in names
        ):
            out, r = spec.shape
            total += 4 * r * (in_features or {}).get(spec.name, out)
    return total
