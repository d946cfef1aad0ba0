"""Byzantine-robust mixing: ClippedGossip (He, Karimireddy and Jaggi, ICLR 2023) on CHOCO's public
copies, plus a per-round norm bound that names offenders. Pure functions over state dicts, like
`choco.py`.

Plain CHOCO mixing adds γ Σ_j w_ij (x̂_j - x̂_i) to x_i: one neighbour that publishes an arbitrary x̂_j
(a scaled or sign-flipped update, a spoofed 1e30) moves x_i by as much as it likes, and the damage
spreads through the mesh. ClippedGossip clips each neighbour's contribution to a radius τ_i around
the node's own value before it is weighted:

    x_i <- x_i + γ Σ_j w_ij CLIP(x̂_j - x̂_i, τ_i),   CLIP(v, τ) = v · min(1, τ / ||v||)

so a neighbour of weight w_ij moves x_i by at most γ w_ij τ_i per round, whatever it sends. The norm
is the L2 norm over the whole update (all tensors of the global adapter together), in float64.

Why x̂_j - x̂_i and not x̂_j - x_i (the paper's x_j - x_i). In the paper every node sends its model, so
"the node's own value" is x_i. Under CHOCO a node's neighbours hold x̂_i, not x_i, and x_i - x̂_i is
the compression error not yet sent (error feedback). Clipping x̂_j - x̂_i keeps CHOCO's structure:
- with a lossless codec x̂_i = x_i at mixing time (the round's update was just committed), so the two
  forms are the same and this is exactly the paper's ClippedGossip;
- with a lossy codec, x̂_j - x_i = (x̂_j - x̂_i) - (x_i - x̂_i) would add a pull of x_i towards its own
  stale public copy (Σ_j w_ij (x̂_i - x_i)): it undoes the part of the training not yet sent, and the
  mesh sum is no longer kept (CHOCO's convergence rests on Σ_i Σ_j w_ij (x̂_j - x̂_i) = 0);
- CLIP is odd (CLIP(-v) = -CLIP(v)), so with a fixed radius two honest neighbours clip the same vector
  with opposite signs and still exchange exactly opposite amounts: the mesh sum stays invariant;
- x̂_j - x̂_i is computed from public copies that every neighbour of i holds bit for bit, so who was
  clipped, and by how much, can be checked by anyone holding the copies.
The robustness argument of the paper only needs the centre to be a value the node trusts; x̂_i is
its own public copy, within the (shrinking) compression error of x_i.

The radius τ_i (`clip_radius`):
- fixed (`radius > 0`): the same τ every round (the paper's theory picks it from the honest
  neighbours' spread, which a node does not know);
- adaptive (`radius = 0`, the paper's practical rule): with δ the share of the node's neighbour weight
  assumed Byzantine (`byzantine_fraction`), sort the neighbours by ||x̂_j - x̂_i||, farthest first, and
  clip the fewest farthest ones whose weights add up to at least δ Σ_j w_ij; τ_i is the distance of the
  farthest neighbour left unclipped. With one Byzantine neighbour among d equal-weight neighbours and
  δ >= 1/d, the farthest one is always clipped to the distance of the next one: a Byzantine neighbour
  can never pull harder than the honest neighbour farthest away (the authors' code does this for a
  single attacker: τ = the second-largest distance). δ = 0 clips nobody. When every neighbour would be
  clipped (one neighbour, or a heavy near one), the nearest keeps its contribution whole: a node never
  cuts itself off (a lone Byzantine neighbour is then bounded only by `bound`).

The norm bound (`bound > 0`, absolute, in the units of the adapter): a contribution longer than
`bound` is an *offender*: it is left out of this round's mix, as a neighbour that is down is (its
weight stays with the node), and reported, so that the node logs it with the neighbour's id. A
contribution that is NaN or infinite is always an offender. Clipping bounds what a Byzantine neighbour
can do per round; the bound removes the grossly wrong ones outright, which clipping alone cannot do on
sparse graphs: on a ring each node has two neighbours, and the adaptive radius (the honest
neighbour's distance) still lets a neighbour that is always far push every round
(tests/test_robust.py measures both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from fedpeer.gossip.choco import _like, _same_keys
from fedpeer.tensors import State, StateView

__all__ = ["ClipReport", "adaptive_radius", "clip_radius", "clipped_mix", "contribution_norms"]


@dataclass(frozen=True)
class ClipReport:
    """What one robust mix did: the radius used, every neighbour's distance, whom it clipped."""

    radius: float  # τ_i; math.inf when nothing bounded the contributions
    norms: dict[str, float] = field(default_factory=dict)  # ||x̂_j - x̂_i|| per neighbour mixed
    # contribution scaled down (norm > radius), farthest first
    clipped: list[str] = field(default_factory=list)
    # norm > bound, or not finite: left out of the mix; farthest first
    offenders: list[str] = field(default_factory=list)


