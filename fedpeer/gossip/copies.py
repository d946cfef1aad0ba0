"""Public copies x_hat_j of each neighbour, with exactly-once, in-order application of updates.

CHOCO-Gossip is only correct if every node's copy of x_hat_j receives each q_j exactly once and in
order: the sender and all its receivers must agree on x_hat_j bit for bit. The rules:

1. A sender numbers its updates seq = 1, 2, 3, ... within an *epoch* (one run of its process; a
   restart resumes seq from its checkpoint but starts a new epoch).
2. Frames are queued by the transport threads (`offer`) and applied by the round loop
   (`apply_through`) in seq order, only up to the current round, so that a mix in round t sees
   exactly the updates of rounds <= t.
3. A replay (seq already applied or already queued) is dropped. A frame from a new epoch, or a gap
   in seq below an update that is due, marks the neighbour for *resync*: the round loop pulls the
   sender's whole x_hat (a snapshot with its seq) and continues from there.
4. Frames more than `max_ahead` rounds ahead of ours are refused (bounds memory) and change no
   state: the round each one claims is only noted (`ahead_claims`). The round loop stops waiting
   for that neighbour, asks the neighbour itself which round it is at, and catches up to what it
   confirms (`Node.next_round`), never to a round a frame merely claims.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedpeer.errors import FrameRejected
from fedpeer.tensors import State


@dataclass
class _Pending:
    round: int
    q: State
    mix_weight: float = 1.0


@dataclass
class NeighbourCopy:
    x_hat: State
    applied_seq: int = 0
    epoch: str = ""
    # Round of the last update applied (or of the snapshot installed); 0 = never heard.
    last_round: int = 0
    pending: dict[int, _Pending] = field(default_factory=dict)
    needs_resync: bool = False
    # The sender's pi (data-aware mixing) as of its last applied update.
    mix_weight: float = 1.0


class PublicCopies:
    def __init__(self, zeros: Mapping[str, torch.Tensor], neighbours: list[str], max_ahead: int) -> None:
        self.max_ahead = max_ahead
        self.current_round = 0
        # Rounds claimed by refused frames too far ahead of ours, per sender: unconfirmed hints that
        # the round loop checks with the neighbour before it catches up.
        self.ahead_claims: dict[str, int] = {}
        self.copies = {
            j: NeighbourCopy(x_hat={k: torch.zeros_like(v) for k, v in zeros.items()}) for j in neighbours
        }
        self._cv = threading.Condition()

    # --- called from transport threads ---------------------------------------------------------
    def offer(self, sender: str, epoch: str, round: int, seq: int, q: State, mix_weight: float = 1.0) -> int:
        """Queue update `seq` of `sender`; returns the applied seq. Raises FrameRejected."""
        with self._cv:
            c = self._copy(sender)
            if round > self.current_round + self.max_ahead:
                # Lost to us, and no state changes: the round loop stops waiting for this sender and
                # asks it where it is (a spoofed or corrupt frame makes it ask once, nothing more).
                self.ahead_claims[sender] = max(self.ahead_claims.get(sender, 0), round)
                self._cv.notify_all()
                raise FrameRejected(
                    f"round {round} is more than {self.max_ahead} rounds ahead of ours ({self.current_round})"
                )
            if epoch != c.epoch:
                # A sender we knew restarted: its old seq numbers mean nothing now. (An epoch we never
                # saw before, with nothing applied yet, is simply adopted.)
                if c.epoch or c.applied_seq:
                    c.pending, c.applied_seq, c.needs_resync = {}, 0, True
                c.epoch = epoch
            if seq <= c.applied_seq or seq in c.pending:
                raise FrameRejected(f"replay of seq {seq} (applied up to {c.applied_seq})")
            c.pending[seq] = _Pending(round, q, mix_weight)
            self._cv.notify_all()
            return c.applied_seq

    def _copy(self, sender: str) -> NeighbourCopy:
        c = self.copies.get(sender)
        if c is None:
            raise FrameRejected(f"{sender!r} is not a neighbour of this node")
        return c

    # --- called from the round loop ------------------------------------------------------------
    def set_round(self, round: int) -> None:
        """Our current round (frames are accepted up to `max_ahead` rounds past it)."""
        with self._cv:
            self.current_round = round

    def wait_for_round(self, round: int, expected: set[str], deadline: float) -> set[str]:
        """Block until each `expected` neighbour has an update for `round` queued or needs a resync,
        or until `deadline` (time.monotonic()). Returns the neighbours that are ready."""
        with self._cv:
            self.current_round = max(self.current_round, round)
            while True:
                ready = {j for j in expected if self._ready(j, round)}
                remaining = deadline - time.monotonic()
                if ready == expected or remaining <= 0:
                    return ready
                self._cv.wait(timeout=min(remaining, 0.5))

    def _ready(self, j: str, round: int) -> bool:
        c = self.copies[j]
        return (
            c.needs_resync
            or c.last_round >= round
            or any(p.round >= round for p in c.pending.values())
            or self.ahead_claims.get(j, 0) > round
        )

    def claims(self, names: set[str], beyond: int) -> dict[str, int]:
        """The unconfirmed claims of `names` to be past round `beyond` (kept)."""
        with self._cv:
            return {j: r for j, r in self.ahead_claims.items() if j in names and r > beyond}

    def drop_claims(self, names: set[str]) -> None:
        with self._cv:
            for j in names:
                self.ahead_claims.pop(j, None)

    def take_ahead_claims(self, beyond: int) -> dict[str, int]:
        """The claims of refused frames for rounds past `beyond` (then forgotten, all of them)."""
        with self._cv:
            claims = {j: r for j, r in self.ahead_claims.items() if r > beyond}
            self.ahead_claims.clear()
            return claims

    def apply_through(self, round: int) -> list[str]:
        """Apply queued updates with round <= `round` in seq order. Returns neighbours needing resync."""
        with self._cv:
            for c in self.copies.values():
                while not c.needs_resync and (p := c.pending.get(c.applied_seq + 1)) and p.round <= round:
                    for k, v in p.q.items():
                        c.x_hat[k].add_(v)
                    del c.pending[c.applied_seq + 1]
                    c.applied_seq += 1
                    c.last_round = max(c.last_round, p.round)
                    c.mix_weight = p.mix_weight
                # Each sender sends seq n only after its send of n-1 has finished (acknowledged, so
                # queued), so a hole below any queued update is a lost update, not a late one:
                # resync, don't wait (a snapshot as of this round restores exactly what is due).
                if c.pending and not c.needs_resync and min(c.pending) > c.applied_seq + 1:
                    c.needs_resync = True
            return [j for j, c in self.copies.items() if c.needs_resync]

    def install_snapshot(
        self, sender: str, epoch: str, round: int, seq: int, x_hat: State, mix_weight: float = 1.0
    ) -> None:
        """Replace the copy of `sender` by its own x_hat at `seq`; later queued updates still apply."""
        with self._cv:
            c = self._copy(sender)
            for k, v in x_hat.items():
                c.x_hat[k].copy_(v)
            if epoch != c.epoch:
                c.pending = {}
            c.epoch, c.applied_seq, c.last_round, c.needs_resync = epoch, seq, round, False
            c.mix_weight = mix_weight
            c.pending = {s: p for s, p in c.pending.items() if s > seq}
            self._cv.notify_all()

    def mark_lost(self, sender: str, round: int) -> bool:
        """`sender` has sent its update of `round` (we know it completed that round), and, with what
        was due applied, our copy is not up to date for it: the update was lost (we were down when
        it was sent). Marks a resync; returns whether one was marked."""
        with self._cv:
            c = self._copy(sender)
            if c.last_round >= round or c.needs_resync:
                return False
            c.needs_resync = True
            return True

    def moved_on(self, round: int, names: set[str]) -> set[str]:
        """Neighbours among `names` that will not send an update of `round`: their copy is not up to
        date for it and all they have queued is of later rounds (they skipped it, catching up)."""
        with self._cv:
            return {
                j
                for j in names
                if (c := self.copies[j]).last_round < round
                and not c.needs_resync
                and c.pending
                and all(p.round > round for p in c.pending.values())
            }

    def fresh(self, round: int) -> list[str]:
        """Neighbours whose copy is up to date for `round` (these take part in the mix)."""
        with self._cv:
            return [j for j, c in self.copies.items() if c.last_round >= round and not c.needs_resync]

    def mix_weights(self, names: list[str]) -> dict[str, float]:
        with self._cv:
            return {j: self.copies[j].mix_weight for j in names}

    def x_hats(self, names: list[str]) -> dict[str, State]:
        with self._cv:
            return {j: self.copies[j].x_hat for j in names}

    # --- checkpoint ------------------------------------------------------------------------------
    def export(self) -> tuple[dict[str, State], dict[str, dict[str, Any]]]:
        with self._cv:
            tensors = {j: {k: v.clone() for k, v in c.x_hat.items()} for j, c in self.copies.items()}
            meta = {
                j: {
                    "applied_seq": c.applied_seq,
                    "epoch": c.epoch,
                    "last_round": c.last_round,
                    "mix_weight": c.mix_weight,
                }
                for j, c in self.copies.items()
            }
            return tensors, meta

    def restore(self, tensors: Mapping[str, State], meta: Mapping[str, Mapping[str, Any]]) -> None:
        with self._cv:
            for j, c in self.copies.items():
                if j not in tensors:
                    continue  # a neighbour added to the config since the checkpoint starts from zero
                for k, v in tensors[j].items():
                    c.x_hat[k].copy_(v)
                m = meta[j]
                c.applied_seq, c.epoch, c.last_round = (
                    int(m["applied_seq"]),
                    str(m["epoch"]),
                    int(m["last_round"]),
                )
                c.pending, c.needs_resync = {}, False
                c.mix_weight = float(m.get("mix_weight", 1.0))
