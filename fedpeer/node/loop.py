"""A fedpeer node: the round loop.

One round t, as data flows (`run_round` reads in this order):

1. train     local data -> both adapters, `steps_per_round` optimizer steps
2. encode    q = x - x_hat_self of the global adapter; codec; x_hat_self += decoded q; seq += 1
3. send      one frame (header + <= 1 MiB chunks) to every neighbour, in parallel, with a deadline
4. receive   wait until every neighbour we could reach has delivered its round-t frame, or the
             round deadline passes (transport threads decode and queue frames meanwhile)
5. apply     queued q_j -> x_hat_j exactly once, in seq order; resync gaps/restarts by snapshot
6. mix       x += gamma * sum_j w_ij (x_hat_j - x_hat_self) over neighbours heard this round
7. evaluate, keep the best round's adapters (train.keep_best), checkpoint (atomic), metrics

The rooms: `neighbours.py` (peer table, handshakes, sends, snapshots), `service.py` (what transport
threads call), `state.py` (checkpoint and resume), `gossip/` (CHOCO state and math), `build.py`
(assembly). Rules for slow, dead and restarted neighbours: docs/protocol.md.
"""

from __future__ import annotations

import logging
import math
import time

from fedpeer import PROTOCOL_VERSION
from fedpeer.codec import Codec, DecodeLimits, available_codecs, get_codec
from fedpeer.config import NodeConfig
from fedpeer.gossip import choco, dp, robust
from fedpeer.gossip.copies import PublicCopies
from fedpeer.gossip.sender import SenderState
from fedpeer.gossip.watch import DistanceWatch
from fedpeer.metrics import MetricsWriter, RoundRecord
from fedpeer.model.dual_lora import DualLora
from fedpeer.node import lifecycle, state
from fedpeer.node.neighbours import PROBE_EVERY_S, SNAPSHOT_CODEC, Neighbours
from fedpeer.node.record import RoundOutcome, Timer, finish, round_line, round_record
from fedpeer.node.service import IoCounters, NodeService
from fedpeer.tensors import State
from fedpeer.train.loop import LocalTrainer
from fedpeer.transport.base import Transport
from fedpeer.wire.frames import Frame, FrameKind, PeerInfo, decode_frame, encode_frame, payload_bound

log = logging.getLogger("fedpeer.node")


