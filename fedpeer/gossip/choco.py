"""CHOCO-Gossip (Koloskova, Stich and Jaggi, ICML 2019) as pure functions over state dicts.

Node i keeps its model x_i, a public copy x̂_i of itself, and one public copy x̂_j per neighbour j.
Every copy of x̂_j in the mesh receives exactly the same compressed differences in the same order,
so all of them stay identical without ever sending a full model. One round:

1. Train: x_i <- local optimizer steps on x_i.
2. Difference: q_i = x_i - x̂_i                                              (`difference`)
3. Compress and send: encode q_i, send it to every neighbour. Then decode it locally too and apply
   the *decoded* q̃_i: x̂_i += q̃_i, exactly what the neighbours add to their copy.  (`add_`)
4. Receive: for each neighbour j, decode q̃_j and apply x̂_j += q̃_j.          (`add_`)
5. Mix: x_i <- x_i + γ Σ_j w_ij (x̂_j - x̂_i)                                (`mix`)

With an exact codec and γ = 1, x̂ equals x after step 3/4 and step 5 is plain gossip x <- W x. With a
lossy codec, x̂ lags x by a shrinking error, and CHOCO still converges to the mesh average for a
small enough γ (whereas mixing the compressed models themselves does not). A neighbour whose update
missed the round deadline simply drops out of step 5; its weight stays with the node itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedpeer.tensors import State, StateView

__all__ = ["add_", "consensus_distance", "difference", "mix", "state_norm", "zeros_like"]


def zeros_like(x: StateView) -> State:
    """Initial public copy: zeros, so round 1 sends the full state as its first difference."""
    return {k: torch.zeros_like(t) for k, t in x.items()}


def difference(x: StateView, x_hat_self: StateView) -> State:
    """q = x - x̂_self, as new tensors."""
    _same_keys(x, x_hat_self, "x_hat_self")
    return {k: x[k] - _like(x_hat_self[k], x[k]) for k in x}


def add_(x_hat: StateView, q: StateView) -> None:
    """x̂ += q in place (q may come from another device or dtype, e.g. a decoded CPU update)."""
    _same_keys(x_hat, q, "q")
    for k, t in x_hat.items():
        if q[k].shape != t.shape:
            raise ValueError(f"q[{k!r}] has shape {tuple(q[k].shape)}, expected {tuple(t.shape)}")
        t.add_(_like(q[k], t))


def mix(
    x: StateView,
    x_hat_self: StateView,
    x_hat_neighbours: Mapping[str, StateView],
    weights: Mapping[str, float],
    gamma: float,
) -> State:
    """x + γ Σ_j w_ij (x̂_j - x̂_self) over the neighbours present; new tensors, inputs untouched."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    _same_keys(x, x_hat_self, "x_hat_self")
    for j, x_hat_j in x_hat_neighbours.items():
        _same_keys(x, x_hat_j, f"x_hat_neighbours[{j!r}]")
        if j not in weights:
            raise ValueError(f"no mixing weight for neighbour {j!r}")
    out: State = {}
    for k, xk in x.items():
        self_k = _like(x_hat_self[k], xk)
        # Differences first: near consensus x̂_j ≈ x̂_self, and subtracting before summing keeps
        # the small signal instead of cancelling large sums.
        drift = torch.zeros_like(xk)
        for j, x_hat_j in x_hat_neighbours.items():
            drift.add_(_like(x_hat_j[k], xk) - self_k, alpha=float(weights[j]))
        out[k] = xk + gamma * drift
    return out


def consensus_distance(x: StateView, x_hat_neighbours: Mapping[str, StateView]) -> float:
    """sqrt(mean over neighbours j of Σ_keys ||x - x̂_j||²); 0.0 without neighbours."""
    if not x_hat_neighbours:
        return 0.0
    total = 0.0
    for j, x_hat_j in x_hat_neighbours.items():
        _same_keys(x, x_hat_j, f"x_hat_neighbours[{j!r}]")
        total += sum(float((x[k].double() - _like(x_hat_j[k], x[k]).double()).pow(2).sum()) for k in x)
    return math.sqrt(total / len(x_hat_neighbours))


def state_norm(x: StateView) -> float:
    """sqrt(Σ_keys ||x||²), in float64."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in x.values()))


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return t.to(device=ref.device, dtype=ref.dtype)


def _same_keys(ref: StateView, other: StateView, what: str) -> None:
    if ref.keys() != other.keys():
        missing = sorted(set(ref) - set(other))
        extra = sorted(set(other) - set(ref))
        raise ValueError(f"{what} keys differ from the state: missing {missing[:5]}, unexpected {extra[:5]}")
