"""Mesh topologies as networkx graphs with string node ids `node0 .. node{n-1}`.

Every builder returns a connected, simple, undirected graph whose nodes are inserted in index
order (so `list(graph)` is a stable node order) or raises ConfigError saying what to change.

`Schedule` adds the graphs only the simulation runner (`fedpeer.sim`) mixes over: a new graph every
round (a fresh random regular graph; the one-peer exponential schedule) and directed graphs (mixed by
push-sum), plus graph files, directed or not. `mixing_gap` gives 1 - |lambda_2| of any mixing matrix,
dense or sparse (thousands of nodes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch

from fedpeer.errors import ConfigError

__all__ = [
    "DIRECTED_KINDS",
    "DYNAMIC_KINDS",
    "KINDS",
    "SCHEDULE_KINDS",
    "Schedule",
    "build_schedule",
    "build_topology",
    "load_graph_file",
    "mixing_gap",
    "neighbours",
    "node_name",
    "spectral_gap",
]

# Random kinds are resampled with seed, seed+1, ... until connected; beyond this the parameters
# are hopeless (e.g. p far below ln(n)/n) and the user should change them.
_MAX_TRIES = 100


def node_name(i: int) -> str:
    return f"node{i}"


def build_topology(
    kind: str,
    n: int,
    *,
    seed: int = 0,
    degree: int = 3,
    p: float = 0.3,
    k: int = 4,
    edges: Sequence[tuple[str, str]] = (),
) -> nx.Graph:
    """Build a connected mesh graph of `n` nodes.

    `degree` is for random-regular, `p` for erdos-renyi (edge probability) and watts-strogatz
    (rewiring probability), `k` for watts-strogatz (ring neighbours), `edges` for explicit (whose
    nodes are those the edges name, in order of appearance; `n` is then ignored).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown topology {kind!r}; valid kinds: {', '.join(KINDS)}")
    if kind == "explicit":
        graph = _explicit(edges)
    else:
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ConfigError(f"topology {kind}: a mesh needs n >= 2 nodes, got {n!r}")
        graph = _canonical(n, _BUILDERS[kind](n, seed=seed, degree=degree, p=p, k=k))
    if not nx.is_connected(graph):
        raise ConfigError(f"topology {kind}: graph is not connected; add edges so every node is reachable")
    return graph


def _canonical(n: int, edges: Iterable[tuple[int, int]]) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(node_name(i) for i in range(n))
    graph.add_edges_from((node_name(a), node_name(b)) for a, b in edges if a != b)
    return graph


def _ring(n: int, **_: object) -> list[tuple[int, int]]:
    return [(i, (i + 1) % n) for i in range(n)]


def _complete(n: int, **_: object) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def _star(n: int, **_: object) -> list[tuple[int, int]]:
    return [(0, i) for i in range(1, n)]


