"""CHOCO-Gossip: N nodes simulated in one process, checked against plain-torch W^k X."""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import pytest
import torch

from fedpeer.codec import DecodeLimits, get_codec, manifest_of
from fedpeer.gossip import choco
from fedpeer.gossip.topology import build_topology, neighbours
from fedpeer.gossip.weights import mixing_matrix

State = dict[str, torch.Tensor]
Compressor = Callable[[State], State]
SHAPES = {"lora_B": (4, 3), "bias": (5,), "head": (2, 2, 2)}


def _initial(order: list[str], seed: int = 0) -> dict[str, State]:
    gen = torch.Generator().manual_seed(seed)
    return {i: {k: torch.randn(s, generator=gen) for k, s in SHAPES.items()} for i in order}


def _row_weights(graph: nx.Graph) -> dict[str, dict[str, float]]:
    W, order = mixing_matrix(graph)
    pos = {node: p for p, node in enumerate(order)}
    return {i: {j: W[pos[i], pos[j]].item() for j in neighbours(graph, i)} for i in order}


def _identity(q: State) -> State:
    return {k: t.clone() for k, t in q.items()}


def _top_k(q: State, fraction: float = 0.25) -> State:
    """Biased compressor: keep the largest `fraction` of entries of each tensor, zero the rest."""
    out = {}
    for k, t in q.items():
        flat = t.reshape(-1)
        keep = flat.abs().topk(max(1, int(fraction * flat.numel()))).indices
        sparse = torch.zeros_like(flat)
        sparse[keep] = flat[keep]
        out[k] = sparse.reshape(t.shape)
    return out


def _choco(
    graph: nx.Graph, x: dict[str, State], compress: Compressor, gamma: float, rounds: int
) -> dict[str, State]:
    """Steps 2-5 of the module docstring on every node (no training)."""
    weights = _row_weights(graph)
    x_hat = {i: choco.zeros_like(x[i]) for i in x}
    for _ in range(rounds):
        # Every node applies the same compressed q to its copy of node i, the sender included.
        sent = {i: compress(choco.difference(x[i], x_hat[i])) for i in x}
        for i, q in sent.items():
            choco.add_(x_hat[i], q)
        x = {i: choco.mix(x[i], x_hat[i], {j: x_hat[j] for j in weights[i]}, weights[i], gamma) for i in x}
    return x


def _naive(
    graph: nx.Graph, x: dict[str, State], compress: Compressor, gamma: float, rounds: int
) -> dict[str, State]:
    """Compressed gossip without public copies: x_i += γ Σ_j w_ij (Q(x_j) - Q(x_i))."""
    weights = _row_weights(graph)
    for _ in range(rounds):
        sent = {i: compress(x[i]) for i in x}
        x = {
            i: {
                k: x[i][k] + gamma * sum(w * (sent[j][k] - sent[i][k]) for j, w in weights[i].items())
                for k in x[i]
            }
            for i in x
        }
    return x


def _mean(x: dict[str, State]) -> State:
    return {k: torch.stack([s[k] for s in x.values()]).mean(0) for k in SHAPES}


def _distance_to(x: dict[str, State], target: State) -> float:
    return sum(float((s[k] - target[k]).pow(2).sum()) for s in x.values() for k in target) ** 0.5


# --- (a) exact codec, gamma = 1: plain gossip x <- W x -------------------------------------------


@pytest.mark.parametrize("kind", ["ring", "complete"])
@pytest.mark.parametrize("n", [4, 5])
@pytest.mark.parametrize("rounds", [1, 3, 8])
def test_exact_choco_is_matrix_power_gossip(kind: str, n: int, rounds: int) -> None:
    graph = build_topology(kind, n)
    W, order = mixing_matrix(graph)
    x0 = _initial(order, seed=n * 10 + rounds)
    x = _choco(graph, x0, _identity, gamma=1.0, rounds=rounds)
    Wk = torch.linalg.matrix_power(W, rounds)
    for key in SHAPES:
        X0 = torch.stack([x0[i][key].reshape(-1) for i in order]).double()
        expected = Wk @ X0
        for p, i in enumerate(order):
            torch.testing.assert_close(x[i][key].reshape(-1).double(), expected[p], rtol=0, atol=1e-5)


def test_exact_choco_first_round_differs_from_no_mixing() -> None:
    """Guards the test above: one round really moves the states."""
    graph = build_topology("ring", 4)
    x0 = _initial(list(graph))
    x1 = _choco(graph, x0, _identity, gamma=1.0, rounds=1)
    assert _distance_to(x1, _mean(x0)) < 0.9 * _distance_to(x0, _mean(x0))


# --- (b) lossy compressor: CHOCO converges, naive compressed gossip does not ----------------------


def test_choco_with_top_k_reaches_the_average_where_naive_gossip_stalls() -> None:
    graph = build_topology("ring", 6)
    x0 = _initial(list(graph), seed=3)
    average = _mean(x0)
    start = _distance_to(x0, average)

    choco_x = _choco(graph, x0, _top_k, gamma=0.3, rounds=100)
    naive_x = _naive(graph, x0, _top_k, gamma=0.3, rounds=100)

    for key, value in _mean(choco_x).items():
        torch.testing.assert_close(value, average[key], rtol=0, atol=1e-5)
    choco_err, naive_err = _distance_to(choco_x, average), _distance_to(naive_x, average)
    assert choco_err < 1e-3 * start
    assert naive_err > 0.1 * start
    assert naive_err > 100 * choco_err


