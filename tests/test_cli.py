"""The CLI through Typer's CliRunner: help, init, readable errors, status, scenario run, export."""

import json
import re

import pytest
from fedpeer_cli.main import app
from typer.testing import CliRunner

from fedpeer.config import load_node_config

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_the_commands():
    out = invoke("--help").output
    for cmd in ("init", "node", "status", "scenario", "export", "pki"):
        assert cmd in out


def test_init_writes_a_config_that_loads(tmp_path):
    path = tmp_path / "node.toml"
    r = invoke(
        "init",
        path,
        "--node-id",
        "site-a",
        "--neighbour",
        "site-b=10.0.0.2:50051",
        "--model",
        "some/model",
        "--data",
        "train.jsonl",
    )
    assert r.exit_code == 0, r.output
    cfg = load_node_config(path)
    assert cfg.node_id == "site-a" and cfg.neighbours[0].id == "site-b"
    assert cfg.train.data == str((tmp_path / "train.jsonl").resolve())
    assert "#" in path.read_text()  # commented for the site operator
    again = invoke("init", path)
    assert again.exit_code == 2 and "--force" in again.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["node", "run", "--config", "missing.toml"], "no such config file"),
        (["init", "x.toml", "--neighbour", "nonsense"], "ID=HOST:PORT"),
        (["scenario", "run", "missing.toml", "--out", "o"], "no such scenario file"),
        (["scenario", "run", "scenarios/ring4.toml", "--out", "o", "--set", "gossip.roundz=3"], "roundz"),
        (["scenario", "run", "scenarios/ring4.toml", "--out", "o", "--runner", "ssh"], "--runner"),
        (["status", "127.0.0.1:1", "--timeout", "2"], "no fedpeer node answers at 127.0.0.1:1"),
    ],
)
def test_user_mistakes_are_one_readable_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scenarios").mkdir()
    from pathlib import Path

    (tmp_path / "scenarios" / "ring4.toml").write_text(
        (Path(__file__).parent.parent / "scenarios" / "ring4.toml").read_text()
    )
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_bad_config_value_names_the_field(tmp_path):
    path = tmp_path / "node.toml"
    invoke("init", path)
    path.write_text(path.read_text().replace("steps_per_round = 10", 'steps_per_round = "ten"'))
    r = invoke("node", "run", "--config", path)
    assert r.exit_code == 2 and "train.steps_per_round must be int" in r.output


@pytest.mark.slow
def test_scenario_inprocess_then_export_and_status_json(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    scen = tmp_path / "s.toml"
    scen.write_text("""
name = "cli"
nodes = 3
topology = "ring"
[tiny_model]
hidden_size = 32
num_layers = 1
num_heads = 2
intermediate_size = 64
[data]
n_train = 30
n_eval = 6
[train]
steps_per_round = 2
batch_size = 8
max_length = 32
device = "cpu"
[gossip]
rounds = 2
linger_s = 0.1
""")
    r = invoke("scenario", "run", scen, "--out", out, "--runner", "inprocess")
    assert r.exit_code == 0, r.output
    assert "summary after 2 rounds" in r.output
    summary = json.loads((out / "summary.json").read_text())
    assert [s["last_round"] for s in summary] == [2, 2, 2]

    from fedpeer.config import dump_toml, to_dict
    from fedpeer.scenario.runner import prepare_for_memory
    from fedpeer.scenario.spec import load_scenario

    cfg = prepare_for_memory(load_scenario(scen), out).nodes[0]
    (tmp_path / "node0.toml").write_text(dump_toml(to_dict(cfg)))
    r = invoke("export", "--config", tmp_path / "node0.toml", "--out", tmp_path / "adapter")
    assert r.exit_code == 0, r.output
    assert re.search(r"exported round 2 of node0", r.output)
    from fedpeer import checkpoint
    from fedpeer.model.dual_lora import load_dual_lora

    site = load_dual_lora(cfg.model, cfg.adapter, torch.device("cpu"), local_seed=0)
    site.load_adapter_state(checkpoint.load(cfg.state_dir).group("adapter"))
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(cfg.model.path), tmp_path / "adapter"
    )
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, site.model(input_ids=ids).logits, atol=1e-5, rtol=0
        )


def test_status_of_a_live_node(tmp_path):
    from fedpeer.node import build_node
    from fedpeer.scenario.runner import free_loopback_addresses
    from fedpeer.scenario.spec import node_names, prepare
    from fedpeer.transport.grpc_transport import GrpcTransport
    from tests.meshutil import tiny_spec

    spec = tiny_spec(nodes=2, topology="complete")
    cfg = prepare(spec, tmp_path, free_loopback_addresses(node_names(spec))).nodes[0]
    node = build_node(cfg, GrpcTransport())
    node.address = node.transport.serve(cfg.listen, node.service)
    try:
        r = invoke("status", node.address, "--json")
        assert r.exit_code == 0, r.output
        info = json.loads(r.output)
        assert info["health"] == "SERVING" and info["node"]["node_id"] == "node0"
        assert info["phase"] == "starting" and [n["node_id"] for n in info["neighbours"]] == ["node1"]
        table = invoke("status", node.address)
        assert "node1" in table.output and "SERVING" in table.output
    finally:
        node.close()


