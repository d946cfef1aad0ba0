"""A node's neighbours: the peer table and every call the node makes to them.

Handshakes (joining, and again after a failure), the codec every neighbour can decode, the parallel
send of a round's frame (returning a typed `SendReport`), and snapshot fetches for a resync.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from fedpeer import PROTOCOL_VERSION
from fedpeer.codec import Codec, DecodeLimits
from fedpeer.config import NodeConfig
from fedpeer.errors import FrameRejected, HandshakeError, PeerBusy, PeerUnavailable
from fedpeer.gossip.weights import neighbour_weights
from fedpeer.tensors import State, TensorSpec
from fedpeer.transport.base import SendResult, Transport
from fedpeer.wire.frames import Frame, FrameKind, PeerInfo, decode_frame, payload_bound

log = logging.getLogger("fedpeer.node")

# Snapshots must reproduce x_hat bit for bit on the receiver: always lossless.
SNAPSHOT_CODEC = "lossless"
# While joining, say which neighbours we still wait for (and why) this often.
JOIN_REPORT_S = 10.0
# While a round waits on neighbours (a send, their updates), those still missing are health-checked
# this often; failing checks for gossip.failure_timeout_s leave a neighbour out of the round.
PROBE_EVERY_S = 1.0


@dataclass
class Peer:
    id: str
    address: str
    info: PeerInfo | None = None  # from our handshake with it; None until it answered
    # Why we are not connected: "refused: ..." or "not reachable: ...", each logged once.
    problem: str = ""
    reachable: bool = False
    # Since when (time.monotonic()) it has failed its health checks while a round waited; None: answering.
    failing_since: float | None = None


@dataclass(frozen=True)
class SendReport:
    """What one broadcast of a round's frame achieved."""

    reached: list[str]  # neighbours that took the frame (accepted or refused it)
    bytes: int  # protobuf bytes on the wire, all neighbours together
    raw: int  # the same updates as fp32


@dataclass(frozen=True)
class Snapshot:
    """A neighbour's whole public copy x̂_j, as fetched for a resync."""

    epoch: str
    round: int
    seq: int
    x_hat: State
    mix_weight: float
    wire_bytes: int


