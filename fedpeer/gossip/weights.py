"""Metropolis-Hastings mixing weights.

w_ij = 1 / (1 + max(d_i, d_j)) needs only the two endpoint degrees, so each node computes its own
row from the degrees its neighbours announce in the handshake; the resulting W is symmetric and
doubly stochastic for any undirected graph, which keeps the mesh average invariant.
"""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx
import torch

__all__ = ["metropolis_hastings", "mixing_matrix", "neighbour_weights"]


def metropolis_hastings(deg_i: int, deg_j: int) -> float:
    """Weight of the edge between nodes of degrees `deg_i` and `deg_j`."""
    if deg_i < 1 or deg_j < 1:
        raise ValueError(f"degrees of linked nodes must be >= 1, got {deg_i} and {deg_j}")
    return 1.0 / (1 + max(deg_i, deg_j))


def neighbour_weights(
    degree: int,
    neighbour_degrees: Mapping[str, int],
    pi: float = 1.0,
    neighbour_pis: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Row i of W without the self weight: {neighbour id: w_ij}, Metropolis-Hastings towards the
    target distribution pi (uniform by default): w_ij = min(1, pi_j / pi_i) / (1 + max(d_i, d_j)).
    Detailed balance (pi_i w_ij = pi_j w_ji) keeps sum_i pi_i x_i unchanged by mixing, so the mesh
    converges to the pi-weighted average. A neighbour left out of the row (not heard this round)
    keeps its weight with node i."""
    pis = neighbour_pis or {}
    return {
        j: metropolis_hastings(degree, d) * min(1.0, pis.get(j, pi) / pi)
        for j, d in neighbour_degrees.items()
    }


def mixing_matrix(graph: nx.Graph) -> tuple[torch.Tensor, list[str]]:
    """Dense float64 W over `list(graph)` order, self weight 1 - sum of the row's edge weights."""
    order = list(graph)
    index = {node: i for i, node in enumerate(order)}
    W = torch.zeros(len(order), len(order), dtype=torch.float64)
    for a, b in graph.edges:
        if a == b:
            raise ValueError(f"node {a!r} has a self-loop; mesh graphs must be simple")
        W[index[a], index[b]] = W[index[b], index[a]] = metropolis_hastings(graph.degree[a], graph.degree[b])
    W += torch.diag(1.0 - W.sum(dim=1))
    return W, order
