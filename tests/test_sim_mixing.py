"""The sim's vectorized mixing against the per-node CHOCO code and against numpy references."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch

from fedpeer.gossip import choco
from fedpeer.gossip.topology import build_schedule, build_topology
from fedpeer.gossip.weights import neighbour_weights
from fedpeer.sim.mixing import choco_mix, consensus_distances, mh_edges, push_sum, push_sum_edges


def _rows(n: int, p: int, seed: int) -> torch.Tensor:
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "pi-weighted"])
def test_vectorized_mix_equals_choco_mix_node_by_node(weighted: bool) -> None:
    graph = build_topology("erdos-renyi", 9, seed=2, p=0.4)
    names = list(graph)
    n, p = len(names), 37
    x, x_hat = _rows(n, p, 0), _rows(n, p, 1)
    pis = [1.0 + i / 3 for i in range(n)] if weighted else [1.0] * n
    gamma = 0.7
    edges = mh_edges(graph, names, pis if weighted else None)
    mixed = choco_mix(x, x_hat, edges, gamma)
    distances = consensus_distances(mixed, x_hat, edges)
    for i, name in enumerate(names):
        peers = sorted(graph.neighbors(name))
        w = neighbour_weights(
            graph.degree[name],
            {j: graph.degree[j] for j in peers},
            pis[i],
            {j: pis[names.index(j)] for j in peers},
        )
        heard = {j: {"t": x_hat[names.index(j)]} for j in peers}
        expected = choco.mix({"t": x[i]}, {"t": x_hat[i]}, heard, w, gamma)["t"]
        torch.testing.assert_close(mixed[i], expected, atol=1e-6, rtol=0)
        assert distances[i] == pytest.approx(choco.consensus_distance({"t": mixed[i]}, heard), rel=1e-9)


def test_lossless_mix_with_gamma_one_is_w_times_x() -> None:
    graph = build_topology("random-regular", 10, seed=4)
    names = list(graph)
    x = _rows(10, 5, 3)
    w = nx.to_numpy_array(graph, nodelist=names)
    deg = w.sum(axis=1)
    for a in range(10):
        for b in range(10):
            if w[a, b]:
                w[a, b] = 1.0 / (1 + max(deg[a], deg[b]))
    w += np.diag(1.0 - w.sum(axis=1))
    mixed = choco_mix(x, x, mh_edges(graph, names), 1.0)
    np.testing.assert_allclose(mixed.double().numpy(), w @ x.double().numpy(), atol=1e-6)


def numpy_push_sum(arcs: list[tuple[int, int]], n: int, x0: np.ndarray, rounds: int) -> np.ndarray:
    """Push-sum from the arcs alone: P[j, i] = 1/(outdeg_i + 1) for i -> j and i = j."""
    outdeg = np.zeros(n)
    for a, _ in arcs:
        outdeg[a] += 1
    p = np.diag(1.0 / (outdeg + 1))
    for a, b in arcs:
        p[b, a] = 1.0 / (outdeg[a] + 1)
    y, s = x0.copy(), np.ones(n)
    for _ in range(rounds):
        y, s = p @ y, p @ s
    return y / s[:, None]


def test_push_sum_on_a_directed_graph_reaches_the_exact_average() -> None:
    # A strongly connected digraph whose nodes have different out-degrees: its column-stochastic
    # matrix is not row-stochastic, so plain averaging over in-neighbours would be skewed.
    arcs = [(0, 1), (1, 2), (2, 0), (0, 3), (3, 4), (4, 0), (1, 4), (2, 4), (4, 5), (5, 2), (0, 5)]
    n = 6
    graph = nx.DiGraph()
    graph.add_nodes_from(f"node{i}" for i in range(n))
    graph.add_edges_from((f"node{a}", f"node{b}") for a, b in arcs)
    names = list(graph)
    x0 = _rows(n, 8, 5).double()
    edges = push_sum_edges(graph, names)
    y, s = x0.clone(), torch.ones(n, dtype=torch.float64)
    for rounds in range(1, 201):
        y, s = push_sum(y, s, y, edges)
        if rounds == 5:
            np.testing.assert_allclose(
                (y / s.unsqueeze(1)).numpy(), numpy_push_sum(arcs, n, x0.numpy(), 5), atol=1e-12
            )
    z = (y / s.unsqueeze(1)).numpy()
    average = x0.numpy().mean(axis=0)
    np.testing.assert_allclose(z, np.broadcast_to(average, z.shape), atol=1e-9)
    assert s.sum().item() == pytest.approx(n)
    # Row-normalised mixing over the same arcs (each node averages itself and its in-neighbours)
    # converges, but not to the average: what push-sum's weights correct.
    a = np.eye(n)
    for i, j in arcs:
        a[j, i] = 1.0
    row = a / a.sum(axis=1, keepdims=True)
    skewed = np.linalg.matrix_power(row, 400) @ x0.numpy()
    assert np.abs(skewed[0] - average).max() > 1e-3


@pytest.mark.parametrize("n", [8, 16, 64])
def test_one_peer_exponential_reaches_exact_consensus_in_log2_n_rounds(n: int) -> None:
    schedule = build_schedule("one-peer-exponential", n)
    names = list(schedule.names)
    x0 = _rows(n, 6, n)
    average = x0.double().mean(dim=0)
    y, s = x0.clone(), torch.ones(n, dtype=torch.float64)
    k = int(math.log2(n))
    for t in range(1, k + 1):
        edges = push_sum_edges(schedule.graph(t), names)
        assert all(len(edges.in_neighbours(i)) == 1 for i in range(n))  # one peer per round
        y, s = push_sum(y, s, y, edges)
        z = y.double() / s.unsqueeze(1)
        spread = (z - average).abs().max().item()
        if t < k:
            assert spread > 1e-3, f"consensus already after {t} < log2(n) rounds"
    assert spread < 1e-6
    torch.testing.assert_close(s, torch.ones(n, dtype=torch.float64))  # doubly stochastic: s stays 1
