"""Low-rank stage of the pipeline codec: tensor groups, factorizations, and when they pay.

Tensors of an update are grouped by shape: all 2-D tensors of one shape (e.g. the B_g [out, r] of
q and v in every layer) are stacked into one [L, m, n] tensor; every other tensor is its own group,
viewed as [1, 1, numel] (dense only). The grouping depends on the manifest alone, so the decoder
rebuilds it without trusting the sender.

Methods per group (ranks are checked against the group's dims on both sides):

- `dense`  one part, the stack itself;
- `zero`   nothing is sent (budget mode: error feedback sends it later);
- `svd`    per-matrix truncated SVD, rank k: parts (U·S)ᵀ [L, k, m] and Vᵀ [L, k, n];
- `tucker` Tucker of the stack (tensorly, HOOI from an HOSVD start), ranks (r0, r1, r2):
           core [r0, r1, r2] and factors [L, r0], [m, r1], [n, r2];
- `tt`     tensor train of the stack (tensorly), ranks (r1, r2): cores [L, r1], [r1, m, r2], [r2, n].

A rank fraction f asks each method for f times the rank each of its unfoldings can have (for a
B_g [out, r]: svd rank ceil(f·r)). Whether a factorization is worth sending is decided per group
by `should_factorize` from the measured error and size of both options.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import tensorly as tl
import torch
from tensorly.decomposition import tensor_train, tucker

from fedpeer.codec.options import FACTOR_METHODS, METHODS
from fedpeer.errors import CodecError
from fedpeer.tensors import Manifest

__all__ = [
    "FACTOR_METHODS",
    "METHODS",
    "Decision",
    "Factorizer",
    "Group",
    "group_manifest",
    "part_shapes",
    "rank_ladder",
    "ranks_for",
    "reconstruct",
    "rel_error",
    "should_factorize",
    "transfer_cost",
]

# FACTOR_METHODS and METHODS are defined in `fedpeer.codec.options` (re-exported here).
# HOOI sweeps after the HOSVD start: the first sweep gains most; more cost CPU for little.
TUCKER_ITERS = 2


@dataclass(frozen=True)
class Group:
    """Manifest entries that travel as one stacked tensor of dims (L, m, n)."""

    members: tuple[int, ...]  # manifest indices, in manifest order
    dims: tuple[int, int, int]

    @property
    def numel(self) -> int:
        return self.dims[0] * self.dims[1] * self.dims[2]

    @property
    def factorizable(self) -> bool:
        return min(self.dims[1], self.dims[2]) >= 2


def group_manifest(manifest: Manifest) -> list[Group]:
    """2-D tensors grouped by shape (first appearance order); other tensors alone as [1, 1, numel]."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    order: list[tuple[int, ...] | int] = []
    for i, spec in enumerate(manifest):
        if len(spec.shape) == 2:
            if spec.shape not in by_shape:
                by_shape[spec.shape] = []
                order.append(spec.shape)
            by_shape[spec.shape].append(i)
        else:
            order.append(i)
    groups = []
    for key in order:
        if isinstance(key, int):
            groups.append(Group((key,), (1, 1, manifest[key].numel)))
        else:
            groups.append(Group(tuple(by_shape[key]), (len(by_shape[key]), key[0], key[1])))
    return groups


def part_shapes(method: str, ranks: tuple[int, ...], dims: tuple[int, int, int]) -> list[tuple[int, ...]]:
    """Shapes of the parts a method sends for a group; refuses ranks that do not fit the dims."""
    L, m, n = dims
    if method in ("dense", "zero"):
        _expect_ranks(method, ranks, ())
        return [dims] if method == "dense" else []
    if method == "svd":
        _expect_ranks(method, ranks, (min(m, n),))
        (k,) = ranks
        return [(L, k, m), (L, k, n)]
    if method == "tucker":
        _expect_ranks(method, ranks, (min(L, m * n), min(m, L * n), min(n, L * m)))
        r0, r1, r2 = ranks
        return [(r0, r1, r2), (L, r0), (m, r1), (n, r2)]
    if method == "tt":
        _expect_ranks(method, ranks, (min(L, m * n), min(n, L * m)))
        r1, r2 = ranks
        return [(L, r1), (r1, m, r2), (r2, n)]
    raise CodecError(f"unknown factorization method {method!r} (known: {', '.join(METHODS)})")


