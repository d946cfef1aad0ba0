"""CHOCO's sender side at one node, kept beside the pure math of `choco.py` (as PowerSGD keeps its
error memory in a state object beside its hook).

Node i publishes x̂_i, the sum of every decoded update it has sent. Its neighbours hold bit-identical
copies of x̂_i because they add the same decoded updates in the same order: updates carry
`seq = 1, 2, ...` within an *epoch* (one run of the process). π_i, the node's target weight for
data-aware mixing, travels with each update. The round loop commits updates while transport threads
read snapshots, so both go through one lock.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from fedpeer.gossip import choco

T = TypeVar("T")


class SenderState:
    def __init__(self, zeros: Mapping[str, torch.Tensor]) -> None:
        self.x_hat: dict[str, torch.Tensor] = {k: torch.zeros_like(v) for k, v in zeros.items()}
        self.seq = 0  # of the last update sent
        self.sent_round = 0  # round of the last update sent
        self.epoch = uuid.uuid4().hex[:12]  # new on every start: neighbours resync a restarted node
        self.pi = 1.0
        self._lock = threading.Lock()

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

    def snapshot(self, encode: Callable[[Mapping[str, torch.Tensor], int, int, float], T]) -> T:
        """encode(x̂_self, sent_round, seq, pi), all four as of one moment (for a resyncing neighbour)."""
        with self._lock:
            return encode(self.x_hat, self.sent_round, self.seq, self.pi)

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
