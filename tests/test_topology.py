"""Topologies and Metropolis-Hastings mixing matrices."""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import pytest
import torch

from fedpeer.errors import ConfigError
from fedpeer.gossip.topology import KINDS, build_topology, load_graph_file, neighbours, spectral_gap
from fedpeer.gossip.weights import metropolis_hastings, mixing_matrix, neighbour_weights

# kind, n, options, expected sorted degree sequence (None: random, only checked for connectivity)
CASES = [
    ("ring", 2, {}, [1, 1]),
    ("ring", 5, {}, [2] * 5),
    ("complete", 4, {}, [3] * 4),
    ("star", 6, {}, [1] * 5 + [5]),
    ("torus", 9, {}, [4] * 9),
    ("torus", 12, {}, [4] * 12),
    ("erdos-renyi", 12, {"p": 0.3, "seed": 3}, None),
    ("random-regular", 10, {"degree": 3}, [3] * 10),
    ("watts-strogatz", 10, {"k": 4, "p": 0.3}, None),
    ("exponential", 8, {}, [5] * 8),  # hops ±1, ±2 and 4 (= -4)
    ("exponential", 16, {}, [7] * 16),
    ("explicit", 0, {"edges": [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]}, [1, 2, 2, 3]),
]
IDS = [f"{kind}-{n}" for kind, n, _, _ in CASES]


def test_every_kind_has_a_case() -> None:
    assert {kind for kind, *_ in CASES} == set(KINDS)


@pytest.mark.parametrize(("kind", "n", "options", "degrees"), CASES, ids=IDS)
def test_build_topology(kind: str, n: int, options: dict, degrees: list[int] | None) -> None:
    graph = build_topology(kind, n, **options)
    assert nx.is_connected(graph)
    assert nx.number_of_selfloops(graph) == 0
    if kind != "explicit":
        assert list(graph) == [f"node{i}" for i in range(n)]
    if degrees is not None:
        assert sorted(d for _, d in graph.degree) == degrees


@pytest.mark.parametrize("kind", ["erdos-renyi", "random-regular", "watts-strogatz"])
def test_random_kinds_are_reproducible(kind: str) -> None:
    a = build_topology(kind, 12, seed=7)
    b = build_topology(kind, 12, seed=7)
    c = build_topology(kind, 12, seed=8)
    assert set(a.edges) == set(b.edges)
    assert set(a.edges) != set(c.edges)


def test_torus_is_a_wrapped_grid() -> None:
    graph = build_topology("torus", 12)  # 3 x 4
    assert neighbours(graph, "node0") == ["node1", "node3", "node4", "node8"]


INVALID = [
    pytest.param("mesh", 4, {}, "valid kinds: ring, complete", id="unknown-kind"),
    pytest.param("ring", 1, {}, "n >= 2", id="too-few-nodes"),
    pytest.param("torus", 8, {}, "r x c", id="torus-not-grid"),
    pytest.param("torus", 7, {}, "r x c", id="torus-prime"),
    pytest.param("erdos-renyi", 30, {"p": 0.01}, "raise p", id="er-never-connected"),
    pytest.param("erdos-renyi", 5, {"p": 0.0}, "p must be", id="er-bad-p"),
    pytest.param("random-regular", 5, {"degree": 3}, "even", id="rr-odd-product"),
    pytest.param("random-regular", 4, {"degree": 4}, "degree < n", id="rr-degree-too-big"),
    pytest.param("random-regular", 6, {"degree": 1}, "2 <= degree", id="rr-degree-one"),
    pytest.param("watts-strogatz", 5, {"k": 5}, "k < n", id="ws-k-too-big"),
    pytest.param("watts-strogatz", 5, {"p": 1.5}, "p in", id="ws-bad-p"),
    pytest.param("explicit", 0, {"edges": [("a", "b"), ("c", "d")]}, "not connected", id="disconnected"),
    pytest.param("explicit", 0, {"edges": [("a", "a")]}, "itself", id="self-loop"),
    pytest.param("explicit", 0, {"edges": []}, "at least one edge", id="no-edges"),
    pytest.param("explicit", 0, {"edges": [("a", "b", "c")]}, "two non-empty", id="three-ids"),
]


