"""Watching a node's consensus distance for CHOCO diverging: a distance that grows round after round,
faster than the model itself.

With a lossy codec CHOCO converges only for a small enough step γ (Koloskova, Stich and Jaggi 2019):
the public copies x̂ lag the models by what the codec has not yet got through, and the mix
x += γ Σ_j w_ij (x̂_j − x̂_i) feeds that lag back. When γ is too large for the codec, the lag grows every
round, and with it the distance of a node's model to its neighbours' public copies.

The watch counts the rounds in a row in which that distance, divided by the norm of the node's mixed
model, grew. The distance alone also grows while training moves the models away from where they
started (LoRA's B starts at zero), and on the medical benchmark (docs/results/medical) it grew 8 or 9
rounds in a row early on at 17 nodes of 9 runs that then converged, lossless ones among them. Over
all the benchmark's recorded runs (552 node-runs of 138 runs that converged: lossless, fp16, and the
pipeline codec at γ ≤ 0.65, 8 or 32 rounds; the last 30 recorded after the rule was set) the
relative distance never grew more than 4 rounds in a row. In the 8 runs that diverged (γ = 0.8
over 32 rounds, MTSamples and Medical Abstracts, the shared model and dual), 26 of 32 nodes grew 8
or more rounds in a row, 10 to 19 at the longest, and every run warned, first at round 15 to 24.

A node logs the warning (`Node.run_round`); the sim runner prints one line a round for all its nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["GROWTH_ROUNDS", "DistanceWatch"]

# Twice the longest run of growth of the relative distance seen in a converging mesh (4 rounds),
# below the longest in every diverging one (10 to 19 rounds).
GROWTH_ROUNDS = 8


@dataclass
class DistanceWatch:
    """Counts the rounds in a row in which the consensus distance relative to the model's norm grew;
    says so every `rounds` of them."""

    lossy: bool  # the node's codec loses information (CHOCO then needs gamma < 1)
    gamma: float
    rounds: int = GROWTH_ROUNDS
    _last: float = field(default=math.nan, init=False)
    _start: float = field(default=math.nan, init=False)
    _streak: int = field(default=0, init=False)

    def observe(self, distance: float, norm: float) -> str | None:
        """Feed one round's consensus distance and the norm of the node's mixed model (a NaN distance,
        a round without neighbours, or a zero norm starts the count again). Returns a warning after
        `rounds` rounds of growth of distance / norm in a row, and after each further `rounds`."""
        relative = distance / norm if norm > 0 else math.nan
        if not math.isfinite(relative):
            self._last, self._streak = math.nan, 0
            return None
        if math.isfinite(self._last) and relative > self._last:
            self._streak += 1
        else:
            self._streak, self._start = 0, relative
        self._last = relative
        if self._streak == 0 or self._streak % self.rounds:
            return None
        grown = (
            f"the consensus distance, relative to the model's norm, has grown {self._streak} rounds in a "
            f"row ({self._start:.3g} -> {relative:.3g})"
        )
        if self.lossy:
            return (
                f"{grown}: CHOCO is diverging, gossip.gamma = {self.gamma:g} is too large for what the lossy "
                "codec gets through. Lower gossip.gamma (on the medical benchmark 0.5 converged where 0.8 "
                "diverged) or give the codec more bytes (codec.budget_bytes)"
            )
        return (
            f"{grown}: local training moves the sites apart faster than mixing brings them together. "
            "Lower train.lr or train.steps_per_round, or raise gossip.gamma if it is below 1"
        )
