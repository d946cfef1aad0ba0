"""Planning stage of the pipeline codec: the method, ranks and bits each tensor group is sent with.

An option is one plan for one group (`GroupPlan`, on the wire as `method/ranks/bits`), factorized,
quantized and rebuilt exactly as the decoder will (`measure`): its bytes and squared error are
measured, not guessed.

- Fixed mode (`Planner.fixed_choice`): dense at `bits` against the cheapest (by `transfer_cost`)
  method at `rank_fraction`; factorize only where it pays (`factorize.should_factorize`).
- Budget mode (`Planner.budget_menu`, then `allocate`): per group a menu of nothing, dense at
  16/8/4 bits, and each method × rank ladder × 8/4 bits; then the picks that minimize the total
  squared error within the bytes budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from fedpeer.codec.factorize import (
    Decision,
    Factorizer,
    Group,
    part_shapes,
    rank_ladder,
    ranks_for,
    reconstruct,
    should_factorize,
    transfer_cost,
)
from fedpeer.codec.quantize import Quantized, dequantize, part_sizes, quantize
from fedpeer.errors import CodecError

__all__ = ["GroupPlan", "Option", "Planner", "allocate", "measure", "plan_bytes", "raw_budget", "sq_norm"]

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
class Option:
    """One measured plan for one group: its bytes before zstd, squared error and quantized parts."""

    plan: GroupPlan
    nbytes: int
    sq_error: float
    parts: list[Quantized] = field(default_factory=list)


def sq_norm(x: torch.Tensor) -> float:
    # float64: squares of small updates (|x| < 1e-19) underflow in float32 and would read as zero.
    return float(x.double().pow(2).sum())


def plan_bytes(plan: GroupPlan, dims: tuple[int, int, int], block: int) -> int:
    """Bytes of a group's parts in the layout (codes, fp16 values, one fp32 scale each)."""
    total = 0
    for shape in part_shapes(plan.method, plan.ranks, dims):
        codes, halfs = part_sizes(math.prod(shape), plan.bits, block)
        total += codes + 2 * halfs + 4
    return total


def measure(fac: Factorizer, plan: GroupPlan, block: int, gen: torch.Generator | None) -> Option:
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
    sq_error = sq_norm(fac.x - approx)
    return Option(plan, plan_bytes(plan, dims, block), sq_error, quantized)


@dataclass(frozen=True)
class Planner:
    """The options of each group under the codec's settings (checked by the codec)."""

    bits: int
    block: int
    rank_fraction: float
    methods: tuple[str, ...]

    def fixed_choice(
        self, group: Group, x: torch.Tensor, energy: float, gen: torch.Generator | None
    ) -> tuple[list[Option], Option, Decision | None]:
        """Dense at `bits` against the cheapest (by `transfer_cost`) method at `rank_fraction`."""
        fac = Factorizer(x)
        dense = measure(fac, GroupPlan("dense", (), self.bits), self.block, gen)
        if not group.factorizable or self.rank_fraction >= 1.0:
            return [dense], dense, None
        factored = []
        for method in self._methods_for(group):
            plan = GroupPlan(method, ranks_for(method, self.rank_fraction, group.dims), self.bits)
            # No smaller than dense and less accurate: cannot pay, so not worth measuring.
            if plan_bytes(plan, group.dims, self.block) < dense.nbytes:
                factored.append(measure(fac, plan, self.block, gen))
        if not factored:
            return [dense], dense, None
        best = min(factored, key=lambda o: transfer_cost(o.nbytes, o.sq_error, energy))
        decision = should_factorize((dense.nbytes, dense.sq_error), (best.nbytes, best.sq_error), energy)
        return [dense, *factored], best if decision.factorize else dense, decision

    def budget_menu(self, group: Group, x: torch.Tensor, gen: torch.Generator | None) -> list[Option]:
        """Nothing, dense at 16/8/4 bits, and each method × rank ladder × 8/4 bits smaller than dense fp16."""
        fac = Factorizer(x)
        menu = [Option(GroupPlan("zero", (), 8), 0, sq_norm(x))]
        menu += [measure(fac, GroupPlan("dense", (), b), self.block, gen) for b in (16, 8, 4)]
        if not group.factorizable:
            return menu
        for method in self._methods_for(group):
            for ranks in rank_ladder(method, group.dims):
                for bits in (8, 4):
                    plan = GroupPlan(method, ranks, bits)
                    if plan_bytes(plan, group.dims, self.block) < menu[1].nbytes:
                        menu.append(measure(fac, plan, self.block, gen))
        return menu

    def _methods_for(self, group: Group) -> list[str]:
        # Tucker and TT only mean something over a stack of several matrices.
        return [m for m in self.methods if m == "svd" or group.dims[0] >= 2]


# ---------------------------------------------------------------------------------------- budget
def raw_budget(budget_bytes: int) -> int:
    """Bytes before zstd that are sure to fit the budget after it (zstd may grow random bytes)."""
    return max(0, budget_bytes - budget_bytes // 256 - _ZSTD_SLACK)


def allocate(menus: Sequence[Sequence[tuple[int, float]]], budget: int) -> tuple[list[int], bool]:
    """One option per group, (bytes, squared error) each, minimizing total error within `budget` bytes.

    1. Price λ: each group alone takes argmin(error + λ·bytes), ties to fewer bytes; the total bytes
       never grow as λ rises, and the picks change only at the menus' critical prices (where two
       options of a group cost the same).
    2. Bisect the sorted critical prices to the lowest whose picks fit the budget.
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
        prices = sorted(
            {(e1 - e2) / (b2 - b1) for m in menus for b1, e1 in m for b2, e2 in m if b2 > b1 and e1 > e2}
        )
        lo, hi = 0, len(prices)  # the answer's index is in [lo, hi]; len(prices): none fits
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if total(picks_at(prices[mid])) > budget else (lo, mid)
        picks = picks_at(prices[lo]) if lo < len(prices) else smallest
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
