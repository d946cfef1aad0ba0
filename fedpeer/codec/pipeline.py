"""The `pipeline` codec: low-rank where it pays → blockwise int8/int4 (fp16 scales) → byte-shuffle + zstd.

Encode (`PipelineCodec.encode`), one stage per module:

1. Group the tensors by shape (`factorize.group_manifest`) and stack each group to [L, m, n] (fp32,
   on the tensors' device: CUDA updates stay on the GPU until the final bytes).
2. Plan (`plan`): build each group's options: dense, and (fixed mode) each factorization method at
   the configured rank fraction, or (budget mode) a menu of methods × ranks × bit widths, plus
   sending nothing. Every option is factorized (`factorize`), quantized (`quantize`) and
   reconstructed, so its error is measured, not guessed.
3. Choose. Fixed mode: per group, factorize only where it pays (`factorize.should_factorize`).
   Budget mode: the options that minimize the total squared error within `budget_bytes`
   (`plan.allocate`).
4. Lay the chosen parts out (`layout`) as three sections, codes (uint8) | fp16 values | fp32 part
   scales; the float sections are byte-shuffled; the whole is one zstd frame (`bytes`).
5. Params for the decoder: layout version, block size and the plan, one `method/ranks/bits` entry per
   group. What was decided and why is in `codec.last_stats` (`stats`; not on the wire: it would cost
   bytes).

Decode trusts nothing: the grouping comes from the manifest (already checked against the local
model), every plan entry is checked against its group's dims (ranks, bits, block), the exact section
sizes follow and are bounded by `DecodeLimits` before zstd allocates anything, scales must be finite,
and the rebuilt tensors must be finite.

The settings and their checks are in `options`; CPU work runs on one thread (`threads`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch

from fedpeer.codec.base import (
    FP32_BYTES,
    Codec,
    DecodeLimits,
    Encoded,
    check_encodable,
    check_manifest,
    check_payload,
    fp32_bytes,
    register,
)
from fedpeer.codec.bytes import zstd_compress, zstd_decompress
from fedpeer.codec.factorize import Decision, Group, group_manifest, part_shapes, reconstruct
from fedpeer.codec.layout import params_for, parse_params, read_groups, section_sizes, serialize
from fedpeer.codec.options import check_pipeline_options
from fedpeer.codec.plan import GroupPlan, Option, Planner, allocate, plan_bytes, raw_budget, sq_norm
from fedpeer.codec.stats import EncodeStats, encode_stats
from fedpeer.codec.threads import cpu_single_threaded
from fedpeer.errors import CodecError
from fedpeer.tensors import Manifest, State, StateView, TensorSpec, manifest_of

__all__ = ["PipelineCodec"]

# Budget mode's search for the largest raw budget that still fits after zstd: at most this many
# trials (each an allocation, a layout and a zstd pass over a few kB), to this many bytes.
_FILL_STEPS, _FILL_RESOLUTION = 10, 8


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
        check_pipeline_options(zstd_level, bits, block, rank_fraction, methods, stochastic, budget_bytes)
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
    def encode(self, tensors: StateView) -> Encoded:
        start = time.perf_counter()
        on_cpu = all(t.device.type == "cpu" for t in tensors.values())
        with cpu_single_threaded(on_cpu):
            return self._encode(tensors, start)

    def _encode(self, tensors: StateView, start: float) -> Encoded:
        # 1. group and stack
        manifest = _checked_inputs(tensors)
        groups = group_manifest(manifest)
        stacks = _stacks(list(tensors.values()), groups)
        generator = self._generator(stacks)
        energies = [sq_norm(x) for x in stacks]
        # 2-4. plan, choose, lay out and compress
        planner = Planner(self.bits, self.block, self.rank_fraction, self.methods)
        if self.budget_bytes > 0:
            menus = [planner.budget_menu(g, x, generator) for g, x in zip(groups, stacks, strict=True)]
            chosen, payload, met = self._fit_budget(menus)
            decisions: list[Decision | None] = [None] * len(groups)
        else:
            menus, chosen, decisions, met = [], [], [], True
            for g, x, energy in zip(groups, stacks, energies, strict=True):
                menu, pick, decision = planner.fixed_choice(g, x, energy, generator)
                menus.append(menu)
                chosen.append(pick)
                decisions.append(decision)
            payload = zstd_compress(serialize(chosen), self.zstd_level)
        # 5. params and stats
        params = params_for(self.block, chosen, self.zstd_level)
        met = met and (self.budget_bytes <= 0 or len(payload) <= self.budget_bytes)
        self.last_stats = encode_stats(
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
        return Encoded(payload, params, raw_bytes=fp32_bytes(manifest))

    def _generator(self, stacks: Sequence[torch.Tensor]) -> torch.Generator | None:
        if not self.stochastic:
            return None
        self._calls += 1
        device = stacks[0].device if stacks else torch.device("cpu")
        # A fresh stream per call: rounds draw independent noise, and a rerun draws the same.
        return torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + self._calls)

    def _fit_budget(self, menus: Sequence[Sequence[Option]]) -> tuple[list[Option], bytes, bool]:
        """The picks of least total error whose zstd payload fits `budget_bytes`.

        1. Allocate the raw (pre-zstd) budget, which is sure to fit after zstd.
        2. zstd usually shrinks the layout (int4 codes, fp16 exponents), so a larger raw budget may
           fit too: bisect the raw budget between that one and 1.25 times what the achieved ratio
           allows, keeping the fitting picks of least error (the payload's size is not monotone in
           the raw budget, so every trial is checked, none assumed).
        """
        costs = [[(o.nbytes, o.sq_error) for o in m] for m in menus]
        lo = raw_budget(self.budget_bytes)
        picks, met = allocate(costs, lo)
        chosen, payload, error = self._trial(menus, picks)
        raw = sum(o.nbytes for o in chosen)
        if not met or raw == 0 or len(payload) >= 0.99 * self.budget_bytes:
            return chosen, payload, met
        hi = max(lo + 1, int(1.25 * lo * raw / len(payload)))
        for _ in range(_FILL_STEPS):
            if hi - lo <= _FILL_RESOLUTION:
                break
            mid = (lo + hi) // 2
            trial, trial_payload, trial_error = self._trial(menus, allocate(costs, mid)[0])
            if len(trial_payload) > self.budget_bytes:
                hi = mid
                continue
            lo = mid
            if trial_error < error:
                chosen, payload, error = trial, trial_payload, trial_error
        return chosen, payload, met

    def _trial(
        self, menus: Sequence[Sequence[Option]], picks: Sequence[int]
    ) -> tuple[list[Option], bytes, float]:
        chosen = [m[p] for m, p in zip(menus, picks, strict=True)]
        return chosen, zstd_compress(serialize(chosen), self.zstd_level), sum(o.sq_error for o in chosen)

    # ------------------------------------------------------------------------------------ decode
    def decode(
        self, payload: bytes, manifest: Manifest, params: Mapping[str, str], limits: DecodeLimits
    ) -> State:
        """1. Bound the manifest (decoded fp32 bytes <= limit). 2. Parse and check the plan against
        the groups. 3. Exact section sizes, bounded, then zstd. 4. Dequantize, rebuild, check finite."""
        with cpu_single_threaded(True):
            return self._decode(payload, manifest, params, limits)

    def _decode(
        self, payload: bytes, manifest: Manifest, params: Mapping[str, str], limits: DecodeLimits
    ) -> State:
        check_manifest(manifest, limits.max_payload_bytes // FP32_BYTES)
        check_payload(payload)
        groups = group_manifest(manifest)
        block, plans = parse_params(params, groups)
        layout = [part_shapes(p.method, p.ranks, g.dims) for g, p in zip(groups, plans, strict=True)]
        sizes = section_sizes(layout, plans, block, limits.max_payload_bytes)
        raw = zstd_decompress(payload, sizes.nbytes, limits.max_payload_bytes)
        out: State = {}
        for group, plan, parts in zip(
            groups, plans, read_groups(raw, sizes, layout, plans, block), strict=True
        ):
            stack = reconstruct(plan.method, parts, group.dims)
            if not bool(torch.isfinite(stack).all()):
                raise CodecError(
                    f"{self.name}: tensor group of {manifest[group.members[0]].name!r} decodes to NaN or Inf"
                )
            for j, i in enumerate(group.members):
                out[manifest[i].name] = stack[j].reshape(manifest[i].shape)
        return {spec.name: out[spec.name] for spec in manifest}

    def estimate_ratio(self, manifest: Manifest) -> float:
        """fp32 bytes over the budget, or over dense at `bits` (factorization can only add to it)."""
        fp32 = fp32_bytes(manifest)
        if self.budget_bytes > 0:
            return fp32 / max(1, self.budget_bytes)
        groups = group_manifest(manifest)
        dense = sum(plan_bytes(GroupPlan("dense", (), self.bits), g.dims, self.block) for g in groups)
        return fp32 / max(1, dense)


def _checked_inputs(tensors: StateView) -> list[TensorSpec]:
    for name, t in tensors.items():
        check_encodable(name, t)
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