def test_status_of_a_tls_node_needs_a_mesh_certificate(tmp_path):
    from fedpeer.node import build_node
    from fedpeer.scenario.runner import free_loopback_addresses
    from fedpeer.scenario.spec import node_names, prepare
    from fedpeer.security.tls import node_identity
    from fedpeer.transport.grpc_transport import GrpcTransport
    from tests.meshutil import tiny_spec

    spec = tiny_spec(nodes=2, topology="complete")
    cfg = prepare(spec, tmp_path, free_loopback_addresses(node_names(spec))).nodes[0]
    node = build_node(cfg, GrpcTransport(tls=node_identity(cfg.tls, cfg.node_id)))
    node.address = node.transport.serve(cfg.listen, node.service)
    pki_dir = tmp_path / "pki"
    assert invoke("pki", "issue", pki_dir, "operator").exit_code == 0
    creds = [
        "--ca",
        pki_dir / "ca.pem",
        "--cert",
        pki_dir / "operator.pem",
        "--key",
        pki_dir / "operator.key",
    ]
    try:
        plain = invoke("status", node.address, "--timeout", "2")
        assert plain.exit_code == 2 and "pass --ca, --cert and --key" in plain.output
        by_id = invoke("status", node.address, *creds, "--node-id", "node0", "--json")
        assert by_id.exit_code == 0, by_id.output
        assert json.loads(by_id.output)["node"]["node_id"] == "node0"
        by_host = invoke("status", node.address, *creds, "--json")  # its certificate lists 127.0.0.1
        assert by_host.exit_code == 0, by_host.output
        wrong = invoke("status", node.address, *creds, "--node-id", "node1", "--timeout", "2")
        assert wrong.exit_code == 2 and "did not prove to be the node" in wrong.output
        half = invoke("status", node.address, "--ca", pki_dir / "ca.pem")
        assert half.exit_code == 2 and "go together" in half.output
    finally:
        node.close()


def test_pki_commands_and_init_with_a_pki_folder(tmp_path):
    pki_dir = tmp_path / "pki"
    r = invoke("pki", "init", pki_dir)
    assert r.exit_code == 0 and "ca.pem" in r.output
    r = invoke("pki", "issue", pki_dir, "site-b", "--host", "10.0.0.2", "--host", "site-b.example.org")
    assert r.exit_code == 0, r.output
    shown = invoke("pki", "show", pki_dir / "site-b.pem").output
    assert "node id     site-b" in shown and "10.0.0.2" in shown and "site-b.example.org" in shown
    # init issues site-a's certificate from the CA it finds there, and the config names the files.
    path = tmp_path / "conf" / "node.toml"
    r = invoke(
        "init",
        path,
        "--node-id",
        "site-a",
        "--pki",
        pki_dir,
        "--listen",
        "10.0.0.1:50051",
        "--model",
        "org/m",
    )
    assert r.exit_code == 0, r.output
    cfg = load_node_config(path)
    assert cfg.tls.cert == str((pki_dir / "site-a.pem").resolve()) and not cfg.tls.insecure
    assert "10.0.0.1" in invoke("pki", "show", pki_dir / "site-a.pem").output
    # Without --pki, the config expects pki/ beside it and says where the files must come from.
    other = tmp_path / "plain" / "node.toml"
    r = invoke("init", other, "--node-id", "site-c", "--model", "org/m")
    assert r.exit_code == 0 and "get them from the mesh's CA" in r.output
    assert load_node_config(other).tls.key == str((tmp_path / "plain" / "pki" / "site-c.key").resolve())
    bad = invoke("pki", "issue", tmp_path / "nowhere", "x")
    assert bad.exit_code == 2 and "pki init" in bad.output


def test_node_run_without_credentials_says_how_to_get_them(tmp_path):
    path = tmp_path / "node.toml"
    invoke("init", path, "--node-id", "site-a", "--model", "some/model", "--data", "train.jsonl")
    text = path.read_text()
    r = invoke("node", "run", "--config", path)
    assert r.exit_code == 2 and "tls.ca: no such file" in r.output and "fedpeer pki issue" in r.output
    path.write_text(text.replace('ca = "pki/ca.pem"', 'ca = ""'))
    r = invoke("node", "run", "--config", path)
    assert r.exit_code == 2 and "tls.ca is not set" in r.output and "tls.insecure" in r.output
