"""CHOCO's sender side at one node, kept beside the pure math of `choco.py` (as PowerSGD keeps its
error memory in a state object beside its hook).

Node i publishes x̂_i, the sum of every decoded update it has sent. Its neighbours hold bit-identical
copies of x̂_i because they add the same decoded updates in the same order: updates carry
`seq = 1, 2, ...` within an *epoch* (one run of the process). π_i, the node's target weight for
data-aware mixing, travels with each update. The round loop commits updates while transport threads
read snapshots, so both go through one lock.

A neighbour that lost track of x̂_i (our restart, a lost frame) pulls a snapshot while it mixes its
round t, and we may already have sent our round-t+1 update: x̂_i as of round t is what it must mix.
So the state keeps x̂_i after each of its last few updates (`history` of them; one round each, and
neighbours are never more than max_rounds_ahead rounds apart) and serves the latest of a round <= t.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from fedpeer.gossip import choco

T = TypeVar("T")


@dataclass(frozen=True)
class _Published:
    """x̂_self right after update `seq` (of round `round`) was sent."""

    round: int
    seq: int
    x_hat: dict[str, torch.Tensor]
    pi: float


class SenderState:
    def __init__(self, zeros: Mapping[str, torch.Tensor], history: int = 4) -> None:
        self.x_hat: dict[str, torch.Tensor] = {k: torch.zeros_like(v) for k, v in zeros.items()}
        self.seq = 0  # of the last update sent
        self.sent_round = 0  # round of the last update sent
        self.epoch = uuid.uuid4().hex[:12]  # new on every start: neighbours resync a restarted node
        self.pi = 1.0
        self._lock = threading.Lock()
        self._history: deque[_Published] = deque(maxlen=history)
        self._publish()

    def _publish(self) -> None:
        x_hat = {k: v.clone() for k, v in self.x_hat.items()}
        self._history.append(_Published(self.sent_round, self.seq, x_hat, self.pi))

    def difference(self, x: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """q = x - x̂_self: what the next update carries."""
        return choco.difference(x, self.x_hat)

    def commit(self, round: int, q_wire: Mapping[str, torch.Tensor]) -> None:
        """Update `seq + 1` is sent: add what the receivers decode (not q itself) to x̂_self, so the
        compression error stays in x - x̂_self and goes out later (error feedback)."""
        with self._lock:
            choco.add_(self.x_hat, {k: v.to(self.x_hat[k].device) for k, v in q_wire.items()})
            self.seq += 1
            self.sent_round = round
            self._publish()

    def snapshot(
        self, encode: Callable[[Mapping[str, torch.Tensor], int, int, float], T], max_round: int = 0
    ) -> T:
        """encode(x̂_self, round, seq, pi) as of our latest update of a round <= max_round (0: the
        latest of all). If all kept updates are later, the oldest kept: the requester sees from its
        round that it cannot mix it yet."""
        with self._lock:
            fits = [p for p in self._history if not max_round or p.round <= max_round]
            p = fits[-1] if fits else self._history[0]
            return encode(p.x_hat, p.round, p.seq, p.pi)

    # --- checkpoint ---------------------------------------------------------------------------------
    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        with self._lock:
            meta = {"seq": self.seq, "sent_round": self.sent_round, "pi": self.pi}
            return self.x_hat, meta

    def restore(self, x_hat: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Resume x̂_self, seq and pi from a checkpoint; the epoch stays new."""
        with self._lock:
            for k, v in x_hat.items():
                self.x_hat[k].copy_(v)
            self.seq, self.sent_round = int(meta["seq"]), int(meta["sent_round"])
            self.pi = float(meta.get("pi", 1.0))
            self._history.clear()
            self._publish()