@pytest.mark.parametrize(("kind", "n", "options", "message"), INVALID)
def test_invalid_topology(kind: str, n: int, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_topology(kind, n, **options)


def test_load_graph_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.txt"
    path.write_text(
        "# a triangle with a tail\nalpha beta\n\nbeta gamma  # inline comment\ngamma alpha\ngamma delta\n"
    )
    graph = load_graph_file(path)
    assert list(graph) == ["alpha", "beta", "gamma", "delta"]
    assert neighbours(graph, "gamma") == ["alpha", "beta", "delta"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a b\nb c d\n", r"mesh.txt:2: expected two node ids"),
        ("a b\nc d\n", "not connected"),
        ("# only comments\n", "at least one edge"),
        ("a\n", "mesh.txt:1"),
    ],
)
def test_load_graph_file_errors_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mesh.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_graph_file(path)


def test_load_missing_graph_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_graph_file(tmp_path / "nope.txt")


def test_neighbours_of_unknown_node() -> None:
    with pytest.raises(ConfigError, match="node9"):
        neighbours(build_topology("ring", 4), "node9")


# --- mixing matrices -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "n", "options", "degrees"), CASES, ids=IDS)
def test_mixing_matrix_is_symmetric_doubly_stochastic(
    kind: str, n: int, options: dict, degrees: object
) -> None:
    graph = build_topology(kind, n, **options)
    W, order = mixing_matrix(graph)
    assert order == list(graph)
    assert W.dtype == torch.float64
    assert torch.equal(W, W.T)
    assert (W >= 0).all()
    ones = torch.ones(len(order), dtype=torch.float64)
    assert torch.allclose(W @ ones, ones, atol=1e-12)
    assert torch.allclose(ones @ W, ones, atol=1e-12)
    # Zero exactly where there is no edge; positive on edges and on the diagonal.
    adjacency = torch.tensor(nx.to_numpy_array(graph, nodelist=order)) > 0
    assert torch.equal(W > 0, adjacency | torch.eye(len(order), dtype=torch.bool))
    gap = spectral_gap(W)
    assert 0.0 < gap <= 1.0 + 1e-12


def test_mixing_matrix_uses_metropolis_hastings() -> None:
    W, order = mixing_matrix(build_topology("star", 4))
    hub, leaf = order.index("node0"), order.index("node1")
    assert W[hub, leaf] == pytest.approx(1 / 4)
    assert W[hub, hub] == pytest.approx(1 - 3 / 4)
    assert W[leaf, leaf] == pytest.approx(3 / 4)


@pytest.mark.parametrize(("deg_i", "deg_j", "w"), [(1, 1, 0.5), (2, 2, 1 / 3), (2, 5, 1 / 6), (7, 3, 1 / 8)])
def test_metropolis_hastings(deg_i: int, deg_j: int, w: float) -> None:
    assert metropolis_hastings(deg_i, deg_j) == pytest.approx(w)
    assert metropolis_hastings(deg_j, deg_i) == pytest.approx(w)


def test_neighbour_weights_match_the_matrix_row() -> None:
    graph = build_topology("erdos-renyi", 10, seed=1)
    W, order = mixing_matrix(graph)
    node = "node3"
    row = neighbour_weights(graph.degree[node], {j: graph.degree[j] for j in neighbours(graph, node)})
    for j, w in row.items():
        assert W[order.index(node), order.index(j)].item() == pytest.approx(w)
    assert sum(row.values()) + W[order.index(node), order.index(node)].item() == pytest.approx(1.0)


# --- spectral gap --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 6, 9])
def test_spectral_gap_of_ring_matches_closed_form(n: int) -> None:
    # MH on a ring: W = (I + S + S^T) / 3 with eigenvalues (1 + 2 cos(2 pi m / n)) / 3.
    W, _ = mixing_matrix(build_topology("ring", n))
    eig = sorted((abs(1 + 2 * math.cos(2 * math.pi * m / n)) / 3 for m in range(1, n)), reverse=True)
    assert spectral_gap(W) == pytest.approx(1 - eig[0])


def test_spectral_gap_orders_topologies() -> None:
    gaps = {
        kind: spectral_gap(mixing_matrix(build_topology(kind, 16))[0])
        for kind in ("ring", "torus", "complete")
    }
    assert gaps["complete"] == pytest.approx(1.0)
    assert gaps["ring"] < gaps["torus"] < gaps["complete"]


def test_spectral_gap_rejects_asymmetric() -> None:
    with pytest.raises(ValueError, match="symmetric"):
        spectral_gap(torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
