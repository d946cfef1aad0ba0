"""Low-rank stage: grouping, factorizations against exact references, rank checks, the pay decision."""

from __future__ import annotations

import threading

import pytest
import tensorly as tl
import torch

from fedpeer.codec.factorize import (
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
from fedpeer.codec.options import FACTOR_METHODS
from fedpeer.errors import CodecError
from fedpeer.tensors import TensorSpec

DIMS = [(12, 48, 8), (2, 3, 5), (5, 2, 2), (4, 20, 30)]


def _low_rank_stack(dims: tuple[int, int, int], ranks: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """A stack with exact multilinear ranks: a Tucker product of a random core and factors."""
    gen = torch.Generator().manual_seed(seed)
    core = torch.randn(ranks, generator=gen)
    f = [torch.linalg.qr(torch.randn(d, r, generator=gen)).Q for d, r in zip(dims, ranks, strict=True)]
    return torch.einsum("abc,ia,jb,kc->ijk", core, *f)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --- grouping ------------------------------------------------------------------------------------


def test_group_manifest_stacks_same_shape_matrices_in_order() -> None:
    manifest = [
        TensorSpec("l0.q.lora_B", (384, 8)),
        TensorSpec("l0.v.lora_B", (384, 8)),
        TensorSpec("head.weight", (6, 384)),
        TensorSpec("l1.q.lora_B", (384, 8)),
        TensorSpec("head.bias", (6,)),
        TensorSpec("scalar", ()),
    ]
    assert group_manifest(manifest) == [
        Group((0, 1, 3), (3, 384, 8)),
        Group((2,), (1, 6, 384)),
        Group((4,), (1, 1, 6)),
        Group((5,), (1, 1, 1)),
    ]
    assert [g.factorizable for g in group_manifest(manifest)] == [True, True, False, False]


# --- factorizations ------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("method", FACTOR_METHODS)
def test_full_rank_factorization_is_exact(dims: tuple[int, int, int], method: str) -> None:
    x = torch.randn(dims, generator=torch.Generator().manual_seed(sum(dims)))
    ranks = ranks_for(method, 1.0, dims)
    parts = Factorizer(x).parts(method, ranks)
    assert [tuple(p.shape) for p in parts] == part_shapes(method, ranks, dims)
    assert _rel(reconstruct(method, parts, dims), x) < 1e-5


@pytest.mark.parametrize("method", ["tucker", "tt"])
def test_stack_factorizations_recover_true_low_rank_structure(method: str) -> None:
    dims = (12, 48, 8)
    x = _low_rank_stack(dims, (2, 3, 2))
    ranks = (2, 3, 2) if method == "tucker" else (2, 2)
    parts = Factorizer(x).parts(method, ranks)
    assert _rel(reconstruct(method, parts, dims), x) < 1e-4
    # One rank less cannot represent it: the check above is not vacuous.
    smaller = (1, 2, 2) if method == "tucker" else (1, 2)
    assert _rel(reconstruct(method, Factorizer(x).parts(method, smaller), dims), x) > 0.05


def test_truncated_svd_error_is_the_tail_energy() -> None:
    """Eckart-Young: rank-k truncation leaves exactly the energy of the dropped singular values."""
    x = torch.randn(5, 40, 8, generator=torch.Generator().manual_seed(4))
    s = torch.linalg.svdvals(x)
    for k in (1, 3, 7):
        approx = reconstruct("svd", Factorizer(x).parts("svd", (k,)), (5, 40, 8))
        expected = float(s[:, k:].pow(2).sum())
        assert float((approx - x).pow(2).sum()) == pytest.approx(expected, rel=1e-3)


def test_svd_parts_hold_one_direction_per_row() -> None:
    x = torch.randn(3, 30, 6, generator=torch.Generator().manual_seed(5))
    us, v = Factorizer(x).parts("svd", (2,))
    assert us.shape == (3, 2, 30) and v.shape == (3, 2, 6)
    torch.testing.assert_close(v @ v.transpose(1, 2), torch.eye(2).expand(3, 2, 2), atol=1e-5, rtol=0)
    # Rows of (U·S)ᵀ carry the singular values: the first row is the larger one.
    assert bool((us[:, 0].norm(dim=1) >= us[:, 1].norm(dim=1)).all())


def test_tucker_leaves_tensorly_backend_of_other_threads_alone() -> None:
    seen: list[str] = []
    Factorizer(torch.randn(4, 6, 5)).parts("tucker", (2, 2, 2))
    assert tl.get_backend() == "numpy"
    thread = threading.Thread(target=lambda: seen.append(tl.get_backend()))
    thread.start()
    thread.join()
    assert seen == ["numpy"]


# --- ranks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("method", FACTOR_METHODS)
def test_rank_ladder_shrinks_to_ones_and_fits(dims: tuple[int, int, int], method: str) -> None:
    ladder = rank_ladder(method, dims)
    assert ladder[-1] == (1,) * len(ladder[-1]) and len(set(ladder)) == len(ladder)
    for ranks in ladder:
        part_shapes(method, ranks, dims)  # every rung is valid for the dims
    sizes = [sum(torch.Size(s).numel() for s in part_shapes(method, r, dims)) for r in ladder]
    assert sizes == sorted(sizes, reverse=True)


def test_rank_ladder_steps_by_about_sqrt_2() -> None:
    # A LoRA factor's side is its rank r; halving alone would skip rank 3 (and 6, 12) of r = 8, 16.
    assert rank_ladder("svd", (4, 384, 8)) == [(6,), (4,), (3,), (2,), (1,)]
    assert rank_ladder("svd", (4, 4096, 16)) == [(12,), (8,), (6,), (4,), (3,), (2,), (1,)]


def test_tucker_ranks_are_clipped_to_the_core() -> None:
    r = ranks_for("tucker", 0.5, (12, 384, 8))
    assert r == (6, 24, 4)  # mode 1: ceil(0.5 * 96) = 48 clipped to 6 * 4
    assert all(r[i] <= r[(i + 1) % 3] * r[(i + 2) % 3] for i in range(3))
    assert ranks_for("svd", 0.5, (12, 384, 8)) == (4,)


BAD_RANKS = [
    pytest.param("svd", (9,), "outside 1..8", id="svd-rank-above-r"),
    pytest.param("svd", (0,), "outside", id="svd-rank-zero"),
    pytest.param("svd", (4, 4), "needs 1 ranks", id="svd-two-ranks"),
    pytest.param("tucker", (12, 384, 9), "outside", id="tucker-inflated"),
    pytest.param("tucker", (13, 1, 1), "outside", id="tucker-layer-rank"),
    pytest.param("tt", (2**40, 2), "outside", id="tt-huge"),
    pytest.param("dense", (1,), "needs 0 ranks", id="dense-with-rank"),
    pytest.param("cp", (2,), "unknown", id="unknown-method"),
    pytest.param("svd", (True,), "outside", id="bool-rank"),
]


@pytest.mark.parametrize(("method", "ranks", "message"), BAD_RANKS)
def test_part_shapes_refuses_ranks_that_do_not_fit(method: str, ranks: tuple[int, ...], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        part_shapes(method, ranks, (12, 384, 8))


# --- when factorization pays ---------------------------------------------------------------------

DECISIONS = [
    # (dense bytes, dense sq err), (factored bytes, sq err), energy, pays
    pytest.param((1000, 1.0), (500, 10.0), 100.0, True, id="half-bytes-small-error"),
    pytest.param((1000, 1.0), (500, 40.0), 100.0, False, id="half-bytes-large-error"),
    pytest.param((1000, 0.0), (1000, 0.0), 100.0, False, id="tie-goes-dense"),
    pytest.param((1000, 0.0), (10, 120.0), 100.0, False, id="error-above-energy"),
    pytest.param((1000, 0.0), (10, 0.0), 0.0, True, id="zero-update-fewer-bytes"),
]


@pytest.mark.parametrize(("dense", "factored", "energy", "pays"), DECISIONS)
def test_should_factorize(
    dense: tuple[int, float], factored: tuple[int, float], energy: float, pays: bool
) -> None:
    d = should_factorize(dense, factored, energy)
    assert d.factorize is pays
    assert (d.dense_bytes, d.factored_bytes) == (dense[0], factored[0])


def test_pay_rule_is_bytes_over_delta_squared() -> None:
    assert transfer_cost(500, 10.0, 100.0) == pytest.approx(500 / 0.9**2)
    assert transfer_cost(500, 100.0, 100.0) == float("inf")


def test_noise_does_not_pay_but_low_rank_does() -> None:
    """The decision on real data: rank 2 of 8 for i.i.d. noise vs. a stack of rank-2 matrices."""
    dims = (6, 64, 8)
    noise = torch.randn(dims, generator=torch.Generator().manual_seed(6))
    low = torch.einsum("lmk,lkn->lmn", torch.randn(6, 64, 2), torch.randn(6, 2, 8))
    for x, pays in ((noise, False), (low, True)):
        approx = reconstruct("svd", Factorizer(x).parts("svd", (2,)), dims)
        energy = float(x.pow(2).sum())
        factored = (2 * 6 * (64 + 8) * 4, float((approx - x).pow(2).sum()))
        assert should_factorize((x.numel() * 4, 0.0), factored, energy).factorize is pays
