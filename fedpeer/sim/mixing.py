"""Mixing over all nodes at once: the math of `gossip/choco.py` and push-sum on stacked rows.

One round's graph becomes `Edges`: node `dst` takes node `src`'s public state with weight `w`. For
undirected graphs the weights are each node's Metropolis-Hastings row (`gossip.weights`, the very
function a real node calls); for directed graphs they are push-sum's column-stochastic shares.

- `choco_mix` is `choco.mix` for every node: x_i + γ Σ_j w_ij (x̂_j − x̂_i), differences first.
- `push_sum` (Kempe et al. 2003; BlueFog's push-sum, SGP): node i keeps 1/(d_i+1) of its numerator y_i
  and of its weight s_i and pushes the same share to each of its d_i out-neighbours; the de-biased
  z_i = y_i / s_i converges to the exact average on any strongly connected digraph, where
  row-stochastic mixing would converge to a skewed one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import torch

from fedpeer.gossip.weights import neighbour_weights

__all__ = ["Edges", "choco_mix", "consensus_distances", "mh_edges", "push_sum", "push_sum_edges"]

# Edges mixed per step: bounds the temporary (chunk x parameters) tensor of differences.
_CHUNK = 4096


@dataclass(frozen=True)
class Edges:
    """Weighted arcs src -> dst of one round over nodes 0..n-1, grouped by dst in node order."""

    n: int
    dst: torch.Tensor  # int64 [E]
    src: torch.Tensor  # int64 [E]
    weight: torch.Tensor  # float64 [E]
    self_weight: torch.Tensor  # float64 [n]: push-sum's kept share (1 - row sum for MH rows)

    def in_neighbours(self, i: int) -> list[int]:
        return self.src[self.dst == i].tolist()


def mh_edges(graph: nx.Graph, names: Sequence[str], pis: Sequence[float] | None = None) -> Edges:
    """Each node's Metropolis-Hastings row over its neighbours in sorted-name order (as a node's
    peer table), π-weighted when `pis` is given (gossip.weighting)."""
    index = {name: i for i, name in enumerate(names)}
    dst, src, weight, self_weight = [], [], [], []
    for i, name in enumerate(names):
        peers = sorted(graph.neighbors(name))
        pi = 1.0 if pis is None else pis[i]
        row = neighbour_weights(
            graph.degree[name],
            {j: graph.degree[j] for j in peers},
            pi,
            None if pis is None else {j: pis[index[j]] for j in peers},
        )
        for j in peers:
            dst.append(i)
            src.append(index[j])
            weight.append(row[j])
        self_weight.append(1.0 - sum(row.values()))
    return _edges(len(names), dst, src, weight, self_weight)


def push_sum_edges(graph: nx.DiGraph, names: Sequence[str]) -> Edges:
    """Push-sum shares: node i keeps 1/(d_i+1) and sends 1/(d_i+1) to each of its d_i out-neighbours
    (the matrix is column-stochastic; a row sums to 1 only on regular digraphs)."""
    index = {name: i for i, name in enumerate(names)}
    arcs = sorted((index[b], index[a]) for a, b in graph.edges)
    share = [1.0 / (graph.out_degree[name] + 1) for name in names]
    return _edges(len(names), [d for d, _ in arcs], [s for _, s in arcs], [share[s] for _, s in arcs], share)


def _edges(n: int, dst: list[int], src: list[int], weight: list[float], self_weight: list[float]) -> Edges:
    return Edges(
        n,
        torch.tensor(dst, dtype=torch.int64),
        torch.tensor(src, dtype=torch.int64),
        torch.tensor(weight, dtype=torch.float64),
        torch.tensor(self_weight, dtype=torch.float64),
    )


def choco_mix(x: torch.Tensor, x_hat: torch.Tensor, edges: Edges, gamma: float) -> torch.Tensor:
    """x_i + γ Σ_j w_ij (x̂_j − x̂_i) for every row i at once (rows: nodes); new tensor.

    As `choco.mix`, differences are formed before they are summed, so a small signal near consensus
    is not lost in large sums."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    drift = torch.zeros_like(x)
    for lo in range(0, len(edges.dst), _CHUNK):
        dst, src = edges.dst[lo : lo + _CHUNK], edges.src[lo : lo + _CHUNK]
        w = edges.weight[lo : lo + _CHUNK].to(x.dtype).unsqueeze(1)
        drift.index_add_(0, dst, (x_hat[src] - x_hat[dst]) * w)
    return x + gamma * drift


def consensus_distances(x: torch.Tensor, public: torch.Tensor, edges: Edges) -> list[float]:
    """Per node i: sqrt(mean over its in-neighbours j of ||x_i − public_j||²) (`choco.consensus_distance`
    of every node); NaN for a node that mixed nobody."""
    total = torch.zeros(edges.n, dtype=torch.float64)
    count = torch.zeros(edges.n, dtype=torch.float64)
    for lo in range(0, len(edges.dst), _CHUNK):
        dst, src = edges.dst[lo : lo + _CHUNK], edges.src[lo : lo + _CHUNK]
        sq = (x[dst].double() - public[src].double()).pow(2).sum(dim=1)
        total.index_add_(0, dst, sq)
        count.index_add_(0, dst, torch.ones_like(sq))
    return [math.sqrt(t / c) if c else math.nan for t, c in zip(total.tolist(), count.tolist(), strict=True)]


def push_sum(
    y: torch.Tensor, s: torch.Tensor, sent: torch.Tensor, edges: Edges
) -> tuple[torch.Tensor, torch.Tensor]:
    """One push-sum step: (y', s') with y'_i = k_i y_i + Σ_{j -> i} k_j ỹ_j and s' likewise, where
    k = `edges.self_weight` is each node's share, `sent` the numerators as the receivers decode them
    (ỹ = y for a lossless codec) and `s` the float64 push-sum weights. Σ_i s_i and, losslessly,
    Σ_i y_i are kept: z = y / s tends to the plain average."""
    keep = edges.self_weight.to(y.dtype).unsqueeze(1)
    y_new = y * keep
    s_new = s * edges.self_weight
    for lo in range(0, len(edges.dst), _CHUNK):
        dst, src = edges.dst[lo : lo + _CHUNK], edges.src[lo : lo + _CHUNK]
        w = edges.weight[lo : lo + _CHUNK]
        y_new.index_add_(0, dst, sent[src] * w.to(y.dtype).unsqueeze(1))
        s_new.index_add_(0, dst, s[src] * w)
    return y_new, s_new