def contribution_norms(x_hat_self: StateView, x_hat_neighbours: Mapping[str, StateView]) -> dict[str, float]:
    """||x̂_j - x̂_self|| over all tensors together, in float64 (inf or nan if the copy holds them)."""
    out: dict[str, float] = {}
    for j, x_hat_j in x_hat_neighbours.items():
        _same_keys(x_hat_self, x_hat_j, f"x_hat_neighbours[{j!r}]")
        sq = 0.0
        for k, ref in x_hat_self.items():
            sq += float((_like(x_hat_j[k], ref).double() - ref.double()).pow(2).sum())
        out[j] = math.sqrt(sq)  # inf or nan pass through
    return out


def adaptive_radius(
    norms: Mapping[str, float], weights: Mapping[str, float], byzantine_fraction: float
) -> float:
    """τ_i such that the farthest neighbours holding at least `byzantine_fraction` of the neighbour
    weight are clipped: the distance of the farthest neighbour left unclipped (see the module doc).
    inf without neighbours or with byzantine_fraction = 0 (nobody clipped)."""
    if not 0.0 <= byzantine_fraction < 1.0:
        raise ValueError(f"byzantine_fraction must be in [0, 1), got {byzantine_fraction}")
    if not norms or byzantine_fraction == 0.0:
        return math.inf
    # Non-finite distances sort first (farthest): they are clipped before any finite one.
    order = sorted(norms, key=lambda j: _sort_key(norms[j]), reverse=True)
    target = byzantine_fraction * sum(float(weights[j]) for j in order)
    clipped_weight, n_clipped = 0.0, 0
    for j in order:
        if clipped_weight >= target * (1.0 - 1e-12) and n_clipped > 0:
            break
        clipped_weight += float(weights[j])
        n_clipped += 1
    kept = order[n_clipped:] or order[-1:]  # all clipped: the nearest keeps its contribution
    tau = norms[kept[0]]
    return tau if math.isfinite(tau) else 0.0


def clip_radius(
    norms: Mapping[str, float],
    weights: Mapping[str, float],
    *,
    radius: float = 0.0,
    byzantine_fraction: float = 0.0,
    bound: float = 0.0,
) -> float:
    """τ_i: `radius` if > 0 (math.inf: no clipping), else the adaptive one over the neighbours within
    `bound` (when > 0: offenders do not set the radius)."""
    if radius < 0 or bound < 0:
        raise ValueError(f"radius and bound must be >= 0, got {radius} and {bound}")
    if radius > 0:
        return radius
    kept = {j: n for j, n in norms.items() if math.isfinite(n) and not (bound > 0 and n > bound)}
    return adaptive_radius(kept, weights, byzantine_fraction)


def clipped_mix(
    x: StateView,
    x_hat_self: StateView,
    x_hat_neighbours: Mapping[str, StateView],
    weights: Mapping[str, float],
    gamma: float,
    *,
    radius: float = 0.0,
    byzantine_fraction: float = 0.0,
    bound: float = 0.0,
) -> tuple[State, ClipReport]:
    """x + γ Σ_j w_ij CLIP(x̂_j - x̂_self, τ_i) over the neighbours present, offenders (beyond `bound`,
    or not finite) left out; new tensors, inputs untouched. τ_i from `clip_radius`. With nothing
    clipped or left out the result is bit-identical to `choco.mix` (an unclipped contribution is not
    rescaled)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    _same_keys(x, x_hat_self, "x_hat_self")
    for j in x_hat_neighbours:
        if j not in weights:
            raise ValueError(f"no mixing weight for neighbour {j!r}")
    norms = contribution_norms(x_hat_self, x_hat_neighbours)
    tau = clip_radius(norms, weights, radius=radius, byzantine_fraction=byzantine_fraction, bound=bound)
    by_norm = sorted(norms, key=lambda j: _sort_key(norms[j]), reverse=True)
    offenders = [j for j in by_norm if not math.isfinite(norms[j]) or (bound > 0 and norms[j] > bound)]
    scales = {j: 1.0 if norms[j] <= tau else tau / norms[j] for j in by_norm if j not in offenders}
    scales.update(dict.fromkeys(offenders, 0.0))
    report = ClipReport(
        radius=tau,
        norms=dict(norms),
        clipped=[j for j in by_norm if j not in offenders and scales[j] < 1.0],
        offenders=offenders,
    )
    out: State = {}
    for k, xk in x.items():
        self_k = _like(x_hat_self[k], xk)
        drift = torch.zeros_like(xk)  # differences first, as in choco.mix
        for j, x_hat_j in x_hat_neighbours.items():
            s = scales[j]
            if s == 0.0:
                continue
            diff = _like(x_hat_j[k], xk) - self_k
            if s < 1.0:
                diff = diff * s
            drift.add_(diff, alpha=float(weights[j]))
        out[k] = xk + gamma * drift
    return out, report


def _sort_key(n: float) -> float:
    return math.inf if not math.isfinite(n) else n
