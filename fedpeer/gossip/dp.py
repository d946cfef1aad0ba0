"""Differential privacy for the global adapter: clip each round's update and add Gaussian noise before
it leaves the site (as SDFLoRA does for its shared adapter); the local adapter never leaves the site
and is not touched.

What is released, and to whom. Each round node i sends one update q_i = x_i - x̂_i (CHOCO's
difference, `encode_update` in fedpeer/node/loop.py) to its neighbours. With DP on it sends instead

    q̃_i = q_i · min(1, C / ||q_i||) + N(0, σ² C² I)          (C = gossip.dp_clip_norm, σ = noise multiplier)

before encoding, and adds the *decoded* q̃_i to its own public copy x̂_i, exactly what its neighbours
add: the noise is part of x̂_i everywhere, so the copies stay bit-identical (the codec, the wire,
snapshots and the mixing only ever see q̃_i or sums of them: post-processing). The compression error
and the clipped-off part stay in x_i - x̂_i and go out, clipped and noised again, in later rounds
(error feedback); so does -noise, which is the price of keeping x̂ exact.

The guarantee, stated honestly:
- Unit of privacy: the site (user-level / site-level DP, as DP-FedAvg's user-level guarantee). The
  Gaussian mechanism's sensitivity is C under add/remove adjacency of the site's contribution
  (a site's clipped update against none). Replacing the site's whole data by other data can move a
  clipped update by up to 2C: that guarantee is the ε of noise multiplier σ/2.
- Each round is one Gaussian mechanism with noise multiplier σ on data that may depend on everything
  released before (adaptive composition). No sampling: every round uses the site's data, so there is
  no amplification by subsampling; record-level DP (one patient among the site's records) would need
  per-example clipping in the optimizer and is *not* what this gives (it is implied, loosely, by the
  site-level guarantee).
- ε(δ) after k releases is computed with the `dp-accounting` package (Rényi DP accountant, converted
  to (ε, δ)); k is the number of updates this site has sent (its seq, checkpointed). An update sent
  after the last checkpoint and lost in a crash is not counted: at most one uncounted release per
  crash. A node that catches up (skips rounds) releases nothing for the skipped rounds.
- The noise comes from torch's generator seeded from the OS's random source; floating-point Gaussian
  sampling is not hardened against the attacks on the low bits of floats (Mironov 2012), and the codec
  rounds q̃ (post-processing, harmless to the guarantee).
- Neighbours and anyone who can read the wire see only q̃ (and snapshots, sums of q̃). The mesh's
  models are then post-processing too. The local adapter and the head, when local, never leave.

`gossip.dp_epsilon` (a target) without `gossip.dp_noise_multiplier` calibrates σ so that all of
`gossip.rounds` releases together spend at most that ε at `gossip.dp_delta`; with both, the ε is a
budget the given σ must fit, checked when the node starts.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

from fedpeer.errors import ConfigError
from fedpeer.tensors import State, StateView

if TYPE_CHECKING:
    from fedpeer.config import GossipConfig

__all__ = [
    "GaussianPrivatizer",
    "PrivacyReport",
    "calibrate_noise_multiplier",
    "clip_and_noise",
    "epsilon_after",
    "from_config",
    "require_dp_accounting",
    "update_norm",
]

INSTALL_HINT = "pip install 'fedpeer[dp]' (or pip install dp-accounting)"


def require_dp_accounting() -> Any:
    """The `dp_accounting` module, or a ConfigError that says how to install it."""
    try:
        import dp_accounting
    except ImportError:
        raise ConfigError(
            f"gossip.dp = true needs the dp-accounting package to account the privacy loss: {INSTALL_HINT}, "
            "or set gossip.dp = false"
        ) from None
    return dp_accounting


@dataclass(frozen=True)
class PrivacyReport:
    """One round's release: its place in the count, the loss so far, and how hard it was clipped."""

    releases: int  # updates sent so far, this one included
    epsilon: float  # spent after `releases` releases, at `delta`
    delta: float
    noise_multiplier: float
    update_norm: float  # ||q|| before clipping (the clipped update's norm is min(this, C))
    clipped: bool  # ||q|| > C


