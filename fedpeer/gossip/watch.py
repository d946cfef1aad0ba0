"""Watching a node's consensus distance for CHOCO diverging: a distance that grows round after round.

With a lossy codec CHOCO converges only for a small enough step γ (Koloskova, Stich and Jaggi 2019):
the public copies x̂ lag the models by what the codec has not yet got through, and the mix
x += γ Σ_j w_ij (x̂_j − x̂_i) feeds that lag back. When γ is too large for the codec, the lag grows every
round, and with it the distance of a node's model to its neighbours' public copies. Measured on the
medical benchmark (MTSamples, 4 sites on a ring, 32 rounds × 8 steps at lr 1.2e-2, the pipeline codec
at 2,600 bytes per link-round; docs/results/medical): at γ = 0.8 every node's distance grew 11 to 26
rounds in a row, from about 5 to 22–29, and the shared model lost 6 to 8 points of macro-F1 on the
common test set (seeds 0–1); at γ = 0.5 (seeds 0–11, 48 node-runs), and with the lossless codec at
γ = 1, no node's distance grew more than 5 rounds in a row.

A node logs the warning (`Node.run_round`); the sim runner prints one line a round for all its nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["GROWTH_ROUNDS", "DistanceWatch"]

# Above the longest run of growth seen in a converging mesh (5 rounds, early in training), below the
# shortest of a diverging one (9 rounds, dual at lr 3e-3 over 32 rounds).
GROWTH_ROUNDS = 8


@dataclass
class DistanceWatch:
    """Counts the rounds in a row in which the consensus distance grew; says so every `rounds` of them."""

    lossy: bool  # the node's codec loses information (CHOCO then needs gamma < 1)
    gamma: float
    rounds: int = GROWTH_ROUNDS
    _last: float = field(default=math.nan, init=False)
    _start: float = field(default=math.nan, init=False)
    _streak: int = field(default=0, init=False)

    def observe(self, distance: float) -> str | None:
        """Feed one round's distance (NaN, a round without neighbours, starts the count again).
        Returns a warning after `rounds` rounds of growth in a row, and after each further `rounds`."""
        if not math.isfinite(distance):
            self._last, self._streak = math.nan, 0
            return None
        if math.isfinite(self._last) and distance > self._last:
            self._streak += 1
        else:
            self._streak, self._start = 0, distance
        self._last = distance
        if self._streak == 0 or self._streak % self.rounds:
            return None
        grown = (
            f"the consensus distance has grown {self._streak} rounds in a row "
            f"({self._start:.3g} -> {distance:.3g})"
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
