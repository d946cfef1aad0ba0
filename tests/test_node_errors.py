"""A mesh that cannot form must not pass for a working one, and a node's start-up mistakes are one
readable line (exit code 2) said before any work is done."""

import dataclasses
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fedpeer.errors import PeerUnavailable, TrainedAlone
from fedpeer.metrics import read_metrics
from fedpeer.node import build_node
from fedpeer.scenario.runner import free_loopback_addresses, write_node_config
from fedpeer.scenario.spec import node_names, prepare
from fedpeer.transport.grpc_transport import GrpcTransport
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from tests.meshutil import prepared_memory, run_threads, tiny_spec

QUICK_JOIN = {
    "rounds": 2,
    "join_timeout_s": 0.3,
    "round_timeout_s": 5.0,
    "rpc_timeout_s": 2.0,
    "linger_s": 0.0,
}


def _with_gossip(cfg, **changes):
    return dataclasses.replace(cfg, gossip=dataclasses.replace(cfg.gossip, **changes))


def test_a_node_that_never_hears_a_neighbour_says_it_trained_alone(tmp_path, caplog):
    prepared = prepared_memory(tiny_spec(nodes=2, gossip=QUICK_JOIN), tmp_path)
    node = build_node(prepared.nodes[0], MemoryTransport(MemoryNetwork()))  # node1 never comes up
    with (
        caplog.at_level(logging.INFO, logger="fedpeer.node"),
        pytest.raises(TrainedAlone, match=r"node0 trained alone: .*node1: not reachable.*--allow-solo"),
    ):
        node.run()
    assert "node0: waiting for node1 at mem-node1:1: not reachable" in caplog.text
    recs = read_metrics(tmp_path / "node0" / "metrics.jsonl")
    assert [r["round"] for r in recs] == [1, 2], "its rounds are kept all the same"
    # No neighbour was mixed: no distance was measured (0.0 would read as perfect consensus).
    assert all(r["consensus_distance"] is None and r["neighbours_heard"] == [] for r in recs)


def test_allow_solo_lets_a_lone_node_finish(tmp_path, caplog):
    prepared = prepared_memory(tiny_spec(nodes=2, gossip=QUICK_JOIN), tmp_path)
    cfg = _with_gossip(prepared.nodes[0], allow_solo=True)
    with caplog.at_level(logging.INFO, logger="fedpeer.node"):
        build_node(cfg, MemoryTransport(MemoryNetwork())).run()
    assert "trained alone" in caplog.text and "allowed by gossip.allow_solo" in caplog.text
    assert "node0 finished: ran all 2 rounds" in caplog.text


def test_a_refused_handshake_is_said_once_as_refused(tmp_path, caplog):
    prepared = prepared_memory(tiny_spec(nodes=2, gossip={**QUICK_JOIN, "join_timeout_s": 2.0}), tmp_path)
    other_seed = dataclasses.replace(prepared.nodes[1].adapter, mesh_seed=7)
    cfgs = [prepared.nodes[0], dataclasses.replace(prepared.nodes[1], adapter=other_seed)]
    net = MemoryNetwork()
    nodes = [build_node(cfg, MemoryTransport(net)) for cfg in cfgs]
    with caplog.at_level(logging.INFO, logger="fedpeer.node"), pytest.raises(TrainedAlone, match="refused"):
        run_threads(nodes)
    lines = caplog.text.splitlines()
    # Each side retries twice a second while joining; each refusal is logged once all the same.
    assert sum("node0: handshake with node1 refused" in line for line in lines) == 1, caplog.text
    assert sum("node1: refused handshake from node0" in line for line in lines) == 1, caplog.text
    assert "mesh_seed" in caplog.text
    gave_up = [line for line in lines if "starting without" in line]
    assert len(gave_up) == 2 and all("refused:" in line for line in gave_up), caplog.text


def test_a_host_name_that_does_not_resolve_says_so():
    transport = GrpcTransport()
    try:
        with pytest.raises(PeerUnavailable, match=r"host name 'no-such-site\.invalid' does not resolve"):
            transport.status("no-such-site.invalid:50051", timeout=5.0)
    finally:
        transport.close()


def test_a_port_in_use_is_refused_in_one_line():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        address = f"127.0.0.1:{held.getsockname()[1]}"
        transport = GrpcTransport()
        with pytest.raises(
            PeerUnavailable, match=r"cannot listen on 127\.0\.0\.1:\d+: the port is in use"
        ) as e:
            transport.serve(address, handler=None)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the same, as an operator sees them
def _node_config(tmp_path: Path, **gossip) -> Path:
    spec = tiny_spec(nodes=2, gossip={**QUICK_JOIN, **gossip})
    cfg = prepare(spec, tmp_path, free_loopback_addresses(node_names(spec))).nodes[0]
    return write_node_config(cfg)


def _fedpeer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "fedpeer_cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.slow
def test_node_run_alone_exits_2(tmp_path):
    config = _node_config(tmp_path)
    result = _fedpeer("node", "run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "trained alone" in _error_line(result)
    assert [r["round"] for r in read_metrics(tmp_path / "node0" / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_node_run_on_a_port_in_use_exits_2(tmp_path):
    config = _node_config(tmp_path)
    listen = config.read_text().split('listen = "')[1].split('"')[0]
    host, port = listen.rsplit(":", 1)
    with socket.socket() as held:
        held.bind((host, int(port)))
        held.listen()
        result = _fedpeer("node", "run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on {listen}" in _error_line(result)


@pytest.mark.slow
def test_node_run_with_an_unwritable_state_dir_stops_before_training(tmp_path):
    config = _node_config(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    text = config.read_text()
    old = text.split('state_dir = "')[1].split('"')[0]
    config.write_text(text.replace(f'state_dir = "{old}"', f'state_dir = "{blocker}/state"'))
    result = _fedpeer("node", "run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "is not writable" in _error_line(result)
    assert "round 1" not in result.stderr
