"""Per-round and directed topologies (`Schedule`), graph files, and spectral gaps of any mixing matrix."""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import pytest
import torch

from fedpeer.errors import ConfigError
from fedpeer.gossip.topology import build_schedule, build_topology, load_graph_file, mixing_gap, spectral_gap
from fedpeer.gossip.weights import mixing_matrix
from fedpeer.sim.mixing import mh_edges, push_sum_edges
from fedpeer.sim.spectral import gap_report, sparse_matrix


def test_fixed_kinds_give_their_graph_every_round() -> None:
    s = build_schedule("torus", 9)
    assert not s.directed and not s.dynamic and s.period == 1
    assert set(s.graph(1).edges) == set(s.graph(7).edges) == set(build_topology("torus", 9).edges)


def test_random_regular_dynamic_draws_a_new_reproducible_graph_each_round() -> None:
    a, b = (
        build_schedule("random-regular-dynamic", 12, seed=3),
        build_schedule("random-regular-dynamic", 12, seed=3),
    )
    assert a.dynamic and not a.directed and a.period == 0
    graphs = [a.graph(t) for t in (1, 2, 3)]
    assert all(sorted(d for _, d in g.degree) == [3] * 12 and nx.is_connected(g) for g in graphs)
    assert set(graphs[0].edges) != set(graphs[1].edges)
    assert set(a.graph(2).edges) == set(b.graph(2).edges)


@pytest.mark.parametrize(("n", "hops"), [(8, [1, 2, 4, 1]), (6, [1, 2, 4, 1]), (2, [1, 1])])
def test_one_peer_exponential_cycles_through_powers_of_two(n: int, hops: list[int]) -> None:
    s = build_schedule("one-peer-exponential", n)
    assert s.directed and s.dynamic
    for t, h in enumerate(hops, start=1):
        g = s.graph(t)
        assert all(g.out_degree[v] == 1 for v in g)
        assert g.has_edge("node0", f"node{h % n}")


def test_directed_kinds() -> None:
    ring = build_schedule("directed-ring", 5).graph(1)
    assert (
        isinstance(ring, nx.DiGraph)
        and ring.has_edge("node4", "node0")
        and not ring.has_edge("node0", "node4")
    )
    exp = build_schedule("directed-exponential", 8).graph(1)
    assert sorted(exp.successors("node0")) == ["node1", "node2", "node4"]
    assert nx.is_strongly_connected(exp)


def test_footprint_is_undirected_and_connected() -> None:
    for kind in ("directed-ring", "one-peer-exponential", "random-regular-dynamic"):
        g = build_schedule(kind, 8).footprint()
        assert isinstance(g, nx.Graph) and not g.is_directed() and nx.is_connected(g), kind
        assert list(g) == [f"node{i}" for i in range(8)]


def test_directed_graph_file(tmp_path: Path) -> None:
    path = tmp_path / "arcs.txt"
    path.write_text("# a 3-cycle and a back arc\na b\nb c\nc a\nc b\n")
    g = load_graph_file(path, directed=True)
    assert isinstance(g, nx.DiGraph) and g.has_edge("c", "b") and not g.has_edge("a", "c")
    s = build_schedule("file", 0, graph_file=path, directed=True)
    assert s.directed and not s.dynamic and s.names == ("a", "b", "c")
    undirected = build_schedule("file", 0, graph_file=path)
    assert not undirected.directed and undirected.graph(1).has_edge("a", "c")


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("file", {}, "needs graph_file"),
        ("file", {"graph_file": "/nonexistent/arcs.txt"}, "cannot read"),
        ("random-regular-dynamic", {"degree": 3, "n": 5}, "even"),
        ("one-peer-exponential", {"n": 1}, "n >= 2"),
        ("moebius", {}, "valid kinds: .*one-peer-exponential"),
    ],
)
def test_schedule_errors_say_what_to_change(kind: str, options: dict, message: str) -> None:
    n = options.pop("n", 8)
    with pytest.raises(ConfigError, match=message):
        build_schedule(kind, n, **options)


def test_a_directed_file_that_is_not_strongly_connected_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "arcs.txt"
    path.write_text("a b\nb c\n")
    with pytest.raises(ConfigError, match="strongly connected"):
        load_graph_file(path, directed=True)


# --- spectral gaps -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ring", "torus", "star", "exponential"])
def test_mixing_gap_equals_spectral_gap_on_symmetric_matrices(kind: str) -> None:
    W, _ = mixing_matrix(build_topology(kind, 16))
    assert mixing_gap(W.numpy()) == pytest.approx(spectral_gap(W), abs=1e-9)


def test_sparse_gap_of_a_large_ring_matches_the_closed_form() -> None:
    n = 600  # above the dense limit: ARPACK on the sparse Metropolis-Hastings matrix
    s = build_schedule("ring", n)
    expected = 1 - (1 + 2 * math.cos(2 * math.pi / n)) / 3
    assert mixing_gap(sparse_matrix(mh_edges(s.graph(1), list(s.names)))) == pytest.approx(expected, rel=1e-4)


def test_push_sum_gap_of_a_directed_ring() -> None:
    # P = (I + S)/2: eigenvalues (1 + e^{2 pi i m/n})/2, modulus |cos(pi m/n)|.
    n = 7
    s = build_schedule("directed-ring", n)
    report = gap_report(s)
    assert report.gap == pytest.approx(1 - math.cos(math.pi / n), abs=1e-9)
    dense = sparse_matrix(push_sum_edges(s.graph(1), list(s.names))).toarray()
    assert dense.sum(axis=0) == pytest.approx([1.0] * n)  # column-stochastic


@pytest.mark.parametrize(("n", "exact"), [(16, True), (12, False)])
def test_one_peer_exponential_gap_is_one_for_powers_of_two(n: int, exact: bool) -> None:
    report = gap_report(build_schedule("one-peer-exponential", n))
    # Cross-check against the dense product of one period's matrices.
    s = build_schedule("one-peer-exponential", n)
    product = torch.eye(n, dtype=torch.float64)
    for t in range(1, s.period + 1):
        product = torch.tensor(sparse_matrix(push_sum_edges(s.graph(t), list(s.names))).toarray()) @ product
    moduli = torch.linalg.eigvals(product).abs().sort(descending=True).values
    assert (1 - report.gap) ** s.period == pytest.approx(float(moduli[1]), abs=1e-9)
    assert (report.gap == pytest.approx(1.0)) is exact
    assert ("exact average" in report.line("x")) is exact