def update_norm(q: StateView) -> float:
    """L2 norm over all tensors together, in float64."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in q.values()))


def clip_and_noise(
    q: StateView, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> tuple[State, float]:
    """(q · min(1, C/||q||) + N(0, (σC)²) per value, ||q||), as new tensors of q's dtypes and devices.
    The noise is drawn on the CPU from `generator`, key by key in sorted order (reproducible for a
    given seed)."""
    if clip_norm <= 0 or noise_multiplier < 0:
        raise ValueError(f"need clip_norm > 0 and noise_multiplier >= 0, got {clip_norm}, {noise_multiplier}")
    norm = update_norm(q)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clip_norm
    out: State = {}
    for k in sorted(q):
        t = q[k]
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float64) * std
        out[k] = (t.double() * scale + noise).to(device=t.device, dtype=t.dtype)
    return {k: out[k] for k in q}, norm


@lru_cache(maxsize=4096)
def epsilon_after(noise_multiplier: float, releases: int, delta: float) -> float:
    """ε at `delta` after `releases` Gaussian mechanisms of noise multiplier σ (sensitivity 1), with
    dp-accounting's Rényi DP accountant. inf for σ = 0 with at least one release; 0 without releases."""
    if releases <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    dpa = require_dp_accounting()
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant()
    accountant.compose(dpa.GaussianDpEvent(noise_multiplier), releases)
    return float(accountant.get_epsilon(delta))


def calibrate_noise_multiplier(target_epsilon: float, delta: float, releases: int) -> float:
    """The smallest σ (to dp-accounting's tolerance, rounded up) such that `releases` rounds spend at
    most `target_epsilon` at `delta`."""
    if target_epsilon <= 0 or not 0 < delta < 1 or releases < 1:
        raise ValueError(
            f"need epsilon > 0, 0 < delta < 1, releases >= 1; got {target_epsilon}, {delta}, {releases}"
        )
    dpa = require_dp_accounting()
    from dp_accounting import rdp

    sigma = float(
        dpa.calibrate_dp_mechanism(
            rdp.RdpAccountant,
            lambda s: dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(s), releases),
            target_epsilon,
            delta,
            bracket_interval=dpa.LowerEndpointAndGuess(1e-3, 1.0),
        )
    )
    # The calibration's answer is within its tolerance of the boundary: step up until it fits.
    while epsilon_after(sigma, releases, delta) > target_epsilon:
        sigma *= 1.001
    return sigma


class GaussianPrivatizer:
    """A site's DP release: clip + noise each outgoing update, count releases, account ε."""

    def __init__(
        self, clip_norm: float, noise_multiplier: float, delta: float, seed: int | None = None
    ) -> None:
        require_dp_accounting()
        if clip_norm <= 0 or noise_multiplier <= 0 or not 0 < delta < 1:
            raise ValueError(
                f"need clip_norm > 0, noise_multiplier > 0, 0 < delta < 1; got {clip_norm}, "
                f"{noise_multiplier}, {delta}"
            )
        self.clip_norm, self.noise_multiplier, self.delta = clip_norm, noise_multiplier, delta
        self.generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)

    def privatize(self, q: StateView, releases: int) -> tuple[State, PrivacyReport]:
        """q̃ for release number `releases` (1, 2, ...; the update's seq) and the loss after it."""
        out, norm = clip_and_noise(q, self.clip_norm, self.noise_multiplier, self.generator)
        report = PrivacyReport(
            releases=releases,
            epsilon=self.epsilon(releases),
            delta=self.delta,
            noise_multiplier=self.noise_multiplier,
            update_norm=norm,
            clipped=norm > self.clip_norm,
        )
        return out, report

    def epsilon(self, releases: int) -> float:
        return epsilon_after(self.noise_multiplier, releases, self.delta)

    def describe(self) -> str:
        return (
            f"DP on the global adapter: clip {self.clip_norm:g}, noise multiplier "
            f"{self.noise_multiplier:.4g}, delta {self.delta:g} (site-level, Gaussian mechanism per round)"
        )


def from_config(g: GossipConfig, seed: int | None = None) -> GaussianPrivatizer | None:
    """The node's privatizer for its gossip settings; None when gossip.dp is off. σ is
    gossip.dp_noise_multiplier, or calibrated from gossip.dp_epsilon over gossip.rounds releases."""
    if not g.dp:
        return None
    require_dp_accounting()
    sigma = g.dp_noise_multiplier or calibrate_noise_multiplier(g.dp_epsilon, g.dp_delta, g.rounds)
    if g.dp_noise_multiplier and g.dp_epsilon:  # both: the epsilon is a budget the multiplier must fit
        spent = epsilon_after(sigma, g.rounds, g.dp_delta)
        if spent > g.dp_epsilon:
            fits = calibrate_noise_multiplier(g.dp_epsilon, g.dp_delta, g.rounds)
            raise ConfigError(
                f"gossip.dp_noise_multiplier {sigma:g} spends epsilon {spent:.3g} over {g.rounds} rounds at "
                f"delta {g.dp_delta:g}, above gossip.dp_epsilon {g.dp_epsilon:g}: raise it to at least "
                f"{fits:.4g}, run fewer rounds, or set dp_noise_multiplier = 0 to calibrate it"
            )
    return GaussianPrivatizer(g.dp_clip_norm, sigma, g.dp_delta, seed=seed)
