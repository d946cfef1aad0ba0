"""A block of simulated nodes around one base model: the per-node work of a simulated round.

`NodeBlock` holds nodes lo..hi-1 of a scenario: their global adapters (rows of `x`), local adapters
(rows of `local`), public copies (rows of `x_hat`, CHOCO only), trainers and seqs, and one base model
that every node of the block swaps its adapters into. A round is two calls:

- `step`: each sampled node trains (its adapters swapped into the shared model, its own
  `LocalTrainer`), then every node encodes its update (`encode_frame` with the scenario's codec,
  `decode_frame`, and under CHOCO x̂ += decoded q): the block's rows after training and its public
  rows (x̂, or the decoded whole states) go back to whoever mixes;
- `finish`: the mixed rows come back and each sampled node evaluates.

The sim runner runs one block covering every node in its own process (`LocalBlocks`); the Ray runner
runs one block per Ray actor (`fedpeer.sim.ray`). Mixing is not here: it is done on the stacked rows of
all blocks at once (`SimMesh`), so both runners share every line of per-node work and of mixing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fedpeer.codec import DecodeLimits, codec_from_config
from fedpeer.config import NodeConfig
from fedpeer.gossip import choco
from fedpeer.model.adapters import GLOBAL, LOCAL, init_lora_a
from fedpeer.model.dual_lora import DualLora, load_dual_lora, resolve_device
from fedpeer.node.build import local_seed
from fedpeer.sim.stacked import Layout
from fedpeer.tensors import State
from fedpeer.train.loop import LocalTrainer
from fedpeer.wire.frames import FrameKind, decode_frame, encode_frame
from fedpeer.wire.serde import frame_to_chunks

__all__ = ["EPOCH", "HEARTBEAT_S", "NodeBlock", "Sent", "StepResult", "load_base"]

Echo = Callable[[str], None]
Evaluations = dict[int, dict[str, float]]  # node -> its evaluation metrics
HEARTBEAT_S = 5.0  # within a long round, say how far it got this often
# As long as a real node's epoch (12 hex digits), so that frames take the same bytes on the wire.
EPOCH = "0" * 12


@dataclass(frozen=True)
class Sent:
    """One node's update of this round, as its receivers would count it (the frame stays behind)."""

    wire_bytes: int
    raw_bytes: int
    payload_bytes: int
    codec: str
    encode_s: float
    decode_s: float


@dataclass(frozen=True)
class StepResult:
    """What a block's `step` hands to the mixer (node indices are the scenario's, not the block's)."""

    losses: dict[int, float]  # nodes that trained: their mean training loss
    train_s: dict[int, float]
    sent: list[Sent]  # one per node of the block, in order
    x: torch.Tensor  # the block's global adapters after training [m, G]
    public: torch.Tensor  # x̂ after this round's update (choco), else the decoded whole states [m, G]


def load_base(first: NodeConfig) -> DualLora:
    """The shared base model with its adapters, as every block (and the sim runner) loads it: from the
    scenario's first node config, so that each block starts from the same weights."""
    device = resolve_device(first.train.device)
    return load_dual_lora(first.model, first.adapter, device, local_seed=local_seed(first))


