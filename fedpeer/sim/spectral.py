"""The spectral gap of a scenario's graphs: 1 - |lambda_2| of the mixing matrix each round uses.

Consensus error shrinks by about (1 - gap) per round. A fixed undirected graph has its
Metropolis-Hastings matrix, a directed one push-sum's column-stochastic matrix. The one-peer
exponential schedule alone mixes nothing in a round (each node hears one peer), so its gap is that of
a whole period of log2(n) rounds, given per round: 1 for n = 2^k (exact average every period). A new
random graph each round: the gap of round 1's graph.
"""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass

import numpy as np

from fedpeer.gossip.topology import Schedule, mixing_gap
from fedpeer.sim.mixing import Edges, mh_edges, push_sum_edges

__all__ = ["GapReport", "gap_report", "sparse_matrix"]


@dataclass(frozen=True)
class GapReport:
    gap: float  # per round; NaN when it could not be computed
    matrix: str  # which matrix
    note: str = ""

    def line(self, name: str) -> str:
        value = "not computed" if math.isnan(self.gap) else f"{self.gap:.4g}"
        note = f"; {self.note}" if self.note else ""
        return f"spectral gap of {name}: {value} ({self.matrix}{note})"

    def to_json(self) -> dict[str, object]:
        return {
            "spectral_gap": None if math.isnan(self.gap) else self.gap,
            "matrix": self.matrix,
            "note": self.note,
        }


def sparse_matrix(edges: Edges) -> object:
    """The round's mixing matrix M (x <- M x) as a scipy CSR matrix."""
    import scipy.sparse as sp

    rows = np.concatenate([edges.dst.numpy(), np.arange(edges.n)])
    cols = np.concatenate([edges.src.numpy(), np.arange(edges.n)])
    vals = np.concatenate([edges.weight.numpy(), edges.self_weight.numpy()])
    return sp.csr_matrix((vals, (rows, cols)), shape=(edges.n, edges.n))


def gap_report(schedule: Schedule) -> GapReport:
    names = list(schedule.names)
    if schedule.kind == "one-peer-exponential":
        return GapReport(
            _one_peer_gap(len(names), [schedule.hop(t) for t in range(1, schedule.period + 1)]),
            f"(I + shift)/2 per round, over a period of {schedule.period} rounds",
            "exact average every period" if len(names) & (len(names) - 1) == 0 else "",
        )
    graph = schedule.graph(1)
    if schedule.directed:
        return GapReport(
            mixing_gap(sparse_matrix(push_sum_edges(graph, names))), "push-sum, column-stochastic"
        )
    gap = mixing_gap(sparse_matrix(mh_edges(graph, names)))
    note = "a new graph every round; this is round 1's" if schedule.dynamic else ""
    return GapReport(gap, "Metropolis-Hastings", note)


def _one_peer_gap(n: int, hops: list[int]) -> float:
    """Per-round gap of the product of (I + S^h)/2 over one period: the matrices are circulant, so
    mode m of the product has eigenvalue prod_h (1 + e^{2 pi i m h / n}) / 2."""
    if n < 2:
        return 1.0
    worst = max(
        abs(math.prod((1 + cmath.exp(2j * math.pi * m * h / n)) / 2 for h in hops)) for m in range(1, n)
    )
    # n = 2^k: the product is exactly the averaging matrix; floating noise (1e-16) is not a rate.
    return 1.0 if worst < 1e-12 else 1.0 - worst ** (1.0 / len(hops))