def test_choco_with_fp16_codec_converges() -> None:
    """The real codec as Q; the sender applies the decoded q to its own public copy, as neighbours do."""
    graph = build_topology("complete", 4)
    weights = _row_weights(graph)
    codec, limits = get_codec("fp16"), DecodeLimits()
    x = _initial(list(graph), seed=5)
    average = _mean(x)
    x_hat = {i: choco.zeros_like(x[i]) for i in x}
    for _ in range(20):
        for i in x:
            q = choco.difference(x[i], x_hat[i])
            enc = codec.encode(q)
            choco.add_(x_hat[i], codec.decode(enc.payload, manifest_of(q), enc.params, limits))
        x = {i: choco.mix(x[i], x_hat[i], {j: x_hat[j] for j in weights[i]}, weights[i], 1.0) for i in x}
    assert _distance_to(x, average) < 1e-4 * _distance_to(_initial(list(graph), seed=5), average)


# --- (c) absent neighbours and the mix formula ---------------------------------------------------


def _states(seed: int, *names: str) -> dict[str, State]:
    return _initial(list(names), seed)


def test_mix_matches_formula_and_absent_neighbour_drops_out() -> None:
    s = _states(7, "x", "self", "a", "b")
    weights = {"a": 0.25, "b": 0.2}
    gamma = 0.6
    full = choco.mix(s["x"], s["self"], {"a": s["a"], "b": s["b"]}, weights, gamma)
    only_a = choco.mix(s["x"], s["self"], {"a": s["a"]}, weights, gamma)
    for k in SHAPES:
        drift_a = 0.25 * (s["a"][k] - s["self"][k])
        drift_b = 0.2 * (s["b"][k] - s["self"][k])
        torch.testing.assert_close(full[k], s["x"][k] + gamma * (drift_a + drift_b))
        torch.testing.assert_close(only_a[k], s["x"][k] + gamma * drift_a)
    assert not torch.allclose(full["bias"], only_a["bias"])


def test_mix_without_neighbours_returns_a_copy() -> None:
    s = _states(8, "x", "self")
    out = choco.mix(s["x"], s["self"], {}, {}, 0.5)
    for k in SHAPES:
        assert torch.equal(out[k], s["x"][k])
        assert out[k] is not s["x"][k]


def test_mix_does_not_mutate_inputs() -> None:
    s = _states(9, "x", "self", "a")
    before = {name: {k: t.clone() for k, t in st.items()} for name, st in s.items()}
    out = choco.mix(s["x"], s["self"], {"a": s["a"]}, {"a": 0.5}, 1.0)
    out["bias"].add_(100.0)
    for name, st in s.items():
        for k in SHAPES:
            assert torch.equal(st[k], before[name][k])


@pytest.mark.parametrize(
    ("neighbour_state", "weights", "gamma", "message"),
    [
        pytest.param({"bias": torch.zeros(5)}, {"a": 0.5}, 1.0, "missing", id="missing-key"),
        pytest.param(None, {}, 1.0, "no mixing weight", id="missing-weight"),
        pytest.param(None, {"a": 0.5}, 1.5, "gamma", id="gamma-too-big"),
        pytest.param(None, {"a": 0.5}, -0.1, "gamma", id="gamma-negative"),
    ],
)
def test_mix_refuses(
    neighbour_state: State | None, weights: dict[str, float], gamma: float, message: str
) -> None:
    s = _states(10, "x", "self", "a")
    with pytest.raises(ValueError, match=message):
        choco.mix(s["x"], s["self"], {"a": neighbour_state or s["a"]}, weights, gamma)


# --- difference, add_, consensus_distance --------------------------------------------------------


def test_difference_and_add_round_trip() -> None:
    s = _states(11, "x", "hat")
    hat_before = {k: t.clone() for k, t in s["hat"].items()}
    q = choco.difference(s["x"], s["hat"])
    for k in SHAPES:
        torch.testing.assert_close(q[k], s["x"][k] - hat_before[k])
        assert torch.equal(s["hat"][k], hat_before[k])
    choco.add_(s["hat"], q)
    for k in SHAPES:
        torch.testing.assert_close(s["hat"][k], s["x"][k])


def test_add_accepts_other_dtype_in_place() -> None:
    hat = {"w": torch.zeros(3)}
    tensor = hat["w"]
    choco.add_(hat, {"w": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)})
    assert hat["w"] is tensor and tensor.dtype == torch.float32
    assert tensor.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("q", "message"),
    [
        pytest.param({"w": torch.zeros(3), "extra": torch.zeros(1)}, "unexpected", id="extra-key"),
        pytest.param({}, "missing", id="missing-key"),
        pytest.param({"w": torch.zeros(4)}, "shape", id="wrong-shape"),
    ],
)
def test_add_refuses_mismatch(q: State, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choco.add_({"w": torch.zeros(3)}, q)


def test_consensus_distance() -> None:
    x = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}
    near = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}  # squared distance 9
    far = {"a": torch.tensor([0.0, 6.0]), "b": torch.tensor([0.0])}  # squared distance 1 + 16
    assert choco.consensus_distance(x, {"n": near, "f": far}) == pytest.approx(((9 + 17) / 2) ** 0.5)
    assert choco.consensus_distance(x, {}) == 0.0
