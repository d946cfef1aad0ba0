"""A whole mesh around shared frozen base models: the simulation runners' core.

A simulated node is only its state: its global adapter (a row of `x`), its local adapter, its public
copy x̂ (a row of `x_hat`), its trainer (data, AdamW moments, private RNG) and its seq. The nodes are
split into blocks (`block.NodeBlock`), each around one base model: the sim runner runs one block with
every node in this process (`LocalBlocks`), the Ray runner one block per Ray actor
(`fedpeer.sim.ray`). A round, as data flows (`SimMesh.run_round` reads in this order):

1. train     each sampled node, in its block: its adapters are copied into the block's model,
             `LocalTrainer` runs its k steps (the same trainer a real node runs), adapters copied out
2. encode    each node, in its block: q = x − x̂ (`choco.difference`), `encode_frame` with the node's
             codec, `decode_frame`, x̂ += decoded q (`choco.add_`), exactly as a real sender commits
3. mix       here, all nodes at once: x += γ Σ_j w_ij (x̂_j − x̂_i) over the round's graph
             (`mixing.choco_mix`, the weights from `gossip.weights`, as a real node's row)
4. evaluate  each sampled node, in its block, with its mixed adapters swapped in; then one
             RoundRecord per node

Every receiver of a node's update decodes the same bytes and adds them in the same order, so all of
a real mesh's copies of x̂_j are bit-identical: one copy per node stands for all of them. That holds
while every update reaches every neighbour; the sim has no faults. Two kinds of graphs change the
exchange (see `MODES`): a graph that changes every round has no lasting public copies, so nodes send
whole states through the codec; a directed graph is mixed by push-sum.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedpeer.config import NodeConfig
from fedpeer.errors import ConfigError
from fedpeer.gossip.watch import DistanceWatch
from fedpeer.metrics import RoundRecord
from fedpeer.model.dual_lora import DualLora
from fedpeer.scenario.spec import PreparedScenario
from fedpeer.sim.block import EPOCH, HEARTBEAT_S, NodeBlock, Sent, StepResult
from fedpeer.sim.mixing import Edges, choco_mix, consensus_distances, mh_edges, push_sum, push_sum_edges
from fedpeer.sim.stacked import Layout
from fedpeer.tensors import State

__all__ = ["EPOCH", "HEARTBEAT_S", "MODES", "Blocks", "LocalBlocks", "RoundResult", "SimMesh", "mode_of"]

Echo = Callable[[str], None]
# How nodes exchange, by the kind of graph:
MODES = {
    "choco": "CHOCO-gossip of compressed differences, as real nodes (a fixed undirected graph)",
    "gossip": "whole states through the codec, Metropolis-Hastings weights (a new graph every round)",
    "push-sum": "push-sum of whole states (a directed graph)",
}


def mode_of(directed: bool, dynamic: bool) -> str:
    return "push-sum" if directed else "gossip" if dynamic else "choco"


@dataclass(frozen=True)
class RoundResult:
    round: int
    wall_s: float  # the whole simulated round, all nodes
    trained: list[int]  # nodes that trained this round
    records: list[RoundRecord]  # one per node, in node order


class Blocks(Protocol):
    """Where the blocks of nodes live: `ranges[b]` = (lo, hi) of block b; `call` runs one method of
    every block with its own arguments, all blocks at once where they can, and returns the results in
    block order."""

    ranges: list[tuple[int, int]]
    runner: str  # the --runner that runs them: "sim", "ray"
    where: str  # for the progress lines: "in this process", "on 4 Ray actors"

    def call(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]: ...

    def close(self) -> None: ...


class LocalBlocks:
    """The sim runner: one block with every node, in this process."""

    runner = "sim"
    where = "in this process"

    def __init__(
        self, configs: Sequence[NodeConfig], mode: str, dual: DualLora | None = None, echo: Echo | None = None
    ) -> None:
        self.ranges = [(0, len(configs))]
        self.block = NodeBlock(configs, 0, mode, configs[0], dual=dual, echo=echo)

    def call(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [getattr(self.block, method)(*args[0])]

    def close(self) -> None:
        pass


BlocksFactory = Callable[[Sequence[NodeConfig], str], Blocks]


def _stack(parts: list[torch.Tensor]) -> torch.Tensor:
    """Rows of all blocks: one block's own tensor (no copy: the sim runner's rows stay shared)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class SimMesh:
    """The nodes of `prepared` as rows of stacked tensors around shared models."""

    def __init__(
        self,
        prepared: PreparedScenario,
        echo: Echo | None = None,
        dual: DualLora | None = None,
        blocks: BlocksFactory | None = None,
    ) -> None:
        """`dual`: a base model with its adapters already loaded from `prepared`'s model and adapter
        settings (several meshes in one process can share it); loaded here otherwise. `blocks`: where
        the nodes' per-node work runs (default: `LocalBlocks`, this process)."""
        spec = prepared.spec
        self.spec, self.configs = spec, prepared.nodes
        self.names = [c.node_id for c in self.configs]
        self.echo: Echo = echo or (lambda _: None)
        if spec.faults:
            raise ConfigError(
                "the sim runner does not emulate [[faults]] (kills, cuts, slow links): remove them, or "
                "use --runner inprocess or --runner process"
            )
        self.schedule = spec.schedule
        self.mode = mode_of(self.schedule.directed, self.schedule.dynamic)
        cfg = self.configs[0]
        self.gossip = cfg.gossip
        if self.mode == "push-sum" and (cfg.codec.name != "lossless" or cfg.gossip.gamma != 1.0):
            raise ConfigError(
                f"topology {spec.topology} is directed and mixed by push-sum, which sends whole states "
                'without error feedback: set codec.name = "lossless" and gossip.gamma = 1.0'
            )
        if blocks is None:
            self.blocks: Blocks = LocalBlocks(self.configs, self.mode, dual=dual, echo=self.echo)
        else:
            self.blocks = blocks(self.configs, self.mode)
        g_example, l_example = self.blocks.call("templates", [()] * len(self.blocks.ranges))[0]
        self.g = Layout(g_example)
        self.l = Layout(l_example)
        rows = self.blocks.call("rows", [()] * len(self.blocks.ranges))
        self.x = _stack([x for x, _ in rows])  # global adapters; under push-sum the de-biased z = y / s
        self._local = _stack([loc for _, loc in rows]) if len(rows) == 1 else None
        n = len(self.names)
        # Public copies x̂_i (choco): the blocks update them as they encode, the mixer reads them.
        self.x_hat = self.g.zeros(n) if self.mode == "choco" else None
        self.ps_weight = torch.ones(n, dtype=torch.float64)  # push-sum weights s_i
        self.last_eval_loss = [math.nan] * n
        self.train_sizes = [s for part in self.blocks.call("train_sizes", self._no_args()) for s in part]
        self._fixed_edges: Edges | None = None
        # Each node watches its consensus distance as a real node does (CHOCO diverging at too large
        # a gamma); the sim says it in one line for all nodes of a round.
        self.watches = [DistanceWatch(cfg.codec.lossy, cfg.gossip.gamma) for _ in self.names]

    def _no_args(self) -> list[tuple[Any, ...]]:
        return [()] * len(self.blocks.ranges)

    def close(self) -> None:
        """Let go of the blocks (the Ray runner's actors)."""
        self.blocks.close()

    @property
    def local(self) -> torch.Tensor:
        """Every node's local adapter [n, L] (the sim runner's own rows; gathered from Ray actors)."""
        if self._local is not None:
            return self._local
        return torch.cat([loc for _, loc in self.blocks.call("rows", self._no_args())])

    def global_state(self, i: int) -> State:
        """Node i's global adapter (the model it trains and evaluates), as new tensors."""
        return {k: v.clone() for k, v in self.g.views(self.x[i]).items()}

    def local_state(self, i: int) -> State:
        return {k: v.clone() for k, v in self.l.views(self.local[i]).items()}

    def set_global_states(self, x: torch.Tensor) -> None:
        """Replace every node's global adapter (rows of `x`, the `Layout` of `g`): tests and
        experiments that start from given states."""
        self.x.copy_(x)
        self.blocks.call("set_x", [(self.x[lo:hi],) for lo, hi in self.blocks.ranges])

    def participants(self, t: int) -> list[int]:
        """Nodes that train in round t: all, or a sample of sim.participation of them, drawn from
        (topology_seed, t) so that a rerun samples the same ones."""
        n, p = len(self.names), self.spec.sim.participation
        if p >= 1.0:
            return list(range(n))
        k = max(1, round(p * n))
        gen = torch.Generator().manual_seed(
            zlib.crc32(f"participation/{self.spec.topology_seed}/{t}".encode())
        )
        return sorted(torch.randperm(n, generator=gen)[:k].tolist())

    def _pis(self) -> list[float]:
        """Each node's π this round (gossip.weighting), as `Node.round_pi`."""
        w = self.gossip.weighting
        if w == "data-size":
            return [float(s) for s in self.train_sizes]
        if w == "val-loss":
            return [math.exp(1.0 - v) if math.isfinite(v) else 1.0 for v in self.last_eval_loss]
        return [1.0] * len(self.names)

    def _edges(self, t: int, pis: list[float]) -> Edges:
        if self.mode == "push-sum":
            if self._fixed_edges is None or self.schedule.dynamic:
                self._fixed_edges = push_sum_edges(self.schedule.graph(t), self.names)
            return self._fixed_edges
        uniform = all(p == 1.0 for p in pis)
        if uniform and self._fixed_edges is not None and not self.schedule.dynamic:
            return self._fixed_edges
        edges = mh_edges(self.schedule.graph(t), self.names, None if uniform else pis)
        if uniform:
            self._fixed_edges = edges
        return edges

    # ================================================================ the round
    def run_round(self, t: int) -> RoundResult:
        t0 = time.perf_counter()
        n = len(self.names)
        trained = self.participants(t)
        # π depends on data sizes and last round's evaluations only: known before this round trains.
        pis = self._pis()
        edges = self._edges(t, pis)
        weights = self.ps_weight.tolist() if self.mode == "push-sum" else pis
        ranges = self.blocks.ranges
        steps: list[StepResult] = self.blocks.call(
            "step", [(t, _within(trained, lo, hi), weights[lo:hi]) for lo, hi in ranges]
        )
        losses = {i: v for s in steps for i, v in s.losses.items()}
        train_s = [0.0] * n
        for s in steps:
            for i, v in s.train_s.items():
                train_s[i] = v
        sent = [x for s in steps for x in s.sent]
        self.x = _stack([s.x for s in steps])
        public = _stack([s.public for s in steps])

        t_mix = time.perf_counter()
        distances = self._mix(edges, public)
        mix_s = (time.perf_counter() - t_mix) / n
        norms = self.x.double().pow(2).sum(dim=1).sqrt().tolist()
        self._watch(t, distances, norms)

        finished = self.blocks.call(
            "finish", [(t, _within(trained, lo, hi), self.x[lo:hi]) for lo, hi in ranges]
        )
        evaluations: dict[int, dict[str, float]] = {}
        eval_s = [0.0] * n
        for ev, secs in finished:
            evaluations.update(ev)
            for i, v in secs.items():
                eval_s[i] = v
        for i, ev in evaluations.items():
            self.last_eval_loss[i] = ev.get("eval_loss", math.nan)

        records = self._records(
            t, edges, sent, pis, losses, evaluations, distances, norms, train_s, eval_s, mix_s
        )
        return RoundResult(t, time.perf_counter() - t0, trained, records)

    def _watch(self, t: int, distances: list[float], norms: list[float]) -> None:
        said = [
            (name, w)
            for name, watch, d, norm in zip(self.names, self.watches, distances, norms, strict=True)
            if (w := watch.observe(d, norm))
        ]
        if said:
            name, warning = said[0]
            self.echo(
                f"warning: round {t}, {len(said)} of {len(self.names)} nodes: {warning} (figures of {name})"
            )

    def _mix(self, edges: Edges, public: torch.Tensor) -> list[float]:
        """Mix every node at once; each node's consensus distance: to the public states it mixed
        (push-sum: to its in-neighbours' new estimates). `public`: x̂ (choco), else the decoded whole
        states (push-sum: numerators)."""
        gamma = self.gossip.gamma
        if self.mode == "choco":
            self.x_hat = public
            self.x = choco_mix(self.x, public, edges, gamma)
            return consensus_distances(self.x, public, edges)
        if self.mode == "gossip":
            self.x = choco_mix(self.x, public, edges, gamma)
            return consensus_distances(self.x, public, edges)
        y = self.x * self.ps_weight.unsqueeze(1).float()
        y, self.ps_weight = push_sum(y, self.ps_weight, public, edges)
        self.x = (y.double() / self.ps_weight.unsqueeze(1)).float()
        return consensus_distances(self.x, self.x, edges)

    def _records(
        self,
        t: int,
        edges: Edges,
        sent: list[Sent],
        pis: list[float],
        losses: dict[int, float],
        evaluations: dict[int, dict[str, float]],
        distances: list[float],
        norms: list[float],
        train_s: list[float],
        eval_s: list[float],
        mix_s: float,
    ) -> list[RoundRecord]:
        n = len(self.names)
        heard: list[list[str]] = [[] for _ in range(n)]
        reached: list[list[str]] = [[] for _ in range(n)]
        for d, s in zip(edges.dst.tolist(), edges.src.tolist(), strict=True):
            heard[d].append(self.names[s])
            reached[s].append(self.names[d])
        index = {name: i for i, name in enumerate(self.names)}
        now = time.time()
        records = []
        for i in range(n):
            s = sent[i]
            own_s = train_s[i] + s.encode_s + s.decode_s + mix_s + eval_s[i]
            records.append(
                RoundRecord(
                    round=t,
                    time=now,
                    node=self.names[i],
                    train_loss=losses.get(i),
                    evaluation=dict(evaluations.get(i, {})),
                    bytes_sent=s.wire_bytes * len(reached[i]),
                    bytes_received=sum(sent[index[j]].wire_bytes for j in heard[i]),
                    raw_bytes=s.raw_bytes * len(reached[i]),
                    payload_bytes=s.payload_bytes,
                    codec=s.codec,
                    train_s=train_s[i],
                    encode_s=s.encode_s,
                    transfer_s=0.0,  # no network: a sim measures compute and bytes, not links
                    decode_s=s.decode_s,
                    mix_s=mix_s,
                    eval_s=eval_s[i],
                    checkpoint_s=0.0,
                    round_s=own_s,
                    consensus_distance=distances[i],
                    mix_weight=float(self.ps_weight[i]) if self.mode == "push-sum" else pis[i],
                    global_norm=norms[i],
                    neighbours_heard=sorted(heard[i]),
                    neighbours_reached=sorted(reached[i]),
                    resynced=[],
                    frames_rejected=0,
                )
            )
        return records


def _within(nodes: list[int], lo: int, hi: int) -> list[int]:
    return [i for i in nodes if lo <= i < hi]