class NodeBlock:
    """Nodes `lo`..`lo + len(configs) - 1` of a scenario as rows around one shared model."""

    def __init__(
        self,
        configs: Sequence[NodeConfig],
        lo: int,
        mode: str,
        first: NodeConfig,
        dual: DualLora | None = None,
        echo: Echo | None = None,
    ) -> None:
        """`first`: the scenario's first node config (base model and adapter settings of all blocks);
        `dual`: that model already loaded (several meshes in one process can share it)."""
        self.configs, self.lo, self.mode = list(configs), lo, mode
        self.names = [c.node_id for c in self.configs]
        self.echo: Echo = echo or (lambda _: None)
        self.dual = dual or load_base(first)
        self.codec = codec_from_config(first.codec)
        self.specs = self.dual.global_specs()
        self.limits = DecodeLimits(max_payload_bytes=int(first.codec.max_payload_mb * 2**20))
        self.g = Layout(self.dual.global_state())
        self.l = Layout(self.dual.local_state())
        m = len(self.configs)
        self.x = self.g.zeros(m)
        self.local = self.l.zeros(m)
        self.x_hat = self.g.zeros(m) if mode == "choco" else None
        self.seq = [0] * m
        self.trainers = self._build_nodes()

    # ================================================================ nodes
    def _build_nodes(self) -> list[LocalTrainer]:
        """Each node's adapters as a real node starts them (A_l from its own seed), and its trainer."""
        initial = self.dual.adapter_state()
        trainers = []
        said = time.monotonic()
        for i, cfg in enumerate(self.configs):
            self.dual.load_adapter_state(initial)
            init_lora_a(self.dual.model, f"{GLOBAL}/{cfg.adapter.mesh_seed}", f"{LOCAL}/{local_seed(cfg)}")
            self.g.pack(self.dual.global_state(), self.x[i])
            self.l.pack(self.dual.local_state(), self.local[i])
            trainers.append(LocalTrainer(self.dual, cfg.model, cfg.train))
            if time.monotonic() - said >= HEARTBEAT_S:
                self.echo(f"  built {i + 1}/{len(self.configs)} nodes (adapters, data, optimizer)")
                said = time.monotonic()
        return trainers

    def templates(self) -> tuple[State, State]:
        """One node's global and local adapter (shapes and order of the stacked rows' `Layout`s)."""
        return self.dual.global_state(), self.dual.local_state()

    def train_sizes(self) -> list[int]:
        return [tr.train_size for tr in self.trainers]

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's global and local adapters [m, G], [m, L]."""
        return self.x, self.local

    def set_x(self, x: torch.Tensor) -> None:
        """Replace the block's global adapters (its rows of the mixed state)."""
        self.x = x

    def _swap_in(self, i: int) -> None:
        self.dual.set_global_state(self.g.views(self.x[i]))
        self.dual.set_local_state(self.l.views(self.local[i]))

    def _swap_out(self, i: int) -> None:
        self.g.pack(self.dual.global_state(), self.x[i])
        self.l.pack(self.dual.local_state(), self.local[i])

    # ================================================================ the round
    def step(self, t: int, trained: list[int], weights: list[float]) -> StepResult:
        """Train the nodes `trained` (scenario indices within this block), then encode every node's
        update with its mix weight `weights[i]` (one per node of the block: π, or push-sum's s_i)."""
        losses, train_s = self._train(t, trained)
        sent, public = self._encode(t, weights)
        return StepResult(losses, train_s, sent, self.x, public)

    def finish(self, t: int, trained: list[int], x: torch.Tensor) -> tuple[Evaluations, dict[int, float]]:
        """Take the mixed rows `x`, evaluate the nodes `trained`: their evaluations and seconds."""
        self.set_x(x)
        out: Evaluations = {}
        eval_s: dict[int, float] = {}
        said = time.monotonic()
        for done, i in enumerate(trained):
            t1 = time.perf_counter()
            self._swap_in(i - self.lo)
            out[i] = self.trainers[i - self.lo].evaluate()
            eval_s[i] = time.perf_counter() - t1
            if time.monotonic() - said >= HEARTBEAT_S:
                self.echo(f"  round {t}: evaluated {done + 1}/{len(trained)} nodes")
                said = time.monotonic()
        return out, eval_s

    def _train(self, t: int, trained: list[int]) -> tuple[dict[int, float], dict[int, float]]:
        losses: dict[int, float] = {}
        train_s: dict[int, float] = {}
        said = time.monotonic()
        for done, i in enumerate(trained):
            t1 = time.perf_counter()
            self._swap_in(i - self.lo)
            losses[i] = self.trainers[i - self.lo].train_round()
            self._swap_out(i - self.lo)
            train_s[i] = time.perf_counter() - t1
            if time.monotonic() - said >= HEARTBEAT_S:
                self.echo(f"  round {t}: trained {done + 1}/{len(trained)} nodes")
                said = time.monotonic()
        return losses, train_s

    def _encode(self, t: int, weights: list[float]) -> tuple[list[Sent], torch.Tensor]:
        """Each node's update: the difference from its public copy (choco), else its whole state
        (push-sum: its numerator y = z s, with s in the frame's mix weight)."""
        out = []
        decoded = None if self.mode == "choco" else self.g.zeros(len(self.names))
        said = time.monotonic()
        for i in range(len(self.names)):
            if time.monotonic() - said >= HEARTBEAT_S:
                self.echo(f"  round {t}: encoded {i}/{len(self.names)} updates")
                said = time.monotonic()
            x = self.g.views(self.x[i])
            if self.mode == "choco":
                assert self.x_hat is not None
                x_hat = self.g.views(self.x_hat[i])
                sent, q = self._send(i, t, choco.difference(x, x_hat), weights[i])
                choco.add_(x_hat, q)  # what the receivers decode: error feedback
            else:
                s = weights[i]
                state = {k: v * s for k, v in x.items()} if self.mode == "push-sum" else x
                sent, q = self._send(i, t, state, s)
                assert decoded is not None
                self.g.pack(q, decoded[i])
            out.append(sent)
        public = self.x_hat if decoded is None else decoded
        assert public is not None
        return out, public

    def _send(self, i: int, t: int, q: State, mix_weight: float) -> tuple[Sent, State]:
        t1 = time.perf_counter()
        self.seq[i] += 1
        frame = encode_frame(
            q,
            self.codec,
            sender=self.names[i],
            epoch=EPOCH,
            kind=FrameKind.UPDATE,
            round=t,
            seq=self.seq[i],
            mix_weight=mix_weight,
        )
        t2 = time.perf_counter()
        decoded = decode_frame(frame, self.specs, self.limits, [self.codec.name])
        t3 = time.perf_counter()
        wire = sum(c.ByteSize() for c in frame_to_chunks(frame))
        sent = Sent(wire, frame.raw_bytes, len(frame.payload), frame.codec, t2 - t1, t3 - t2)
        return sent, decoded
