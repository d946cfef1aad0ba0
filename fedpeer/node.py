"""A fedpeer node: the round loop, and the handler its transport serves to neighbours.

One round t, as data flows (`run_round` reads in this order):

1. train     local data -> both adapters, `steps_per_round` optimizer steps
2. encode    q = x - x_hat_self of the global adapter; codec; x_hat_self += decoded q; seq += 1
3. send      one frame (header + <= 1 MiB chunks) to every neighbour, in parallel, with a deadline
4. receive   wait until every neighbour we could reach has delivered its round-t frame, or the
             round deadline passes (transport threads decode and queue frames meanwhile)
5. apply     queued q_j -> x_hat_j exactly once, in seq order; resync gaps/restarts by snapshot
6. mix       x += gamma * sum_j w_ij (x_hat_j - x_hat_self) over neighbours heard this round
7. evaluate, checkpoint (atomic), metrics

Rules for slow, dead and restarted neighbours (see docs/protocol.md):
- a neighbour whose send fails (unreachable, deadline) is not waited for in that round;
- a reachable neighbour is waited for until `round_timeout_s`; without its frame it is left out of
  the mix (its Metropolis-Hastings weight stays with us), and its late frame is applied next round;
- a restarted node resumes from its checkpoint, jumps to the mesh's round (learned in the
  handshake), and announces a new epoch, which makes its neighbours resync their copy of it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from fedpeer import PROTOCOL_VERSION, checkpoint
from fedpeer.codec import Codec, DecodeLimits, available_codecs, codec_from_config, get_codec
from fedpeer.config import NodeConfig
from fedpeer.errors import (
    CheckpointError,
    FedpeerError,
    FrameRejected,
    HandshakeError,
    PeerUnavailable,
    TrainedAlone,
)
from fedpeer.gossip import choco
from fedpeer.gossip.copies import PublicCopies, State
from fedpeer.gossip.weights import metropolis_hastings
from fedpeer.metrics import MetricsWriter
from fedpeer.model.dual_lora import DualLora, load_dual_lora, resolve_device
from fedpeer.train.loop import LocalTrainer
from fedpeer.transport.base import Transport
from fedpeer.wire.frames import (
    AckInfo,
    Frame,
    FrameKind,
    NeighbourInfo,
    PeerInfo,
    StatusInfo,
    decode_frame,
    encode_frame,
)

log = logging.getLogger("fedpeer.node")

# Snapshots must reproduce x_hat bit for bit on the receiver: always lossless.
SNAPSHOT_CODEC = "lossless"
# While joining, say which neighbours we still wait for (and why) this often.
JOIN_REPORT_S = 10.0


@dataclass
class Peer:
    id: str
    address: str
    info: PeerInfo | None = None  # from our handshake with it; None until it answered
    # Why we are not connected: "refused: ..." or "not reachable: ...", each logged once.
    problem: str = ""
    reachable: bool = False


@dataclass
class RoundIO:
    """What transport threads measured for frames of one round."""

    decode_s: float = 0.0
    bytes_received: int = 0
    frames_rejected: int = 0


@dataclass
class Timer:
    spans: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def span(self, name: str) -> _Span:
        return _Span(self, name)


class _Span:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.spans[self.name] += time.perf_counter() - self.t0


class Node:
    def __init__(self, cfg: NodeConfig, transport: Transport) -> None:
        checkpoint.ensure_writable(cfg.state_dir)  # fail now, not after a round of training
        self.cfg = cfg
        self.transport = transport
        self.device = resolve_device(cfg.train.device)
        self.dual: DualLora = load_dual_lora(cfg.model, cfg.adapter, self.device, local_seed=_local_seed(cfg))
        self.trainer = LocalTrainer(self.dual, cfg.model, cfg.train)
        self.codec = codec_from_config(cfg.codec)
        self.snapshot_codec = get_codec(SNAPSHOT_CODEC, zstd_level=cfg.codec.zstd_level)
        self.limits = DecodeLimits(max_payload_bytes=int(cfg.codec.max_payload_mb * 2**20))
        self.specs = self.dual.global_specs()
        self.epoch = uuid.uuid4().hex[:12]
        self.peers = {p.id: Peer(p.id, p.address) for p in cfg.neighbours}
        zeros = {k: torch.zeros_like(v) for k, v in self.dual.global_state().items()}
        self.x_hat_self: State = {k: v.clone() for k, v in zeros.items()}
        self.copies = PublicCopies(zeros, list(self.peers), cfg.gossip.max_rounds_ahead)
        self.seq = 0
        self.sent_round = 0
        self.completed_round = 0
        self.rounds_run = 0  # by this process (a node that catches up skips rounds)
        self.heard_any = False  # from any neighbour, in any round of this process
        self.phase = "starting"
        self.last_loss = math.nan
        self.last_distance = math.nan
        self.last_eval_loss = math.nan
        self.pi = 1.0
        self._codec_warned = False
        self._refusals_logged: set[tuple[str, str]] = set()
        self._self_lock = threading.Lock()
        self._io: dict[int, RoundIO] = defaultdict(RoundIO)
        self._io_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.peers)), thread_name_prefix="send")
        self.metrics = MetricsWriter(cfg.state_dir)
        self.address = ""
        self._resume()

    # ================================================================ the round loop
    def run(self) -> None:
        """Serve, join the mesh, run the remaining rounds, linger briefly, stop."""
        self.address = self.transport.serve(self.cfg.listen, self)
        log.info(
            "%s listening on %s (epoch %s, %d global params, fingerprint %s)",
            self.cfg.node_id,
            self.address,
            self.epoch,
            sum(s.numel for s in self.specs),
            self.dual.fingerprint(),
        )
        try:
            t = self.join() + 1
            while t <= self.cfg.gossip.rounds:
                self.run_round(t)
                t = self.next_round(t)
            self.phase = "done"
            log.info(self.finished_line())
            time.sleep(self.cfg.gossip.linger_s)  # serve snapshots to slower neighbours
        finally:
            self.close()
        self.check_not_alone()

    def finished_line(self) -> str:
        total, ran = self.cfg.gossip.rounds, self.rounds_run
        if ran == total:
            return f"{self.cfg.node_id} finished: ran all {total} rounds"
        return (
            f"{self.cfg.node_id} finished at round {self.completed_round}/{total}: ran {ran} rounds "
            f"in this run ({self.completed_round - ran} done before a restart or skipped catching up)"
        )

    def check_not_alone(self) -> None:
        """A node that ran rounds but never heard from a neighbour trained alone: a mesh that did not
        form must not pass for a working one (unless gossip.allow_solo asks for it)."""
        if self.rounds_run == 0 or self.heard_any or not self.peers:
            return
        why = "; ".join(f"{p.id}: {p.problem or 'never sent an update'}" for p in self.peers.values())
        msg = f"{self.cfg.node_id} trained alone: it never heard from any neighbour ({why})"
        if self.cfg.gossip.allow_solo:
            log.warning("%s (allowed by gossip.allow_solo)", msg)
            return
        raise TrainedAlone(
            f"{msg}. Check the neighbours' addresses, that they run, and that they use the same model "
            "config; pass --allow-solo (gossip.allow_solo = true) to train without a mesh on purpose"
        )

    def run_round(self, t: int) -> dict[str, Any]:
        timer = Timer()
        t_start = time.perf_counter()

        self.phase = "training"
        with timer.span("train"):
            self.last_loss = self.trainer.train_round()

        self.phase = "encoding"
        self.pi = self.round_pi()
        with timer.span("encode"):
            x = self.dual.global_state()
            frame = self.encode_update(t, choco.difference(x, self.x_hat_self), self.negotiated_codec())

        self.phase = "exchanging"
        with timer.span("transfer"):
            sent = self.broadcast(frame)
            deadline = time.monotonic() + self.cfg.gossip.round_timeout_s
            self.copies.wait_for_round(t, set(sent["reached"]), deadline)

        self.phase = "mixing"
        with timer.span("mix"):
            resynced = self.apply_received(t)
            heard = [j for j in self.copies.fresh(t) if self.peers[j].info is not None]
            x_new = choco.mix(
                x, self.x_hat_self, self.copies.x_hats(heard), self.weights(heard), self.cfg.gossip.gamma
            )
            self.dual.set_global_state(x_new)
            # No neighbour mixed: no distance measured (0.0 would read as perfect consensus).
            self.last_distance = (
                choco.consensus_distance(x_new, self.copies.x_hats(heard)) if heard else math.nan
            )
            self.heard_any = self.heard_any or bool(heard)

        self.phase = "evaluating"
        with timer.span("eval"):
            evaluation = self.trainer.evaluate()
        self.last_eval_loss = evaluation.get("eval_loss", math.nan)

        self.completed_round = t
        self.rounds_run += 1
        with timer.span("checkpoint"):
            self.save_checkpoint()
        record = self.round_record(t, timer, t_start, sent, heard, resynced, evaluation, frame)
        self.metrics.write(record)
        log.info(_round_line(self.cfg.node_id, t, self.cfg.gossip.rounds, len(self.peers), record))
        return record

    def next_round(self, t: int) -> int:
        """t + 1, or the round a neighbour already sends updates for if it is so far ahead that we
        refused its frames (e.g. after our restart): waiting there would hold the neighbourhood back.
        A smaller lag (say the two sides of a healed partition) closes by itself: those frames are
        queued, and the neighbour waits for ours."""
        ahead = self.copies.highest_round_seen
        if ahead <= t + self.copies.max_ahead:
            return t + 1
        log.info("%s: neighbours are at round %d after our round %d: catching up", self.cfg.node_id, ahead, t)
        self.copies.set_round(ahead)
        return ahead

    # ================================================================ steps of a round
    def negotiated_codec(self) -> Codec:
        """Our configured codec if every connected neighbour can decode it, else lossless (which all
        can). One codec per round for all neighbours: they all add the same q to their copy of us."""
        unable = [p.id for p in self.peers.values() if p.info and self.codec.name not in p.info.codecs]
        if not unable:
            return self.codec
        if not self._codec_warned:
            log.warning(
                "%s: %s cannot decode codec %s; sending lossless updates",
                self.cfg.node_id,
                ", ".join(unable),
                self.codec.name,
            )
            self._codec_warned = True
        return self.snapshot_codec

    def encode_update(self, t: int, q: State, codec: Codec) -> Frame:
        """Encode q; add what the receivers will decode (not q itself) to our own public copy."""
        with self._self_lock:
            frame = encode_frame(
                q,
                codec,
                sender=self.cfg.node_id,
                epoch=self.epoch,
                kind=FrameKind.UPDATE,
                round=t,
                seq=self.seq + 1,
                mix_weight=self.pi,
            )
            q_wire = decode_frame(frame, self.specs, self.limits, [codec.name])
            choco.add_(self.x_hat_self, {k: v.to(self.device) for k, v in q_wire.items()})
            self.seq += 1
            self.sent_round = t
        return frame

    def broadcast(self, frame: Frame) -> dict[str, Any]:
        """Send `frame` to every neighbour in parallel; report who was reached and the bytes."""
        futures = {j: self._pool.submit(self._send_one, p, frame) for j, p in self.peers.items()}
        reached, wire = [], 0
        for j, fut in futures.items():
            nbytes = fut.result()
            self.peers[j].reachable = nbytes > 0
            if nbytes > 0:
                reached.append(j)
                wire += nbytes
        return {"reached": reached, "bytes": wire, "raw": frame.raw_bytes * len(reached)}

    def _send_one(self, peer: Peer, frame: Frame) -> int:
        timeout = self.cfg.gossip.rpc_timeout_s
        try:
            if peer.info is None:
                self.handshake(peer)
                if peer.info is None:
                    return 0
            result = self.transport.send_frame(peer.address, frame, timeout)
        except (PeerUnavailable, FrameRejected) as exc:
            if peer.reachable:
                log.warning("%s: lost %s: %s", self.cfg.node_id, peer.id, exc)
            peer.problem = f"not reachable: {exc}"
            return 0
        peer.problem = ""
        if not result.ack.accepted:
            log.warning(
                "%s: %s refused our round-%d update: %s",
                self.cfg.node_id,
                peer.id,
                frame.round,
                result.ack.error,
            )
        return result.wire_bytes

    def apply_received(self, t: int) -> list[str]:
        """Apply queued updates of rounds <= t; pull snapshots where an update was lost."""
        needing = self.copies.apply_through(t)
        for j in needing:
            self.resync(j)
        if needing:
            self.copies.apply_through(t)
        return needing

    def resync(self, j: str) -> None:
        peer = self.peers[j]
        try:
            frame = self.transport.fetch_snapshot(
                peer.address, self.cfg.node_id, self.cfg.gossip.rpc_timeout_s, self.limits.max_payload_bytes
            )
            if frame.kind != FrameKind.SNAPSHOT or frame.sender != j:
                raise FrameRejected(
                    f"expected a snapshot from {j}, got a {frame.kind.value} from {frame.sender}"
                )
            x_hat = decode_frame(frame, self.specs, self.limits, [SNAPSHOT_CODEC])
        except (PeerUnavailable, FrameRejected) as exc:
            log.warning("%s: resync of %s failed, leaving it out this round: %s", self.cfg.node_id, j, exc)
            return
        self.copies.install_snapshot(
            j,
            frame.epoch,
            frame.round,
            frame.seq,
            {k: v.to(self.device) for k, v in x_hat.items()},
            mix_weight=frame.mix_weight,
        )
        self._count_io(frame.round, bytes_received=frame.wire_bytes)
        log.info(
            "%s: resynced %s from its snapshot (seq %d, round %d)",
            self.cfg.node_id,
            j,
            frame.seq,
            frame.round,
        )

    def weights(self, heard: list[str]) -> dict[str, float]:
        """Metropolis-Hastings weights towards the target distribution pi (uniform by default):
        w_ij = min(1, pi_j / pi_i) / (1 + max(d_i, d_j)). Detailed balance (pi_i w_ij = pi_j w_ji)
        keeps sum_i pi_i x_i unchanged by mixing, so the mesh converges to the pi-weighted average.
        A neighbour not heard this round keeps its weight with us."""
        d_i = len(self.peers)
        pis = self.copies.mix_weights(heard)
        return {
            j: metropolis_hastings(d_i, self.peers[j].info.degree) * min(1.0, pis[j] / self.pi)  # type: ignore[union-attr]
            for j in heard
        }

    def round_pi(self) -> float:
        """This round's pi_i for gossip.weighting (1.0 for plain Metropolis-Hastings)."""
        w = self.cfg.gossip.weighting
        if w == "data-size":
            return float(self.trainer.train_size)
        if w == "val-loss" and math.isfinite(self.last_eval_loss):
            # Fed-MedLoRA+: sites whose adapter fits their data better weigh more.
            return math.exp(1.0 - self.last_eval_loss)
        return 1.0

    # ================================================================ joining and handshakes
    def me(self) -> PeerInfo:
        return PeerInfo(
            node_id=self.cfg.node_id,
            protocol_version=PROTOCOL_VERSION,
            fingerprint=self.dual.fingerprint(),
            fingerprint_fields=self.dual.fingerprint_fields(),
            codecs=tuple(available_codecs()),
            round=self.completed_round,
            degree=len(self.peers),
            epoch=self.epoch,
            address=self.address or self.cfg.address,
        )

    def handshake(self, peer: Peer) -> None:
        """Try to connect to `peer`. A refusal is logged once per reason; an unreachable peer is
        only recorded (`peer.problem`): the join loop and the send path say when it matters."""
        try:
            info = self.transport.hello(peer.address, self.me(), self.cfg.gossip.rpc_timeout_s)
            self.check_peer(info, expected_id=peer.id)
        except HandshakeError as exc:
            problem = f"refused: {exc}"
            if problem != peer.problem:
                log.error("%s: handshake with %s refused: %s", self.cfg.node_id, peer.id, exc)
            peer.problem = problem
            return
        except PeerUnavailable as exc:
            peer.problem = f"not reachable: {exc}"
            return
        peer.info, peer.problem, peer.reachable = info, "", True
        log.info(
            "%s: connected to %s at %s (round %d, degree %d)",
            self.cfg.node_id,
            peer.id,
            peer.address,
            info.round,
            info.degree,
        )

    def join(self) -> int:
        """Handshake with every neighbour (retrying until join_timeout_s); returns the round to
        continue after: ours, or the mesh's if we are behind (a restarted node catches up)."""
        self.phase = "joining"
        start = time.monotonic()
        deadline = start + self.cfg.gossip.join_timeout_s
        next_report = start
        while True:
            for p in self.peers.values():
                if p.info is None:
                    self.handshake(p)
            missing = [p for p in self.peers.values() if p.info is None]
            now = time.monotonic()
            if not missing or now > deadline:
                break
            if now >= next_report:  # say what we wait for, every JOIN_REPORT_S
                log.info(
                    "%s: waiting for %s (up to %.0f s more)",
                    self.cfg.node_id,
                    "; ".join(f"{p.id} at {p.address}: {p.problem or 'no answer yet'}" for p in missing),
                    deadline - now,
                )
                next_report = now + JOIN_REPORT_S
            time.sleep(0.5)
        for p in missing:
            log.warning(
                "%s: starting without %s after %.0f s (%s); it joins when it comes up",
                self.cfg.node_id,
                p.id,
                self.cfg.gossip.join_timeout_s,
                p.problem or "no answer",
            )
        mesh_round = max([p.info.round for p in self.peers.values() if p.info] + [self.completed_round])
        if mesh_round > self.completed_round:
            log.info(
                "%s: the mesh is at round %d, we completed %d: catching up",
                self.cfg.node_id,
                mesh_round,
                self.completed_round,
            )
        self.completed_round = mesh_round
        self.copies.set_round(mesh_round)
        return mesh_round

    def check_peer(self, info: PeerInfo, expected_id: str | None = None) -> None:
        """Refuse a peer of another protocol version, model fingerprint or topology."""
        if info.protocol_version != PROTOCOL_VERSION:
            raise HandshakeError(
                f"{info.node_id} speaks protocol v{info.protocol_version}, this node "
                f"v{PROTOCOL_VERSION}: run the same fedpeer release on both sites"
            )
        if info.node_id not in self.peers or (expected_id and info.node_id != expected_id):
            raise HandshakeError(
                f"{info.node_id!r} is not a neighbour of {self.cfg.node_id} in this "
                f"topology (expected {expected_id or ', '.join(self.peers)})"
            )
        if info.fingerprint != self.dual.fingerprint():
            mine = self.dual.fingerprint_fields()
            diff = [
                f"{k}: theirs {info.fingerprint_fields.get(k, '?')!r} vs ours {v!r}"
                for k, v in mine.items()
                if info.fingerprint_fields.get(k) != v
            ]
            raise HandshakeError(
                f"model fingerprint of {info.node_id} differs from {self.cfg.node_id}'s "
                f"({'; '.join(diff) or 'fields agree, hash differs'}): all sites must "
                "use the same base model, adapter config and mesh_seed"
            )

    # ================================================================ MeshHandler (transport threads)
    def on_hello(self, peer: PeerInfo) -> PeerInfo:
        try:
            self.check_peer(peer)
        except HandshakeError as exc:
            key = (peer.node_id, str(exc))  # a refused peer retries twice a second: log it once
            if key not in self._refusals_logged:
                self._refusals_logged.add(key)
                log.error("%s: refused handshake from %s: %s", self.cfg.node_id, peer.node_id or "?", exc)
            raise
        log.info(
            "%s: handshake from %s (round %d, epoch %s)",
            self.cfg.node_id,
            peer.node_id,
            peer.round,
            peer.epoch,
        )
        return self.me()

    def on_frame(self, frame: Frame) -> AckInfo:
        if frame.kind != FrameKind.UPDATE:
            raise FrameRejected(f"only update frames are pushed, got {frame.kind.value}")
        if frame.sender not in self.peers:
            raise FrameRejected(f"{frame.sender!r} is not a neighbour of {self.cfg.node_id}")
        t0 = time.perf_counter()
        try:
            q = decode_frame(frame, self.specs, self.limits, available_codecs())
            applied = self.copies.offer(
                frame.sender,
                frame.epoch,
                frame.round,
                frame.seq,
                {k: v.to(self.device) for k, v in q.items()},
                mix_weight=frame.mix_weight,
            )
        except FrameRejected:
            self._count_io(frame.round, rejected=1)
            raise
        self._count_io(frame.round, decode_s=time.perf_counter() - t0, bytes_received=frame.wire_bytes)
        return AckInfo(accepted=True, error="", applied_seq=applied)

    def on_snapshot_request(self, requester: str) -> Frame:
        with self._self_lock:
            return encode_frame(
                self.x_hat_self,
                self.snapshot_codec,
                sender=self.cfg.node_id,
                epoch=self.epoch,
                kind=FrameKind.SNAPSHOT,
                round=self.sent_round,
                seq=self.seq,
                mix_weight=self.pi,
            )

    def on_status(self) -> StatusInfo:
        nbrs = tuple(
            NeighbourInfo(
                node_id=j,
                address=p.address,
                connected=p.info is not None and p.reachable,
                last_round_heard=self.copies.copies[j].last_round,
                applied_seq=self.copies.copies[j].applied_seq,
            )
            for j, p in self.peers.items()
        )
        return StatusInfo(
            node=self.me(),
            phase=self.phase,
            rounds_total=self.cfg.gossip.rounds,
            neighbours=nbrs,
            last_train_loss=self.last_loss,
            consensus_distance=self.last_distance,
        )

    def _count_io(
        self, round: int, decode_s: float = 0.0, bytes_received: int = 0, rejected: int = 0
    ) -> None:
        with self._io_lock:
            io = self._io[round]
            io.decode_s += decode_s
            io.bytes_received += bytes_received
            io.frames_rejected += rejected

    # ================================================================ state on disk
    def save_checkpoint(self) -> None:
        copies, copies_meta = self.copies.export()
        groups: dict[str, dict[str, torch.Tensor]] = {
            "adapter": self.dual.adapter_state(),
            "self": self.x_hat_self,
            "train": self.trainer.state_tensors(),
            "rng": {"torch": torch.get_rng_state()},
        }
        groups.update({f"copy.{j}": s for j, s in copies.items()})
        meta = {
            "node_id": self.cfg.node_id,
            "round": self.completed_round,
            "seq": self.seq,
            "sent_round": self.sent_round,
            "pi": self.pi,
            # JSON has no NaN: None until the first evaluation.
            "last_eval_loss": self.last_eval_loss if math.isfinite(self.last_eval_loss) else None,
            "fingerprint": self.dual.fingerprint(),
            "copies": copies_meta,
            "trainer": self.trainer.state_meta(),
        }
        checkpoint.save(self.cfg.state_dir, checkpoint.flatten(groups), meta)

    def _resume(self) -> None:
        ck = checkpoint.load(self.cfg.state_dir)
        if ck is None:
            return
        if ck.meta.get("fingerprint") != self.dual.fingerprint():
            raise CheckpointError(
                f"{self.cfg.state_dir} holds a checkpoint of another model or adapter "
                "config; point state_dir at a new directory, or move the old one away"
            )
        self.dual.load_adapter_state(ck.group("adapter"))
        for k, v in ck.group("self").items():
            self.x_hat_self[k].copy_(v)
        self.trainer.load_state(ck.group("train"), ck.meta["trainer"])
        torch.set_rng_state(ck.group("rng")["torch"])
        self.copies.restore({j: ck.group(f"copy.{j}") for j in self.peers}, ck.meta["copies"])
        self.completed_round, self.seq = int(ck.meta["round"]), int(ck.meta["seq"])
        self.sent_round = int(ck.meta["sent_round"])
        self.pi = float(ck.meta.get("pi", 1.0))
        self.last_eval_loss = float(ck.meta.get("last_eval_loss") or math.nan)
        self.copies.set_round(self.completed_round)
        log.info(
            "%s: resumed from %s at round %d (seq %d)",
            self.cfg.node_id,
            self.cfg.state_dir,
            self.completed_round,
            self.seq,
        )

    def round_record(
        self,
        t: int,
        timer: Timer,
        t_start: float,
        sent: dict[str, Any],
        heard: list[str],
        resynced: list[str],
        evaluation: dict[str, float],
        frame: Frame,
    ) -> dict[str, Any]:
        with self._io_lock:
            io = self._io.pop(t, RoundIO())
            for old in [r for r in self._io if r < t]:  # late frames of past rounds: count them now
                late = self._io.pop(old)
                io.bytes_received += late.bytes_received
                io.decode_s += late.decode_s
        s = timer.spans
        return {
            "round": t,
            "time": time.time(),
            "node": self.cfg.node_id,
            "train_loss": self.last_loss,
            **evaluation,
            "bytes_sent": sent["bytes"],
            "bytes_received": io.bytes_received,
            "raw_bytes": sent["raw"],
            "payload_bytes": len(frame.payload),
            "codec": frame.codec,
            "train_s": s["train"],
            "encode_s": s["encode"],
            "transfer_s": s["transfer"],
            "decode_s": io.decode_s,
            "mix_s": s["mix"],
            "eval_s": s["eval"],
            "checkpoint_s": s["checkpoint"],
            "round_s": time.perf_counter() - t_start,
            "consensus_distance": self.last_distance,
            "mix_weight": self.pi,
            "global_norm": math.sqrt(
                sum(float(v.double().pow(2).sum()) for v in self.dual.global_state().values())
            ),
            "neighbours_heard": heard,
            "neighbours_reached": sent["reached"],
            "resynced": resynced,
            "frames_rejected": io.frames_rejected,
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.transport.close()


def _local_seed(cfg: NodeConfig) -> int:
    # Each site's private adapter starts from its own seed; stable across restarts.
    return zlib.crc32(cfg.node_id.encode()) ^ cfg.train.seed


def _round_line(node: str, t: int, total: int, degree: int, r: dict[str, Any]) -> str:
    ev = next(
        (f"{k} {r[k]:.4f}" for k in ("macro_f1", "accuracy", "eval_loss") if k in r and r[k] is not None), ""
    )
    distance = r["consensus_distance"]
    consensus = f"{distance:.3g}" if math.isfinite(distance) else "-"
    return (
        f"{node} round {t}/{total}: loss {r['train_loss']:.4f} {ev} | heard {len(r['neighbours_heard'])}"
        f"/{degree} reached {len(r['neighbours_reached'])}/{degree} | sent {r['bytes_sent'] / 1e3:.1f} kB"
        f" | consensus {consensus} | {r['round_s']:.1f} s"
    )


__all__ = ["Node", "FedpeerError"]