def _expect_ranks(method: str, ranks: tuple[int, ...], bounds: tuple[int, ...]) -> None:
    if len(ranks) != len(bounds):
        raise CodecError(f"{method} needs {len(bounds)} ranks, got {len(ranks)}")
    for r, bound in zip(ranks, bounds, strict=True):
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= bound:
            raise CodecError(f"{method} rank {r!r} is outside 1..{bound} for this tensor group")


def ranks_for(method: str, fraction: float, dims: tuple[int, int, int]) -> tuple[int, ...]:
    """Ranks of `method` at rank fraction f: ceil(f · the largest useful rank of each unfolding)."""
    L, m, n = dims

    def frac(full: int) -> int:
        return max(1, min(full, math.ceil(fraction * full)))

    if method in ("dense", "zero"):
        return ()
    if method == "svd":
        return (frac(min(m, n)),)
    if method == "tucker":
        r = [frac(min(L, m * n)), frac(min(m, L * n)), frac(min(n, L * m))]
        # A mode rank above the product of the other two adds bytes but no accuracy (the core's
        # unfolding cannot have a higher rank), and tensorly would clip it behind our back.
        while True:
            clipped = [min(r[i], r[(i + 1) % 3] * r[(i + 2) % 3]) for i in range(3)]
            if clipped == r:
                return tuple(r)
            r = clipped
    if method == "tt":
        r1 = frac(min(L, m * n))
        # TT-SVD: the second rank is bounded by r1·m too (tensorly clips it otherwise).
        return (r1, min(frac(min(L * m, n)), r1 * m))
    raise CodecError(f"unknown factorization method {method!r}")


def rank_ladder(method: str, dims: tuple[int, int, int]) -> list[tuple[int, ...]]:
    """Distinct ranks at fractions 2^(-1/2), 1/2, 2^(-3/2), 1/4, ... down to all-ones (budget mode's
    menu). Steps of sqrt(2), not 2: on LoRA factors (a side of r = 8) halving jumps from rank 2 to 4,
    and the budget then fell between them (a 2,600-byte budget sent rank 2 at 0.71 relative error
    where rank 3 fit at 0.58)."""
    out: list[tuple[int, ...]] = []
    k = 1
    while True:
        ranks = ranks_for(method, 2.0 ** (-k / 2), dims)
        if ranks not in out:
            out.append(ranks)
        if all(r == 1 for r in ranks):
            return out
        k += 1


