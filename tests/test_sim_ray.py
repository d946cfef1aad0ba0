"""`--runner ray`: the sim runner's nodes in blocks on Ray actors give the sim runner's numbers.

One local Ray (2 CPUs, a small object store) for the module; each case runs the same 6-node
scenario under the sim runner (one block in this process) and on 2 actors, and compares every
adapter value and every record to 1e-6."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from fedpeer_cli.main import app
from typer.testing import CliRunner

from fedpeer.errors import ConfigError, FedpeerError
from fedpeer.metrics import read_records
from fedpeer.sim.mesh import SimMesh
from fedpeer.sim.runner import SIM_FILE, prepare_for_sim, run_prepared
from tests.test_sim import ROUNDS, SCENARIO, random_rows, spec_of


@pytest.fixture(scope="module")
def ray():
    """A local Ray for the module. One that cannot start on this machine (twice) skips these tests
    with Ray's own logs as the reason: a machine's Ray, not fedpeer, is then what failed."""
    from fedpeer.sim.ray_blocks import start_local_ray

    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'fedpeer[ray]')")
    try:
        start_local_ray(
            2, print, object_store_memory=100 * 2**20, log_to_driver=False, configure_logging=False
        )
    except FedpeerError as exc:
        pytest.skip(str(exc))
    yield ray
    ray.shutdown()


def run_both(tmp_path, spec, seed: int):
    """The same scenario, the same starting global adapters: sim runner, then 2 Ray actors."""
    from fedpeer.sim.ray_blocks import ray_blocks

    meshes, prepared = [], []
    for name, blocks in (("sim", None), ("ray", ray_blocks(2, lambda _: None))):
        p = prepare_for_sim(spec, tmp_path / name)
        mesh = SimMesh(p, blocks=blocks)
        mesh.set_global_states(random_rows(mesh, seed=seed))
        lines: list[str] = []
        _, mesh = run_prepared(p, echo=lines.append, mesh=mesh)
        meshes.append((mesh, mesh.x.clone(), mesh.local.clone(), lines))
        prepared.append(p)
        mesh.close()
    return meshes, prepared


@pytest.mark.slow
@pytest.mark.parametrize("lr", [0.0, 1e-2])
def test_ray_runner_matches_the_sim_runner(tmp_path, ray, lr):
    spec = spec_of(lr=lr)
    (sim, sim_x, sim_local, _), (rmesh, ray_x, ray_local, lines) = run_both(tmp_path, spec, seed=7)[0]
    assert rmesh.blocks.ranges == [(0, 3), (3, 6)]  # two actors, three nodes each
    assert any("simulating 6 nodes on 2 Ray actors" in line for line in lines)
    assert any(f"round {ROUNDS}/{ROUNDS}" in line for line in lines)
    torch.testing.assert_close(ray_x, sim_x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ray_local, sim_local, atol=1e-6, rtol=0)
    # lr > 0: training moved every local adapter, so the comparison covers training too.
    p0 = prepare_for_sim(spec, tmp_path / "fresh")
    local0 = SimMesh(p0).local
    assert ((sim_local - local0).abs().amax(dim=1) > 1e-4).all().item() == (lr > 0)

    for name in sim.names:
        a_recs = read_records(tmp_path / "sim" / name / "metrics.jsonl")
        b_recs = read_records(tmp_path / "ray" / name / "metrics.jsonl")
        assert [r.round for r in a_recs] == [r.round for r in b_recs] == list(range(1, ROUNDS + 1))
        for a, b in zip(a_recs, b_recs, strict=True):
            for key in ("train_loss", "eval_loss", "consensus_distance", "global_norm"):
                assert a.value(key) == pytest.approx(b.value(key), rel=1e-6, abs=1e-7), (name, key)
            assert a.bytes_sent == pytest.approx(b.bytes_sent, rel=0.01)
            assert a.neighbours_heard == b.neighbours_heard
    meta = json.loads((tmp_path / "ray" / SIM_FILE).read_text())
    assert meta["runner"] == "ray" and meta["blocks"] == 2
    assert json.loads((tmp_path / "sim" / SIM_FILE).read_text())["runner"] == "sim"


@pytest.mark.slow
def test_ray_runner_mixes_push_sum_across_actors_as_the_sim(tmp_path, ray):
    # A directed graph whose arcs cross the actors' blocks: push-sum's weights travel too.
    spec = spec_of(lr=1e-2, nodes=5, topology="directed-exponential", edges=[], gossip={"rounds": 3})
    (_, sim_x, sim_local, _), (_, ray_x, ray_local, _) = run_both(tmp_path, spec, seed=2)[0]
    torch.testing.assert_close(ray_x, sim_x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ray_local, sim_local, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_cli_runs_the_ray_runner(tmp_path, ray):
    scen = tmp_path / "s.toml"
    scen.write_text(SCENARIO.format(topology="ring") + "[sim]\nactors = 2\n")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["scenario", "run", str(scen), "--out", str(out), "--runner", "ray"])
    assert r.exit_code == 0, r.output
    assert "on 2 Ray actors" in r.output and "summary after 2 rounds" in r.output
    assert len(read_records(out / "node3" / "metrics.jsonl")) == 2
    assert json.loads((out / SIM_FILE).read_text())["runner"] == "ray"
    assert ray.is_initialized()  # a Ray it did not start is left running
    too_many = CliRunner().invoke(
        app,
        [
            "scenario",
            "run",
            str(scen),
            "--out",
            str(tmp_path / "b"),
            "--runner",
            "ray",
            "--set",
            "sim.actors=9",
        ],
    )
    assert too_many.exit_code != 0 and "set sim.actors <= 2" in too_many.output


def test_without_ray_the_ray_runner_says_what_to_install(tmp_path, monkeypatch):
    from fedpeer.sim.ray_blocks import run_scenario

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'fedpeer\[ray\]'"):
        run_scenario(spec_of(), tmp_path)
    scen = tmp_path / "s.toml"
    scen.write_text(SCENARIO.format(topology="ring"))
    r = CliRunner().invoke(
        app, ["scenario", "run", str(scen), "--out", str(tmp_path / "o"), "--runner", "ray"]
    )
    assert r.exit_code != 0 and "pip install 'fedpeer[ray]'" in r.output
    assert not (tmp_path / "o" / "node0").exists()  # nothing prepared before it said so


@pytest.mark.slow
def test_an_error_in_an_actor_comes_back_as_one_fedpeer_error(tmp_path, ray):
    from fedpeer.sim.ray_blocks import RayBlocks

    prepared = prepare_for_sim(spec_of(), tmp_path)
    blocks = RayBlocks(prepared.nodes, "choco", 2, lambda _: None)
    try:
        x = torch.zeros(3, 1)
        with pytest.raises(FedpeerError, match="a Ray actor failed in finish: IndexError"):
            blocks.call("finish", [(1, [99], x), (1, [], x)])  # node 99 is in no block
    finally:
        blocks.close()


def test_a_ray_that_does_not_start_is_tried_twice_then_one_error(monkeypatch):
    import types

    from fedpeer.sim.ray_blocks import start_local_ray

    calls: list[dict] = []

    def init(**kwargs):
        calls.append(kwargs)
        raise Exception("The current node timed out during startup.\nmore")

    fake = types.SimpleNamespace(init=init, shutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "ray", fake)
    said: list[str] = []
    with pytest.raises(FedpeerError, match=r"Ray did not start on this machine twice \(The current node"):
        start_local_ray(2, said.append)
    assert len(calls) == 2 and calls[0]["_node_ip_address"] == "127.0.0.1"
    assert said == ["Ray did not start (The current node timed out during startup.); trying once more"]

    starts: list[int] = []

    def slow_first_start(**kwargs):
        starts.append(1)
        if len(starts) == 1:
            raise Exception("The current node timed out during startup.")

    fake.init = slow_first_start
    start_local_ray(2, said.append)  # the second try starts it
    assert len(starts) == 2
