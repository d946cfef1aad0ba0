"""The simulation runner: one shared base model, nodes as stacked states.

Checked against numpy references (x <- W^k x0 with lr 0; push-sum on a directed graph), against the
process runner on the same scenario (every adapter to 1e-6, lr 0 and lr > 0), and through the CLI."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
import torch
from fedpeer_cli.main import app
from typer.testing import CliRunner

from fedpeer import checkpoint
from fedpeer.gossip.watch import GROWTH_ROUNDS
from fedpeer.metrics import read_records
from fedpeer.node import build_node, state
from fedpeer.report import load_run
from fedpeer.scenario.runner import ProcessRunner, prepare_for_processes
from fedpeer.sim import mesh as sim_mesh
from fedpeer.sim.mesh import SimMesh
from fedpeer.sim.runner import SIM_FILE, prepare_for_sim, run_prepared
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from tests.meshutil import IRREGULAR6 as EDGES
from tests.meshutil import tiny_spec
from tests.test_sim_mixing import numpy_push_sum

ROUNDS = 3


def spec_of(lr: float = 0.0, **sections):
    base = {
        "nodes": 6,
        "topology": "explicit",
        "edges": EDGES,
        "model": {"task": "causal-lm", "dropout": False},
        "train": {"lr": lr, "steps_per_round": 2},
        "codec": {"name": "lossless"},
        "gossip": {"rounds": ROUNDS, "gamma": 1.0, "round_timeout_s": 60.0, "join_timeout_s": 60.0},
    }
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return tiny_spec(**base)


def numpy_w(names: list[str]) -> np.ndarray:
    """Metropolis-Hastings W from the edge list alone (independent of fedpeer's gossip code)."""
    g = nx.Graph([tuple(e) for e in EDGES])
    w = np.zeros((len(names), len(names)))
    for a, b in g.edges:
        i, j = names.index(a), names.index(b)
        w[i, j] = w[j, i] = 1.0 / (1 + max(g.degree[a], g.degree[b]))
    return w + np.diag(1.0 - w.sum(axis=1))


def random_rows(mesh: SimMesh, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(mesh.x.shape, generator=torch.Generator().manual_seed(seed))


def test_lr0_sim_mixes_exactly_w_power_x0_and_writes_node_metrics(tmp_path):
    prepared = prepare_for_sim(spec_of(lr=0.0), tmp_path)
    mesh = SimMesh(prepared)
    x0 = random_rows(mesh)
    local0 = mesh.local.clone()
    mesh.set_global_states(x0)
    lines: list[str] = []
    rows, mesh = run_prepared(prepared, echo=lines.append, mesh=mesh)

    expected = np.linalg.matrix_power(numpy_w(mesh.names), ROUNDS) @ x0.double().numpy()
    np.testing.assert_allclose(mesh.x.double().numpy(), expected, atol=1e-6, rtol=0)
    assert (x0[0] - x0[1]).abs().max() > 0.05  # not trivially met: the nodes started far apart
    torch.testing.assert_close(mesh.local, local0, atol=0, rtol=0)  # lr 0: nothing trained

    # The files of every runner: metrics.jsonl per node (summary, report), plus sim.json.
    assert [r["last_round"] for r in rows] == [ROUNDS] * 6
    degree = {n: sum(n in e for e in EDGES) for n in mesh.names}
    sent = received = 0
    for cfg in prepared.nodes:
        recs = read_records(f"{cfg.state_dir}/metrics.jsonl")
        assert [r.round for r in recs] == [1, 2, 3]
        r = recs[-1]
        assert len(r.neighbours_heard or []) == degree[cfg.node_id]
        # A lossless frame per neighbour: fp32, byte-shuffled and zstd'd (a little smaller), + header.
        assert r.bytes_sent and 0.8 * r.raw_bytes < r.bytes_sent < r.raw_bytes + 1024 * degree[cfg.node_id]
        sent, received = sent + r.bytes_sent, received + (r.bytes_received or 0)
        assert r.raw_bytes == degree[cfg.node_id] * 4 * mesh.g.size
        assert r.evaluation["eval_loss"] > 0 and r.train_loss is not None
        assert r.consensus_distance is not None and r.consensus_distance > 0
    assert sent == received  # every frame counted once at each end
    assert set(load_run(tmp_path).nodes) == set(mesh.names)
    assert (tmp_path / SIM_FILE).exists()
    assert any("round 3/3" in line for line in lines)
    assert any("spectral gap of explicit on 6 nodes" in line for line in lines)


def test_push_sum_scenario_reaches_numpy_push_sum(tmp_path):
    spec = spec_of(lr=0.0, nodes=5, topology="directed-exponential", edges=[], gossip={"rounds": 4})
    assert spec.needs_sim
    prepared = prepare_for_sim(spec, tmp_path)
    mesh = SimMesh(prepared)
    x0 = random_rows(mesh, seed=1)
    mesh.set_global_states(x0)
    _, mesh = run_prepared(prepared, echo=lambda _: None, mesh=mesh)
    arcs = [(int(a[4:]), int(b[4:])) for a, b in spec.schedule.graph(1).edges]
    expected = numpy_push_sum(arcs, 5, x0.double().numpy(), 4)
    np.testing.assert_allclose(mesh.x.double().numpy(), expected, atol=1e-6, rtol=0)


def test_push_sum_refuses_a_lossy_codec(tmp_path):
    from fedpeer.errors import ConfigError

    spec = spec_of(nodes=4, topology="directed-ring", edges=[], codec={"name": "fp16"})
    with pytest.raises(ConfigError, match='codec.name = "lossless"'):
        SimMesh(prepare_for_sim(spec, tmp_path))


def test_participation_trains_a_seeded_sample_and_every_node_gossips(tmp_path):
    spec = spec_of(lr=1e-2, sim={"participation": 0.5}, gossip={"rounds": 2})
    prepared = prepare_for_sim(spec, tmp_path)
    mesh = SimMesh(prepared)
    local0 = mesh.local.clone()
    samples = [mesh.participants(t) for t in (1, 2)]
    assert [len(s) for s in samples] == [3, 3] and samples[0] != samples[1]
    assert samples == [mesh.participants(t) for t in (1, 2)]  # drawn from the seed: the same again
    _, mesh = run_prepared(prepared, echo=lambda _: None, mesh=mesh)
    for i, cfg in enumerate(prepared.nodes):
        recs = read_records(f"{cfg.state_dir}/metrics.jsonl")
        trained = [i in s for s in samples]
        assert [r.train_loss is not None for r in recs] == trained
        assert [r.evaluation.get("eval_loss") is not None for r in recs] == trained
        assert all(r.neighbours_heard for r in recs)  # every node mixes every round
        assert torch.equal(mesh.local[i], local0[i]) == (not any(trained))


# --- the same scenario under the process runner -------------------------------------------------------


def seed_process_nodes(prepared, x0: torch.Tensor, mesh: SimMesh) -> None:
    """Each process node's round-0 checkpoint holds the sim's starting global adapter."""
    for i, cfg in enumerate(prepared.nodes):
        node = build_node(cfg, MemoryTransport(MemoryNetwork()))
        node.dual.set_global_state({k: v.clone() for k, v in mesh.g.views(x0[i]).items()})
        state.save(node)
        node.close()


@pytest.mark.slow
@pytest.mark.parametrize("lr", [0.0, 1e-2])
def test_sim_matches_the_process_runner(tmp_path, lr):
    # 6 nodes (not 8) keeps this at about a minute per case on 2 shared cores; benchmarks/scale.py
    # --compare runs the 8-node comparison.
    spec = spec_of(lr=lr)
    sim_prepared = prepare_for_sim(spec, tmp_path / "sim")
    mesh = SimMesh(sim_prepared)
    x0 = random_rows(mesh, seed=7)
    mesh.set_global_states(x0)
    local0 = mesh.local.clone()
    _, mesh = run_prepared(sim_prepared, echo=lambda _: None, mesh=mesh)

    proc = prepare_for_processes(spec, tmp_path / "proc")
    seed_process_nodes(proc, x0, mesh)
    rows = ProcessRunner(proc, echo=lambda _: None).run()
    assert all(r["last_round"] == ROUNDS for r in rows), rows

    for i, cfg in enumerate(proc.nodes):
        adapter = checkpoint.load(cfg.state_dir).group("adapter")
        for k, v in mesh.global_state(i).items():
            torch.testing.assert_close(adapter[k], v, atol=1e-6, rtol=0)
        for k, v in mesh.local_state(i).items():
            torch.testing.assert_close(adapter[k], v, atol=1e-6, rtol=0)
        sim_recs = read_records(sim_prepared.out_dir / cfg.node_id / "metrics.jsonl")
        proc_recs = read_records(f"{cfg.state_dir}/metrics.jsonl")
        assert [r.round for r in proc_recs] == [r.round for r in sim_recs] == [1, 2, 3]
        for a, b in zip(sim_recs, proc_recs, strict=True):
            for key in ("train_loss", "eval_loss", "consensus_distance", "global_norm"):
                assert a.value(key) == pytest.approx(b.value(key), rel=1e-6, abs=1e-7), (cfg.node_id, key)
            # The same frames, but zstd packs values that differ in their last bits a few bytes
            # differently: the byte counts agree closely, not exactly.
            assert a.bytes_sent == pytest.approx(b.bytes_sent, rel=0.01)
            assert a.neighbours_heard == b.neighbours_heard
    # lr > 0: training moved every local adapter, so the comparison covers training too.
    assert ((mesh.local - local0).abs().amax(dim=1) > 1e-4).all().item() == (lr > 0)


# --- the CLI ------------------------------------------------------------------------------------------

SCENARIO = """
name = "simcli"
nodes = 4
topology = "{topology}"
[tiny_model]
hidden_size = 32
num_layers = 1
num_heads = 2
intermediate_size = 64
[data]
n_train = 20
n_eval = 4
[model]
task = "causal-lm"
dropout = false
[train]
steps_per_round = 1
batch_size = 8
max_length = 32
device = "cpu"
[gossip]
rounds = 2
[codec]
name = "lossless"
"""


def test_cli_runs_a_sim_and_refuses_sim_only_topologies_elsewhere(tmp_path):
    cli = CliRunner()
    scen = tmp_path / "s.toml"
    scen.write_text(SCENARIO.format(topology="one-peer-exponential"))
    out = tmp_path / "run"
    r = cli.invoke(app, ["scenario", "run", str(scen), "--out", str(out), "--runner", "process"])
    assert r.exit_code != 0 and "runs only with --runner sim" in r.output
    r = cli.invoke(app, ["scenario", "run", str(scen), "--out", str(out), "--runner", "sim"])
    assert r.exit_code == 0, r.output
    assert "round 2/2" in r.output and "summary after 2 rounds" in r.output
    assert "spectral gap of one-peer-exponential on 4 nodes: 1 " in r.output
    assert (out / "summary.json").exists() and (out / "node3" / "metrics.jsonl").exists()
    again = cli.invoke(app, ["scenario", "run", str(scen), "--out", str(out), "--runner", "sim"])
    assert again.exit_code != 0 and "pass --fresh" in again.output
    fresh = cli.invoke(app, ["scenario", "run", str(scen), "--out", str(out), "--runner", "sim", "--fresh"])
    assert fresh.exit_code == 0, fresh.output
    assert len(read_records(out / "node0" / "metrics.jsonl")) == 2


def numpy_mh(graph: nx.Graph, names: list[str]) -> np.ndarray:
    w = np.zeros((len(names), len(names)))
    for a, b in graph.edges:
        i, j = names.index(a), names.index(b)
        w[i, j] = w[j, i] = 1.0 / (1 + max(graph.degree[a], graph.degree[b]))
    return w + np.diag(1.0 - w.sum(axis=1))


def test_a_new_random_regular_graph_each_round_mixes_whole_states_exactly(tmp_path):
    spec = spec_of(lr=0.0, topology="random-regular-dynamic", edges=[], gossip={"rounds": 3})
    prepared = prepare_for_sim(spec, tmp_path)
    mesh = SimMesh(prepared)
    assert mesh.mode == "gossip" and mesh.x_hat is None  # no lasting public copies
    x0 = random_rows(mesh, seed=3)
    mesh.set_global_states(x0)
    _, mesh = run_prepared(prepared, echo=lambda _: None, mesh=mesh)
    expected = x0.double().numpy()
    graphs = [spec.schedule.graph(t) for t in (1, 2, 3)]
    assert len({frozenset(map(frozenset, g.edges)) for g in graphs}) == 3  # three different graphs
    for g in graphs:
        expected = numpy_mh(g, mesh.names) @ expected
    np.testing.assert_allclose(mesh.x.double().numpy(), expected, atol=1e-6, rtol=0)
    recs = read_records(tmp_path / "node0" / "metrics.jsonl")
    assert [sorted(r.neighbours_heard or []) for r in recs] == [sorted(g.neighbors("node0")) for g in graphs]


def test_graph_file_topology_is_read_relative_to_the_scenario(tmp_path):
    from fedpeer.scenario.spec import load_scenario

    (tmp_path / "arcs.txt").write_text("a b\nb c\nc a\n")
    scen = tmp_path / "s.toml"
    scen.write_text('name = "f"\ntopology = "file"\ngraph_file = "arcs.txt"\ndirected = true\n')
    spec = load_scenario(scen)
    assert spec.needs_sim and spec.schedule.directed
    assert sorted(spec.graph.nodes) == ["a", "b", "c"]
    scen.write_text('name = "f"\ntopology = "file"\ngraph_file = "arcs.txt"\n')
    undirected = load_scenario(scen)
    assert not undirected.needs_sim and undirected.graph.has_edge("a", "c")  # every runner takes it


def test_one_peer_exponential_scenario_reaches_the_exact_average_in_log2_n_rounds(tmp_path):
    spec = spec_of(lr=0.0, nodes=8, topology="one-peer-exponential", edges=[], gossip={"rounds": 3})
    prepared = prepare_for_sim(spec, tmp_path)
    mesh = SimMesh(prepared)
    x0 = random_rows(mesh, seed=5)
    mesh.set_global_states(x0)
    _, mesh = run_prepared(prepared, echo=lambda _: None, mesh=mesh)
    average = x0.double().mean(dim=0, keepdim=True).expand_as(x0)
    np.testing.assert_allclose(mesh.x.double().numpy(), average.numpy(), atol=1e-6, rtol=0)
    assert (x0.double() - average).abs().max() > 0.05
    recs = read_records(tmp_path / "node0" / "metrics.jsonl")
    assert [r.neighbours_heard for r in recs] == [["node7"], ["node6"], ["node4"]]  # i - 2^(t-1)


def test_the_sim_says_in_one_line_when_nodes_distances_keep_growing(tmp_path, monkeypatch):
    """Each simulated node watches its distance as a real node does; the sim reports all in one line."""
    growing = (10.0**k for k in itertools.count())  # far faster than the models
    monkeypatch.setattr(
        sim_mesh, "consensus_distances", lambda x, public, edges: [next(growing)] * x.shape[0]
    )
    rounds = GROWTH_ROUNDS + 1
    # lr > 0: the watch divides by the model's norm, and B (LoRA) stays at zero without training
    prepared = prepare_for_sim(spec_of(lr=1e-2, gossip={"rounds": rounds}), tmp_path)
    lines: list[str] = []
    run_prepared(prepared, echo=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1
    assert f"round {rounds}, 6 of 6 nodes" in warnings[0]
    assert f"grown {GROWTH_ROUNDS} rounds in a row" in warnings[0] and "train.lr" in warnings[0]