def numel_of(shapes: Sequence[tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes)


class Factorizer:
    """Factorizations of one group's stack x [L, m, n] (fp32, any device); the SVD is computed once."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self._svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._tucker_factors: list[torch.Tensor] | None = None
        # Budget mode asks for the same ranks at several bit widths; Tucker and TT are the costly ones.
        self._memo: dict[tuple[str, tuple[int, ...]], list[torch.Tensor]] = {}

    def parts(self, method: str, ranks: tuple[int, ...]) -> list[torch.Tensor]:
        key = (method, ranks)
        if key not in self._memo:
            self._memo[key] = self._compute(method, ranks)
        return self._memo[key]

    def _compute(self, method: str, ranks: tuple[int, ...]) -> list[torch.Tensor]:
        if method == "dense":
            return [self.x]
        if method == "zero":
            return []
        if method == "svd":
            return self._svd_parts(ranks[0])
        if method == "tucker":
            return self._tucker(ranks)
        with _pytorch_backend():
            if method == "tt":
                cores = tensor_train(self.x, rank=[1, ranks[0], ranks[1], 1])
                return [cores[0][0], cores[1], cores[2][..., 0]]
        raise CodecError(f"unknown factorization method {method!r}")

    def _tucker(self, ranks: tuple[int, ...]) -> list[torch.Tensor]:
        """1. tensorly Tucker (HOOI from an HOSVD start) at the first ranks asked for that exceed
        what is at hand. 2. Smaller ranks (budget mode's ladder) reuse the leading columns of those
        factors, which come ordered by singular value, with the core projected again, X ×_i U_iᵀ
        (the best core for those factors): one decomposition per group instead of one per rung."""
        have = self._tucker_factors
        if have is None or any(r > u.shape[1] for r, u in zip(ranks, have, strict=True)):
            with _pytorch_backend():
                core, factors = tucker(self.x, rank=list(ranks), init="svd", n_iter_max=TUCKER_ITERS)
            self._tucker_factors = list(factors)
            return [core, *factors]
        f = [u[:, :r].contiguous() for u, r in zip(have, ranks, strict=True)]
        return [torch.einsum("ijk,ia,jb,kc->abc", self.x, *f), *f]

    def _svd_parts(self, k: int) -> list[torch.Tensor]:
        """1. Batched thin SVD of every matrix (once). 2. Keep k: (U_k·S_k)ᵀ and V_kᵀ, one row per
        singular direction, so that quantization blocks never mix directions of unequal scale."""
        if self._svd is None:
            self._svd = torch.linalg.svd(self.x, full_matrices=False)
        u, s, vh = self._svd
        return [(u[..., :k] * s[:, None, :k]).transpose(1, 2).contiguous(), vh[:, :k, :].contiguous()]


def reconstruct(
    method: str, parts: Sequence[torch.Tensor], dims: tuple[int, int, int], device: torch.device | None = None
) -> torch.Tensor:
    """The group's stack [L, m, n] from its (dequantized) parts (`device` is only used by `zero`)."""
    if method == "dense":
        return parts[0].reshape(dims)
    if method == "zero":
        return torch.zeros(dims, device=device)
    if method == "svd":
        return torch.einsum("lkm,lkn->lmn", parts[0], parts[1])
    if method == "tucker":
        core, f0, f1, f2 = parts
        # Contract one mode at a time: intermediates stay at most [L, m, r2] or [L, m, n].
        t = torch.einsum("abc,ia->ibc", core, f0)
        t = torch.einsum("ibc,jb->ijc", t, f1)
        return torch.einsum("ijc,kc->ijk", t, f2)
    if method == "tt":
        g0, g1, g2 = parts
        return torch.einsum("ia,ajb,bk->ijk", g0, g1, g2)
    raise CodecError(f"unknown factorization method {method!r}")


@dataclass(frozen=True)
class Decision:
    """Whether a factorized option beats sending the group dense, with both sizes and errors."""

    factorize: bool
    dense_bytes: int
    factored_bytes: int
    dense_rel_error: float
    factored_rel_error: float


def should_factorize(dense: tuple[int, float], factored: tuple[int, float], energy: float) -> Decision:
    """Decide from (bytes, squared error) of the dense and the factorized option of a group.

    1. δ = 1 - ||q - Q(q)||² / ||q||²: the share of the update's energy an option delivers (1 when
       the group is all zeros).
    2. cost = bytes / δ². CHOCO-Gossip's consensus rate scales with δ² (Koloskova et al. 2019,
       Thm. 2; the residual is resent through error feedback), so bytes / δ² is proportional to the
       bytes needed to reach a given accuracy.
    3. Factorize only when its cost is strictly lower; ties go to dense (cheaper to encode).
    """
    pays = transfer_cost(*factored, energy) < transfer_cost(*dense, energy)
    return Decision(pays, dense[0], factored[0], rel_error(dense[1], energy), rel_error(factored[1], energy))


def transfer_cost(nbytes: int, sq_error: float, energy: float) -> float:
    """bytes / δ², δ = 1 - sq_error / energy (see `should_factorize`); inf when nothing gets through."""
    delta = 1.0 - sq_error / energy if energy > 0 else 1.0
    return nbytes / delta**2 if delta > 0 else math.inf


def rel_error(sq_error: float, energy: float) -> float:
    """Relative error sqrt(sq_error / energy) of an option (0.0 for an all-zero group)."""
    return math.sqrt(sq_error / energy) if energy > 0 else 0.0


@contextmanager
def _pytorch_backend() -> Iterator[None]:
    """tensorly's pytorch backend for this thread only (tl.backend_context would reset the global one)."""
    previous = tl.get_backend()
    tl.set_backend("pytorch", local_threadsafe=True)
    try:
        yield
    finally:
        tl.set_backend(previous, local_threadsafe=True)