def _torus(n: int, **_: object) -> list[tuple[int, int]]:
    # Most square r x c with both sides >= 3: smaller sides make wrapped edges coincide.
    rows = next((r for r in range(math.isqrt(n), 2, -1) if n % r == 0 and n // r >= 3), None)
    if rows is None:
        raise ConfigError(
            f"topology torus: n={n} is not r x c with r, c >= 3; use e.g. 9, 12, 16 or 20 nodes"
        )
    cols = n // rows
    edges = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            edges += [(i, r * cols + (c + 1) % cols), (i, ((r + 1) % rows) * cols + c)]
    return edges


def _exponential(n: int, **_: object) -> list[tuple[int, int]]:
    # Hops 1, 2, 4, ... below n: O(log n) degree with a diameter of O(log n).
    hops = [2**e for e in range((n - 1).bit_length())]
    return [(i, (i + h) % n) for i in range(n) for h in hops]


def _erdos_renyi(n: int, *, seed: int, p: float, **_: object) -> list[tuple[int, int]]:
    if not 0.0 < p <= 1.0:
        raise ConfigError(f"topology erdos-renyi: p must be in (0, 1], got {p}")
    return _connected_sample(
        "erdos-renyi",
        lambda s: nx.gnp_random_graph(n, p, seed=s),
        seed,
        f"raise p (connectivity needs p above about ln(n)/n = {math.log(n) / n:.3f})",
    )


def _random_regular(n: int, *, seed: int, degree: int, **_: object) -> list[tuple[int, int]]:
    if not 2 <= degree < n or (n * degree) % 2:
        raise ConfigError(
            f"topology random-regular: degree must satisfy 2 <= degree < n and n*degree even, "
            f"got degree={degree}, n={n}"
        )
    return _connected_sample(
        "random-regular", lambda s: nx.random_regular_graph(degree, n, seed=s), seed, "raise degree"
    )


def _watts_strogatz(n: int, *, seed: int, k: int, p: float, **_: object) -> list[tuple[int, int]]:
    if not 2 <= k < n or not 0.0 <= p <= 1.0:
        raise ConfigError(
            f"topology watts-strogatz: needs 2 <= k < n and p in [0, 1], got k={k}, n={n}, p={p}"
        )
    return _connected_sample(
        "watts-strogatz", lambda s: nx.watts_strogatz_graph(n, k, p, seed=s), seed, "raise k or lower p"
    )


def _connected_sample(
    kind: str, sample: Callable[[int], nx.Graph], seed: int, advice: str
) -> list[tuple[int, int]]:
    for attempt in range(_MAX_TRIES):
        graph = sample(seed + attempt)
        if nx.is_connected(graph):
            return list(graph.edges)
    raise ConfigError(
        f"topology {kind}: no connected graph in {_MAX_TRIES} samples from seed {seed}; {advice}"
    )


def _explicit(edges: Sequence[tuple[str, str]]) -> nx.Graph:
    graph = nx.Graph()
    for pos, edge in enumerate(edges):
        if len(edge) != 2 or not all(isinstance(v, str) and v for v in edge):
            raise ConfigError(f"topology explicit: edge {pos} {edge!r} must be two non-empty node ids")
        a, b = edge
        if a == b:
            raise ConfigError(f"topology explicit: edge {pos} links {a!r} to itself; remove it")
        graph.add_edge(a, b)
    if graph.number_of_nodes() < 2:
        raise ConfigError("topology explicit: give at least one edge between two nodes")
    return graph


# Generated kinds; "explicit" takes its edges from the caller.
_BUILDERS: dict[str, Callable[..., list[tuple[int, int]]]] = {
    "ring": _ring,
    "complete": _complete,
    "star": _star,
    "torus": _torus,
    "erdos-renyi": _erdos_renyi,
    "random-regular": _random_regular,
    "watts-strogatz": _watts_strogatz,
    "exponential": _exponential,
}
KINDS: tuple[str, ...] = (*_BUILDERS, "explicit")


def load_graph_file(path: str | Path, directed: bool = False) -> nx.Graph:
    """Read an edge list: one `a b` pair of node ids per line, `#` starts a comment. Directed: each
    line is an arc a -> b (a sends to b), and every node must reach every other one."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read graph file: {exc.strerror}") from None
    edges: list[tuple[str, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ConfigError(f"{path}:{lineno}: expected two node ids 'a b', got {line.strip()!r}")
        edges.append((fields[0], fields[1]))
    try:
        return _directed_explicit(edges) if directed else build_topology("explicit", 0, edges=edges)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def neighbours(graph: nx.Graph, node: str) -> list[str]:
    """Sorted neighbour ids of `node`."""
    if node not in graph:
        raise ConfigError(f"node {node!r} is not in the topology (nodes: {', '.join(map(str, graph))})")
    return sorted(graph.neighbors(node))


def spectral_gap(W: torch.Tensor) -> float:
    """1 - (second largest eigenvalue modulus) of a symmetric mixing matrix.

    Consensus error shrinks by roughly this factor per round: larger gaps mix faster.
    """
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"mixing matrix must be square, got shape {tuple(W.shape)}")
    W = W.to(torch.float64)
    if not torch.allclose(W, W.T, atol=1e-10):
        raise ValueError("mixing matrix must be symmetric")
    if W.shape[0] < 2:
        return 1.0
    moduli = torch.linalg.eigvalsh(W).abs().sort(descending=True).values
    return float(1.0 - moduli[1])


# ================================================================ sim-only: per-round and directed graphs
# A new graph every round (mixed as whole states: a receiver that was no neighbour last round holds no
# public copy to update), directed graphs (push-sum), and graph files.
DYNAMIC_KINDS = ("random-regular-dynamic", "one-peer-exponential")
DIRECTED_KINDS = ("directed-ring", "directed-exponential", "one-peer-exponential")
SCHEDULE_KINDS: tuple[str, ...] = (
    "random-regular-dynamic",
    "one-peer-exponential",
    "directed-ring",
    "directed-exponential",
    "file",
)


@dataclass(frozen=True)
class Schedule:
    """The mesh graph of each round. `graph(t)` is an nx.Graph (undirected: Metropolis-Hastings
    mixing) or an nx.DiGraph (arc a -> b: a sends to b; push-sum mixing) over `names`."""

    kind: str
    names: tuple[str, ...]
    directed: bool
    dynamic: bool  # a different graph each round
    seed: int = 0
    degree: int = 3
    fixed: Any = None  # the graph of every round, when not dynamic

    def graph(self, t: int) -> Any:
        """The graph of round t (1-based)."""
        if self.fixed is not None:
            return self.fixed
        n = len(self.names)
        if self.kind == "one-peer-exponential":
            return _digraph(n, [(i, (i + self.hop(t)) % n) for i in range(n)])
        # random-regular-dynamic: a connected random regular graph drawn from (seed, round)
        return _canonical(n, _random_regular(n, seed=self.seed + 1_000_003 * t, degree=self.degree))

    def hop(self, t: int) -> int:
        """one-peer-exponential: round t sends to the node 2^((t-1) mod log2 n) ahead."""
        period = max(1, (len(self.names) - 1).bit_length())
        return int(2 ** ((t - 1) % period))

    @property
    def period(self) -> int:
        """Rounds after which the graphs repeat (1 for a fixed graph, 0 for never)."""
        if self.kind == "one-peer-exponential":
            return max(1, (len(self.names) - 1).bit_length())
        return 0 if self.dynamic else 1

    def footprint(self) -> nx.Graph:
        """An undirected, connected graph over `names` standing for the schedule where a runner needs
        one graph (node lists, node configs): the union of the first period's graphs, without direction."""
        rounds = self.period or 1
        graph = nx.Graph()
        graph.add_nodes_from(self.names)
        for t in range(1, rounds + 1):
            graph.add_edges_from(self.graph(t).edges)
        return graph


def build_schedule(
    kind: str,
    n: int,
    *,
    seed: int = 0,
    degree: int = 3,
    edges: Sequence[tuple[str, str]] = (),
    graph_file: str | Path = "",
    directed: bool = False,
) -> Schedule:
    """The per-round graphs of `kind` (any of KINDS or SCHEDULE_KINDS) on `n` nodes. `graph_file`
    and `directed` are for kind "file"; the other options as for `build_topology`."""
    if kind == "file":
        if not graph_file:
            raise ConfigError('topology "file" needs graph_file = "edges.txt" (one `a b` pair per line)')
        graph = load_graph_file(graph_file, directed=directed)
        return Schedule(kind, tuple(graph), directed, False, seed, degree, nx.freeze(graph))
    if kind in KINDS:
        graph = build_topology(kind, n, seed=seed, degree=degree, edges=edges)
        return Schedule(kind, tuple(graph), False, False, seed, degree, nx.freeze(graph))
    if kind not in SCHEDULE_KINDS:
        raise ConfigError(f"unknown topology {kind!r}; valid kinds: {', '.join((*KINDS, *SCHEDULE_KINDS))}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"topology {kind}: a mesh needs n >= 2 nodes, got {n!r}")
    names = tuple(node_name(i) for i in range(n))
    if kind == "directed-ring":
        return Schedule(
            kind,
            names,
            True,
            False,
            seed,
            degree,
            nx.freeze(_digraph(n, [(i, (i + 1) % n) for i in range(n)])),
        )
    if kind == "directed-exponential":
        hops = [2**e for e in range((n - 1).bit_length())]
        arcs = [(i, (i + h) % n) for i in range(n) for h in hops]
        return Schedule(kind, names, True, False, seed, degree, nx.freeze(_digraph(n, arcs)))
    schedule = Schedule(kind, names, kind in DIRECTED_KINDS, True, seed, degree)
    schedule.graph(1)  # a random-regular degree that cannot work fails now, not in round 1
    return schedule


def _digraph(n: int, arcs: Iterable[tuple[int, int]]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(node_name(i) for i in range(n))
    graph.add_edges_from((node_name(a), node_name(b)) for a, b in arcs if a != b)
    return graph


def _directed_explicit(edges: Sequence[tuple[str, str]]) -> nx.DiGraph:
    graph = nx.DiGraph()
    for pos, (a, b) in enumerate(edges):
        if a == b:
            raise ConfigError(f"topology file: arc {pos} links {a!r} to itself; remove it")
        graph.add_edge(a, b)
    if graph.number_of_nodes() < 2:
        raise ConfigError("topology file: give at least one arc between two nodes")
    if not nx.is_strongly_connected(graph):
        raise ConfigError(
            "topology file: the directed graph is not strongly connected (some node cannot reach "
            "another); add arcs so that every node reaches every other one"
        )
    return graph


# Above this many nodes the gap comes from sparse (ARPACK) eigensolvers instead of a dense solve.
_DENSE_GAP_MAX = 512


def mixing_gap(W: Any) -> float:
    """1 - |lambda_2| for a row- or column-stochastic mixing matrix W (torch/numpy dense, or scipy
    sparse): |lambda_2| is the largest eigenvalue modulus once the eigenvalue 1 is left out, the
    rate at which consensus error shrinks per round (symmetric or not, e.g. push-sum's). Dense solve
    up to 512 nodes, ARPACK beyond."""
    import scipy.sparse as sp

    n = W.shape[0]
    if n < 2:
        return 1.0
    if n <= _DENSE_GAP_MAX or not sp.issparse(W):
        dense = W.toarray() if sp.issparse(W) else np.asarray(W, dtype=np.float64)
        moduli = np.sort(np.abs(np.linalg.eigvals(dense)))[::-1]
        return float(1.0 - moduli[1])
    from scipy.sparse.linalg import eigs, eigsh

    W = sp.csr_matrix(W, dtype=np.float64)
    symmetric = abs(W - W.T).max() < 1e-12
    solve = eigsh if symmetric else eigs
    try:
        values = solve(W, k=min(6, n - 2), which="LM", return_eigenvectors=False, tol=1e-10, maxiter=100_000)
    except Exception:  # noqa: BLE001 - ARPACK did not converge: no gap rather than a wrong one
        return float("nan")
    moduli = np.sort(np.abs(values))[::-1]
    return float(1.0 - moduli[1])