class Neighbours:
    def __init__(
        self,
        cfg: NodeConfig,
        transport: Transport,
        me: Callable[[], PeerInfo],
        fingerprint_fields: dict[str, str],
        fingerprint: str,
    ) -> None:
        self.node_id = cfg.node_id
        self.gossip = cfg.gossip
        self.transport = transport
        self.me = me  # our handshake, as of now (round, address)
        self.fingerprint, self.fingerprint_fields = fingerprint, fingerprint_fields
        self.peers = {p.id: Peer(p.id, p.address) for p in cfg.neighbours}
        for p in cfg.neighbours:  # with TLS, whoever answers at a neighbour's address must prove its id
            transport.expect(p.address, p.id)
        # A send to a hung neighbour is given up on but keeps its thread until its deadline; room for
        # a few of those beside each round's sends and health checks.
        self._pool = ThreadPoolExecutor(max_workers=4 * len(self.peers) + 2, thread_name_prefix="send")
        self._codec_warned = False

    @property
    def degree(self) -> int:
        return len(self.peers)

    # --- joining and handshakes ----------------------------------------------------------------------
    def join(self) -> int:
        """Handshake with every neighbour, retrying until join_timeout_s and saying whom we wait for;
        returns the highest round a neighbour has completed (0 if none answered)."""
        start = time.monotonic()
        deadline, next_report = start + self.gossip.join_timeout_s, start
        while True:
            for p in self.peers.values():
                if p.info is None:
                    self.handshake(p)
            missing = [p for p in self.peers.values() if p.info is None]
            now = time.monotonic()
            if not missing or now > deadline:
                break
            if now >= next_report:
                log.info(
                    "%s: waiting for %s (up to %.0f s more)",
                    self.node_id,
                    "; ".join(f"{p.id} at {p.address}: {p.problem or 'no answer yet'}" for p in missing),
                    deadline - now,
                )
                next_report = now + JOIN_REPORT_S
            time.sleep(0.5)
        for p in missing:
            log.warning(
                "%s: starting without %s after %.0f s (%s); it joins when it comes up",
                self.node_id,
                p.id,
                self.gossip.join_timeout_s,
                p.problem or "no answer",
            )
        return max([p.info.round for p in self.peers.values() if p.info] + [0])

    def handshake(self, peer: Peer) -> None:
        """Try to connect to `peer`. A refusal is logged once per reason; an unreachable peer is
        only recorded (`peer.problem`): the join loop and the send path say when it matters."""
        try:
            info = self.transport.hello(peer.address, self.me(), self.gossip.rpc_timeout_s)
            self.check_peer(info, expected_id=peer.id)
        except HandshakeError as exc:
            problem = f"refused: {exc}"
            if problem != peer.problem:
                log.error("%s: handshake with %s refused: %s", self.node_id, peer.id, exc)
            peer.problem = problem
            return
        except PeerUnavailable as exc:
            peer.problem = f"not reachable: {exc}"
            return
        peer.info, peer.problem, peer.reachable = info, "", True
        log.info(
            "%s: connected to %s at %s (round %d, degree %d)",
            self.node_id,
            peer.id,
            peer.address,
            info.round,
            info.degree,
        )

    def check_peer(self, info: PeerInfo, expected_id: str | None = None) -> None:
        """Refuse a peer of another protocol version, model fingerprint or topology."""
        if info.protocol_version != PROTOCOL_VERSION:
            raise HandshakeError(
                f"{info.node_id} speaks protocol v{info.protocol_version}, this node "
                f"v{PROTOCOL_VERSION}: run the same fedpeer release on both sites"
            )
        if info.node_id not in self.peers or (expected_id and info.node_id != expected_id):
            raise HandshakeError(
                f"{info.node_id!r} is not a neighbour of {self.node_id} in this "
                f"topology (expected {expected_id or ', '.join(self.peers)})"
            )
        if info.fingerprint != self.fingerprint:
            diff = [
                f"{k}: theirs {info.fingerprint_fields.get(k, '?')!r} vs ours {v!r}"
                for k, v in self.fingerprint_fields.items()
                if info.fingerprint_fields.get(k) != v
            ]
            raise HandshakeError(
                f"model fingerprint of {info.node_id} differs from {self.node_id}'s "
                f"({'; '.join(diff) or 'fields agree, hash differs'}): all sites must "
                "use the same base model, adapter config and mesh_seed"
            )

    # --- a round's exchange --------------------------------------------------------------------------
    def codec_for_all(self, codec: Codec, fallback: Codec) -> Codec:
        """`codec` if every connected neighbour can decode it, else `fallback` (lossless, which all
        can). One codec per round for all neighbours: they all add the same q to their copy of us."""
        unable = [p.id for p in self.peers.values() if p.info and codec.name not in p.info.codecs]
        if not unable:
            return codec
        if not self._codec_warned:
            log.warning(
                "%s: %s cannot decode codec %s; sending lossless updates",
                self.node_id,
                ", ".join(unable),
                codec.name,
            )
            self._codec_warned = True
        return fallback

    def broadcast(self, frame: Frame) -> SendReport:
        """Send `frame` to every neighbour in parallel, each call with its deadline. A send still
        running after PROBE_EVERY_S is to a slow or a hung neighbour: it is waited for while the
        neighbour answers health checks, and given up on (left running, unreached) otherwise."""
        futures = {j: self._pool.submit(self._send_one, p, frame) for j, p in self.peers.items()}
        running = dict(futures)
        while running:
            wait(running.values(), timeout=PROBE_EVERY_S)
            running = {j: f for j, f in running.items() if not f.done()}
            for j in self.unresponsive(set(running), frame.round):
                del running[j]
        reached, wire = [], 0
        for j, fut in futures.items():
            nbytes = fut.result() if fut.done() else 0
            self.peers[j].reachable = nbytes > 0
            if nbytes > 0:
                reached.append(j)
                wire += nbytes
        return SendReport(reached=reached, bytes=wire, raw=frame.raw_bytes * len(reached))

    def _send_one(self, peer: Peer, frame: Frame) -> int:
        try:
            if peer.info is None:
                self.handshake(peer)
                if peer.info is None:
                    return 0
            result = self._send_when_free(peer, frame)
        except (PeerUnavailable, FrameRejected) as exc:
            if peer.reachable:
                log.warning("%s: lost %s: %s", self.node_id, peer.id, exc)
            peer.problem = f"not reachable: {exc}"
            return 0
        peer.problem, peer.failing_since = "", None
        if not result.ack.accepted:
            log.warning(
                "%s: %s refused our round-%d update: %s", self.node_id, peer.id, frame.round, result.ack.error
            )
        return result.wire_bytes

    def _send_when_free(self, peer: Peer, frame: Frame) -> SendResult:
        """Send, retrying while the neighbour says it is busy (no stream slot free for us, e.g. while
        streams in our name stall there) until rpc_timeout_s: a busy neighbour is up, not lost."""
        deadline = time.monotonic() + self.gossip.rpc_timeout_s
        pause = 0.05
        while True:
            try:
                return self.transport.send_frame(peer.address, frame, max(0.1, deadline - time.monotonic()))
            except PeerBusy:
                if time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
                pause = min(2 * pause, 1.0)

    def unresponsive(self, names: set[str], round: int) -> set[str]:
        """Those of `names` that have not answered a health check for failure_timeout_s: dead or hung
        (a slow neighbour still answers, and is waited for until the round deadline). Checks are
        PROBE_EVERY_S apart and each waits PROBE_EVERY_S for its answer, so a neighbour that stops
        answering is left out within failure_timeout_s + 2 * PROBE_EVERY_S (5 s by default)."""
        timeout = self.gossip.failure_timeout_s
        asked = time.monotonic()
        probes = {
            j: self._pool.submit(self.transport.alive, self.peers[j].address, PROBE_EVERY_S) for j in names
        }
        gone = set()
        for j, probe in probes.items():
            peer = self.peers[j]
            if probe.result():
                peer.failing_since = None
                continue
            peer.failing_since = peer.failing_since or asked
            now = time.monotonic()
            if now - peer.failing_since >= timeout:
                gone.add(j)
                log.warning(
                    "%s: left %s out of round %d: it has not answered for %.1f s (dead or hung)",
                    self.node_id,
                    j,
                    round,
                    now - peer.failing_since,
                )
        return gone

    def weights(self, heard: list[str], pi: float, pis: dict[str, float]) -> dict[str, float]:
        """This round's row of W over the neighbours heard (see gossip.weights.neighbour_weights)."""
        degrees = {j: self.peers[j].info.degree for j in heard}  # type: ignore[union-attr]
        return neighbour_weights(self.degree, degrees, pi, pis)

    def completed_round(self, j: str) -> int | None:
        """The round neighbour j says it has completed, asked now at its configured address (over
        TLS, proving its node id); None if it does not answer. What a refused frame claims is checked
        against this before the node acts on it."""
        try:
            return self.transport.status(self.peers[j].address, self.gossip.rpc_timeout_s).node.round
        except (PeerUnavailable, HandshakeError) as exc:
            log.warning("%s: cannot ask %s for its round: %s", self.node_id, j, exc)
            return None

    # --- resync --------------------------------------------------------------------------------------
    def fetch_snapshot(
        self, j: str, round: int, specs: list[TensorSpec], limits: DecodeLimits
    ) -> Snapshot | None:
        """Neighbour j's whole x̂_j as of its latest update of a round <= `round`, checked and
        decoded; None (logged) if it cannot be had now or only a later one can."""
        try:
            frame = self.transport.fetch_snapshot(
                self.peers[j].address,
                self.node_id,
                self.gossip.rpc_timeout_s,
                min(payload_bound(specs), limits.max_payload_bytes),
                round,
            )
            if frame.kind != FrameKind.SNAPSHOT or frame.sender != j:
                raise FrameRejected(
                    f"expected a snapshot from {j}, got a {frame.kind.value} from {frame.sender}"
                )
            if frame.round > round:
                raise FrameRejected(f"its oldest snapshot is of round {frame.round}, after our round {round}")
            x_hat = decode_frame(frame, specs, limits, [SNAPSHOT_CODEC])
        except (PeerUnavailable, FrameRejected) as exc:
            log.warning("%s: resync of %s failed, leaving it out this round: %s", self.node_id, j, exc)
            return None
        return Snapshot(frame.epoch, frame.round, frame.seq, x_hat, frame.mix_weight, frame.wire_bytes)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