class Node:
    """One site's node. Build it with `build_node(cfg, transport)` (loads the model, resumes)."""

    def __init__(
        self, cfg: NodeConfig, transport: Transport, dual: DualLora, trainer: LocalTrainer, codec: Codec
    ) -> None:
        self.cfg, self.transport = cfg, transport
        self.dual, self.trainer, self.codec = dual, trainer, codec
        self.device = dual.device
        self.snapshot_codec = get_codec(SNAPSHOT_CODEC, zstd_level=cfg.codec.zstd_level)
        self.limits = DecodeLimits(max_payload_bytes=int(cfg.codec.max_payload_mb * 2**20))
        self.specs = dual.global_specs()
        # The largest payload a neighbour's frame of this model can need, checked from its header.
        self.payload_bound = min(payload_bound(self.specs), self.limits.max_payload_bytes)
        zeros = dual.global_state()
        # x̂_self after each of the last updates: a neighbour may be up to max_rounds_ahead behind.
        self.sender = SenderState(zeros, history=cfg.gossip.max_rounds_ahead + 2)
        self.neighbours = Neighbours(cfg, transport, self.me, dual.fingerprint_fields(), dual.fingerprint())
        self.copies = PublicCopies(zeros, list(self.neighbours.peers), cfg.gossip.max_rounds_ahead)
        self.io = IoCounters()
        self.privacy = dp.from_config(cfg.gossip)  # None unless gossip.dp: clip + noise what we send
        self.last_privacy: dp.PrivacyReport | None = None
        if self.privacy is not None:
            log.info("%s: %s", cfg.node_id, self.privacy.describe())
        self.service = NodeService(self)
        self.metrics = MetricsWriter(cfg.state_dir)
        self.completed_round = 0
        self.rounds_run = 0  # by this process (a node that catches up skips rounds)
        self.heard_any = False  # from any neighbour, in any round of this process
        self.phase = "starting"
        self.last_loss = self.last_distance = self.last_eval_loss = math.nan
        self.distance_watch = DistanceWatch(lossy=cfg.codec.lossy, gamma=cfg.gossip.gamma)
        self.best: state.Best | None = None  # train.keep_best: the best round so far
        self.address = ""

    # ================================================================ the round loop
    def run(self) -> None:
        """Serve, join the mesh, run the remaining rounds, linger briefly, stop."""
        self.address = self.transport.serve(self.cfg.listen, self.service)
        log.info(
            "%s listening on %s (epoch %s, %d global params, fingerprint %s)",
            self.cfg.node_id,
            self.address,
            self.sender.epoch,
            sum(s.numel for s in self.specs),
            self.dual.fingerprint(),
        )
        try:
            t = lifecycle.join(self) + 1
            while t <= self.cfg.gossip.rounds:
                self.run_round(t)
                t = self.next_round(t)
            self.phase = "done"
            log.info(lifecycle.finished_line(self))
            time.sleep(self.cfg.gossip.linger_s)  # serve snapshots to slower neighbours
        finally:
            self.close()
        lifecycle.check_not_alone(self)

    def run_round(self, t: int) -> RoundRecord:
        timer = Timer()

        self.phase = "training"
        with timer.span("train"):
            self.last_loss = self.trainer.train_round()

        self.phase = "encoding"
        self.sender.pi = self.round_pi()
        with timer.span("encode"):
            x = self.dual.global_state()
            frame = self.encode_update(
                t, self.sender.difference(x), self.neighbours.codec_for_all(self.codec, self.snapshot_codec)
            )

        self.phase = "exchanging"
        with timer.span("transfer"):
            sent = self.neighbours.broadcast(frame)
            resynced = self.receive(t, set(sent.reached))

        self.phase = "mixing"
        with timer.span("mix"):
            heard = [j for j in self.copies.fresh(t) if self.neighbours.peers[j].info is not None]
            w = self.neighbours.weights(heard, self.sender.pi, self.copies.mix_weights(heard))
            x_new, clip = self.mix(x, heard, w)
            self.dual.set_global_state(x_new)
            # No neighbour mixed: no distance measured (0.0 would read as perfect consensus).
            self.last_distance = (
                choco.consensus_distance(x_new, self.copies.x_hats(heard)) if heard else math.nan
            )
            self.heard_any = self.heard_any or bool(heard)
            norm = choco.state_norm(x_new)
            if warning := self.distance_watch.observe(self.last_distance, norm):
                log.warning("%s: %s", self.cfg.node_id, warning)

        self.phase = "evaluating"
        with timer.span("eval"):
            evaluation = self.trainer.evaluate()
        self.last_eval_loss = evaluation.get("eval_loss", math.nan)

        with timer.span("checkpoint"):
            state.keep_if_best(self, t, evaluation)
        self.completed_round = t
        self.rounds_run += 1
        outcome = RoundOutcome(
            self.cfg.node_id,
            t,
            self.last_loss,
            evaluation,
            frame,
            sent,
            heard,
            resynced,
            self.last_distance,
            self.sender.pi,
            norm,
            clip=clip,
            privacy=self.last_privacy,
        )
        record = round_record(outcome, timer, self.io.take(t))
        with timer.span("checkpoint"):
            state.save(self, record)
        record = finish(record, timer)
        self.metrics.write(record)
        log.info(round_line(self.cfg.gossip.rounds, self.neighbours.degree, record))
        return record

    def next_round(self, t: int) -> int:
        """t + 1, or the round a neighbour already sends updates for if it is so far ahead that we
        refused its frames (e.g. after our restart): waiting there would hold the neighbourhood back.
        A smaller lag (say the two sides of a healed partition) closes by itself: those frames are
        queued, and the neighbour waits for ours. A refused frame only makes us ask its sender where
        it is: we catch up to what the neighbour itself confirms (dialled at its configured address,
        over TLS proving its node id), at most to the last round; a frame's claim alone moves
        nothing."""
        claims = self.copies.take_ahead_claims(beyond=t + self.copies.max_ahead)
        if not claims:
            return t + 1
        confirmed = self.confirm(claims)
        ahead = min(max(confirmed.values(), default=0), self.cfg.gossip.rounds)
        if ahead <= t + self.copies.max_ahead:
            log.warning(
                "%s: ignored frames claiming rounds %s: those neighbours report %s",
                self.cfg.node_id,
                claims,
                confirmed or "nothing (unreachable)",
            )
            return t + 1
        log.info("%s: neighbours are at round %d after our round %d: catching up", self.cfg.node_id, ahead, t)
        lifecycle.catch_up(self, ahead)
        return ahead

    # ================================================================ steps of a round
    def encode_update(self, t: int, q: State, codec: Codec) -> Frame:
        """Encode q as update seq + 1; the sender state adds what the receivers will decode. With
        gossip.dp, q is clipped and noised first (gossip/dp.py): the noise is in what the neighbours
        decode and so, through the decoded frame, in our own x_hat too: the copies stay exact."""
        self.last_privacy = None
        if self.privacy is not None:
            q, self.last_privacy = self.privacy.privatize(q, releases=self.sender.seq + 1)
        frame = encode_frame(
            q,
            codec,
            sender=self.cfg.node_id,
            epoch=self.sender.epoch,
            kind=FrameKind.UPDATE,
            round=t,
            seq=self.sender.seq + 1,
            mix_weight=self.sender.pi,
        )
        self.sender.commit(t, decode_frame(frame, self.specs, self.limits, [codec.name]))
        return frame

    def mix(self, x: State, heard: list[str], w: dict[str, float]) -> tuple[State, robust.ClipReport | None]:
        """CHOCO's mix over the neighbours heard; ClippedGossip and the norm bound when configured
        (gossip.robust, gossip.norm_bound: gossip/robust.py), with one log line for offenders."""
        g = self.cfg.gossip
        x_hats = self.copies.x_hats(heard)
        if g.robust == "none" and g.norm_bound == 0:
            return choco.mix(x, self.sender.x_hat, x_hats, w, g.gamma), None
        x_new, clip = robust.clipped_mix(
            x,
            self.sender.x_hat,
            x_hats,
            w,
            g.gamma,
            radius=g.clip_radius if g.robust == "clipped" else math.inf,
            byzantine_fraction=g.byzantine_fraction,
            bound=g.norm_bound,
        )
        if clip.offenders:
            log.warning(
                "%s: left %s out of this round's mix: contribution norm %s over gossip.norm_bound %g "
                "(a Byzantine or broken neighbour; its weight stays here)",
                self.cfg.node_id,
                ", ".join(clip.offenders),
                ", ".join(f"{clip.norms[j]:.3g}" for j in clip.offenders),
                g.norm_bound,
            )
        return x_new, clip

    def receive(self, t: int, expected: set[str]) -> list[str]:
        """Bring each expected neighbour's copy up to date for round t, or give up on it: apply its
        queued updates in seq order, resync a lost one by snapshot (as of round t, never later), and
        wait for the rest until the round deadline, leaving out early a neighbour that stops
        answering (gossip.failure_timeout_s) or has moved past round t. Returns those resynced."""
        deadline = time.monotonic() + self.cfg.gossip.round_timeout_s
        waiting, resynced = set(expected), []
        # A neighbour that had completed round t when we met it sent its round-t update long ago; if
        # it is not here, it was lost (we were down, replaying after a restart): resync at once.
        done_t = {j for j in waiting if (info := self.neighbours.peers[j].info) and info.round >= t}
        if done_t:
            self.copies.apply_through(t)
            for j in done_t:
                self.copies.mark_lost(j, t)
        while True:
            self.copies.wait_for_round(t, waiting, min(deadline, time.monotonic() + PROBE_EVERY_S))
            for j in self.copies.apply_through(t):
                if self.resync(j, t):
                    resynced.append(j)
                else:
                    waiting.discard(j)  # its snapshot cannot be had now: left out this round
            self.copies.apply_through(t)  # what queued after the snapshots is due too
            waiting -= set(self.copies.fresh(t)) | self.copies.moved_on(t, waiting)
            self.check_claims(t, waiting)
            if not waiting or time.monotonic() >= deadline:
                return resynced
            waiting -= self.neighbours.unresponsive(waiting, t)

    def check_claims(self, t: int, waiting: set[str]) -> None:
        """A neighbour we wait for sent a frame too far ahead to queue: ask it. If it has completed
        round t, its round-t update was sent and lost to us (resynced at the next pass); otherwise
        the claim was false and is dropped, and we keep waiting."""
        claimed = self.copies.claims(waiting, beyond=t)
        if not claimed:
            return
        for j in claimed:
            done = self.neighbours.completed_round(j)
            if done is not None and done >= t:
                self.copies.mark_lost(j, t)
            else:
                self.copies.drop_claims({j})
                log.warning(
                    "%s: ignored a frame of %s claiming round %d: it reports round %s",
                    self.cfg.node_id,
                    j,
                    claimed[j],
                    done,
                )

    def confirm(self, claims: dict[str, int]) -> dict[str, int]:
        """Of rounds claimed by refused frames, what each claiming neighbour confirms when asked: it
        completed r, so it may be sending r + 1; a claim is never believed past that."""
        confirmed = {}
        for j, claimed in claims.items():
            done = self.neighbours.completed_round(j)
            if done is not None:
                confirmed[j] = min(claimed, done + 1)
        return confirmed

    def resync(self, j: str, t: int) -> bool:
        snap = self.neighbours.fetch_snapshot(j, t, self.specs, self.limits)
        if snap is None:
            return False
        x_hat = {k: v.to(self.device) for k, v in snap.x_hat.items()}
        self.copies.install_snapshot(j, snap.epoch, snap.round, snap.seq, x_hat, mix_weight=snap.mix_weight)
        self.io.count(snap.round, bytes_received=snap.wire_bytes)
        log.info(
            "%s: resynced %s from its snapshot (seq %d, round %d)", self.cfg.node_id, j, snap.seq, snap.round
        )
        return True

    def round_pi(self) -> float:
        """This round's pi_i for gossip.weighting (1.0 for plain Metropolis-Hastings)."""
        w = self.cfg.gossip.weighting
        if w == "data-size":
            return float(self.trainer.train_size)
        if w == "val-loss" and math.isfinite(self.last_eval_loss):
            # Fed-MedLoRA+: sites whose adapter fits their data better weigh more.
            return math.exp(1.0 - self.last_eval_loss)
        return 1.0

    def me(self) -> PeerInfo:
        """Our handshake, as of now."""
        return PeerInfo(
            node_id=self.cfg.node_id,
            protocol_version=PROTOCOL_VERSION,
            fingerprint=self.dual.fingerprint(),
            fingerprint_fields=self.dual.fingerprint_fields(),
            codecs=tuple(available_codecs()),
            round=self.completed_round,
            degree=self.neighbours.degree,
            epoch=self.sender.epoch,
            address=self.address or self.cfg.address,
        )

    def close(self) -> None:
        self.neighbours.close()
        self.transport.close()
