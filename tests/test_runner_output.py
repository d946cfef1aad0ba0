"""What `fedpeer scenario run` prints and decides, from fabricated run directories (no training):
progress lines, the summary table, resuming / re-showing / --fresh, lone nodes, quiet libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fedpeer_cli import scenario_cmd
from fedpeer_cli.main import app
from typer.testing import CliRunner

from fedpeer import checkpoint
from fedpeer.config import NodeConfig, PeerConfig
from fedpeer.scenario.rundir import NODE_FILES, checkpoint_round, clear_run, previous_run
from fedpeer.scenario.runner import HEARTBEAT_S, QUIET_ENV, MeshRunner, node_env
from fedpeer.scenario.spec import PreparedScenario, ScenarioSpec, TinyModelSpec, parse_scenario, prepare
from fedpeer.scenario.summary import progress_line, summarize

ROUNDS = 3
RING3 = {"node0": ("node1", "node2"), "node1": ("node0", "node2"), "node2": ("node0", "node1")}
SCENARIO = f"""
name = "fab"
nodes = 3
topology = "ring"
[gossip]
rounds = {ROUNDS}
"""


def record(rnd, node, heard=("a", "b"), cd=0.1, gn=2.0, sent=8000, **extra):
    return {
        "round": rnd,
        "node": node,
        "train_loss": 1.0 / rnd,
        "eval_loss": 2.0 / rnd,
        "bytes_sent": sent,
        "round_s": 0.5,
        "consensus_distance": cd,
        "global_norm": gn,
        "neighbours_heard": list(heard),
        **extra,
    }


def write_metrics(state_dir: Path, records) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def write_checkpoint(state_dir: Path, rnd: int) -> None:
    checkpoint.save(state_dir, {"adapter/x": torch.zeros(2)}, {"round": rnd})


def fabricate_run(out: Path, rounds: int = ROUNDS, alone: tuple[str, ...] = ()) -> None:
    """A run of SCENARIO as the nodes leave it: metrics per round and a checkpoint at the last."""
    for node, peers in RING3.items():
        heard = () if node in alone else peers
        write_metrics(out / node, [record(t, node, heard) for t in range(1, rounds + 1)])
        write_checkpoint(out / node, rounds)
        (out / node / "node.toml").write_text("# config\n")
        (out / node / "node.log").write_text("log\n")
    (out / "summary.json").write_text("[]")


def prepared_ring(out: Path, rounds: int = ROUNDS) -> PreparedScenario:
    spec = parse_scenario({"name": "fab", "nodes": 3, "gossip": {"rounds": rounds}})
    nodes = tuple(
        NodeConfig(
            node_id=n,
            state_dir=str(out / n),
            listen=f"127.0.0.1:{5000 + i}",
            neighbours=tuple(PeerConfig(p, "127.0.0.1:1") for p in peers),
        )
        for i, (n, peers) in enumerate(RING3.items())
    )
    return PreparedScenario(spec=spec, out_dir=out, nodes=nodes)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "fab.toml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture
def no_nodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace starting the mesh; records the OUT of every run that would have started nodes."""
    started: list[Path] = []

    def fake_run(spec, out, runner, image, docker_args):
        started.append(out)
        fabricate_run(out)
        return summarize(prepared_ring(out.resolve()))

    monkeypatch.setattr(scenario_cmd, "_run", fake_run)
    return started


# ================================================================ progress lines
def test_progress_line_shows_consensus_relative_to_the_norm_and_kb(tmp_path):
    prepared = prepared_ring(tmp_path)
    write_metrics(tmp_path / "node0", [record(1, "node0", cd=0.1, gn=2.0, sent=8000)])  # 5 %
    write_metrics(tmp_path / "node1", [record(1, "node1", cd=0.3, gn=2.0, sent=9000)])  # 15 %
    write_metrics(
        tmp_path / "node2", [record(1, "node2", heard=(), cd=None, sent=10000)]
    )  # no neighbour mixed
    line = progress_line(prepared, 1, ROUNDS, 12.0)
    assert "round 1/3" in line
    assert "consensus 10 % of |x|" in line  # the mean of the measured ratios; null is skipped
    assert "sent 9.0 kB/node" in line


def test_progress_line_without_any_consensus_shows_a_dash(tmp_path):
    prepared = prepared_ring(tmp_path)
    for n in RING3:
        write_metrics(tmp_path / n, [record(1, n, heard=(), cd=None)])
    assert "consensus –  sent" in progress_line(prepared, 1, ROUNDS, 1.0)


class FakeLauncher:
    """Nodes that run until the test stops them; `on_start` may write their metrics."""

    def __init__(self, on_start=None) -> None:
        self.alive: set[str] = set()
        self.on_start = on_start

    def start(self, cfg: NodeConfig) -> None:
        self.alive.add(cfg.node_id)
        if self.on_start:
            self.on_start(cfg)

    def running(self, node_id: str) -> bool:
        return node_id in self.alive

    def kill(self, node_id: str) -> None:
        self.alive.discard(node_id)

    def exit_code(self, node_id: str) -> int | None:
        return None if node_id in self.alive else 0

    def log_path(self, node_id: str) -> Path:
        return Path(os.devnull)

    def teardown(self) -> None:
        self.alive.clear()


def test_start_up_is_narrated_and_waiting_is_reported(tmp_path):
    now = [100.0]
    lines: list[str] = []
    mesh = MeshRunner(prepared_ring(tmp_path), FakeLauncher(), lines.append, clock=lambda: now[0])
    mesh.start_all()
    assert lines[1:4] == [
        "  starting node0 on 127.0.0.1:5000 (neighbours: node1, node2)",
        "  starting node1 on 127.0.0.1:5001 (neighbours: node0, node2)",
        "  starting node2 on 127.0.0.1:5002 (neighbours: node0, node1)",
    ]
    assert "waiting for the nodes to load the model and join" in lines[-1]
    alive = list(RING3)
    n = len(lines)
    mesh.report(mesh.rounds_done(), alive)
    assert len(lines) == n  # nothing new, and not yet HEARTBEAT_S of silence
    now[0] += HEARTBEAT_S
    mesh.report(mesh.rounds_done(), alive)
    assert lines[-1] == f"[{HEARTBEAT_S:6.1f}s] waiting for the nodes to join: 3/3 running, no round yet"
    for node in RING3:
        write_metrics(tmp_path / node, [record(1, node), record(2, node)])
    write_metrics(tmp_path / "node0", [record(3, "node0")])
    mesh.report(mesh.rounds_done(), alive)
    assert [line.split("] ")[1][:11] for line in lines[-2:]] == ["round 1/3: ", "round 2/3: "]  # none skipped
    now[0] += HEARTBEAT_S
    mesh.report(mesh.rounds_done(), alive)
    assert lines[-1].endswith("waiting for round 3/3: 1/3 nodes done with it, 3 running")
    for node in ("node1", "node2"):
        write_metrics(tmp_path / node, [record(3, node)])
    mesh.report(mesh.rounds_done(), alive)
    assert "round 3/3: " in lines[-1]
    now[0] += HEARTBEAT_S
    mesh.report(mesh.rounds_done(), ["node1"])  # the others exited
    assert lines[-1].endswith("all 3 rounds done; waiting for 1/3 nodes to exit")


def test_a_resumed_run_reports_only_its_new_rounds(tmp_path):
    prepared = prepared_ring(tmp_path)
    for node in RING3:
        write_metrics(tmp_path / node, [record(1, node), record(2, node)])  # the earlier run
    lines: list[str] = []
    finish = FakeLauncher(on_start=lambda cfg: write_metrics(Path(cfg.state_dir), [record(3, cfg.node_id)]))
    finish.running = lambda node_id: False  # each node completes its last round as it starts
    rows = MeshRunner(prepared, finish, lines.append).run()
    progress = [line for line in lines if "] round " in line]
    assert len(progress) == 1 and "round 3/3" in progress[0]
    assert [r["last_round"] for r in rows] == [3, 3, 3]


# ================================================================ the summary
def test_summary_rows_flag_lone_nodes_and_handle_null_consensus(tmp_path):
    prepared = prepared_ring(tmp_path)
    write_metrics(tmp_path / "node0", [record(t, "node0", RING3["node0"]) for t in (1, 2, 3)])
    write_metrics(tmp_path / "node1", [record(t, "node1", (), cd=None) for t in (1, 2, 3)])
    # heard node0 once, in round 1 only: not alone
    write_metrics(
        tmp_path / "node2", [record(1, "node2", ("node0",))] + [record(t, "node2", ()) for t in (2, 3)]
    )
    rows = {r["node"]: r for r in summarize(prepared)}
    assert [rows[n]["trained_alone"] for n in RING3] == [False, True, False]
    assert rows["node2"]["neighbours_heard"] == ["node0"] and rows["node2"]["degree"] == 2
    assert rows["node0"]["consensus_relative"] == pytest.approx(0.05)
    assert rows["node1"]["consensus_relative"] is None
    assert rows["node0"]["bytes_sent_per_round"] == 8000


def test_summary_a_restarted_node_counts_each_round_once(tmp_path):
    prepared = prepared_ring(tmp_path)
    write_metrics(tmp_path / "node0", [record(1, "node0"), record(2, "node0"), record(2, "node0", cd=0.4)])
    row = summarize(prepared)[0]
    assert (row["rounds"], row["last_round"], row["consensus_relative"]) == (2, 2, pytest.approx(0.2))


def header_line(text: str) -> str:
    return next(line for line in text.splitlines() if "node" in line and "round" in line)


def test_summary_table_is_not_cut_when_piped(capsys):
    """Not a terminal (as under CliRunner, a pipe or a file): the table keeps its natural width."""
    rows = [
        {
            "node": f"node{i}",
            "last_round": 8,
            "train_loss": 1.23456,
            "eval_loss": 2.34567,
            "perplexity": 10.4,
            "rouge_l": 0.25,
            "accuracy": 0.5,
            "macro_f1": 0.45,
            "consensus_relative": None if i == 1 else 0.0213,
            "bytes_sent_per_round": 8340.0,
            "round_s": 0.48,
            "degree": 2,
            "neighbours_heard": [] if i == 1 else ["a", "b"],
            "trained_alone": i == 1,
        }
        for i in range(3)
    ]
    scenario_cmd.print_summary(rows, 8)
    out = capsys.readouterr().out
    head = header_line(out)
    assert len(head) > 80  # wider than the 80 columns rich assumes without a terminal
    for h in ("train loss", "perplexity", "rouge-L", "macro F1", "consensus (% of |x|)", "sent (kB/round)"):
        assert h in head
    assert "…" not in out
    node0, node1 = (next(line for line in out.splitlines() if f" node{i} " in line) for i in (0, 1))
    assert " 2.13 % " in node0 and " 8.3 " in node0 and "2/2" in node0 and "trained alone" not in node0
    assert " – " in node1 and "0/2 trained alone" in node1


# ================================================================ an earlier run under the same --out
def test_checkpoint_round_reads_the_header(tmp_path):
    assert checkpoint_round(tmp_path / "none") == 0
    write_checkpoint(tmp_path / "a", 7)
    assert checkpoint_round(tmp_path / "a") == 7
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / checkpoint.FILENAME).write_bytes(b"\x08\x00garbage")
    assert checkpoint_round(tmp_path / "b") == 0  # the node itself reports an unreadable checkpoint


def test_a_complete_run_is_summarized_not_rerun(tmp_path, scenario, no_nodes):
    out = tmp_path / "run"
    fabricate_run(out)
    r = invoke("scenario", "run", scenario, "--out", out)
    assert r.exit_code == 0, r.output
    assert no_nodes == []
    assert r.output.startswith(
        f"{out} already holds a complete run (3/3 rounds): showing its summary; pass --fresh to start over\n"
    )
    assert "preparing" not in r.output and "summary after 3 rounds" in r.output
    assert [s["last_round"] for s in json.loads((out / "summary.json").read_text())] == [3, 3, 3]


def test_an_unfinished_run_resumes(tmp_path, scenario, no_nodes):
    out = tmp_path / "run"
    fabricate_run(out, rounds=2)
    write_checkpoint(out / "node1", 1)  # a node one round behind
    assert previous_run(parse_scenario({"nodes": 3}), out).partial
    r = invoke("scenario", "run", scenario, "--out", out)
    assert r.exit_code == 0, r.output
    assert no_nodes == [out]
    assert (
        f"{out} holds an unfinished run: resuming from round 1/3 (node checkpoints at rounds 1–2); "
        "pass --fresh to start over" in r.output
    )


def test_fresh_starts_over(tmp_path, scenario, no_nodes):
    out = tmp_path / "run"
    fabricate_run(out)
    r = invoke("scenario", "run", scenario, "--out", out, "--fresh")
    assert r.exit_code == 0, r.output
    assert no_nodes == [out]
    assert f"--fresh: removed 13 files of an earlier run under {out}" in r.output  # 3 x 4 + summary
    assert "already holds" not in r.output and "resuming" not in r.output


def test_fresh_removes_only_what_the_run_wrote_inside_out(tmp_path):
    out, outside = tmp_path / "run", tmp_path / "elsewhere"
    fabricate_run(out)
    (out / "model").mkdir()
    (out / "model" / "config.json").write_text("{}")
    (out / "node0" / "notes.txt").write_text("mine")  # not the runner's: kept, and so is node0/
    (out / "node1" / ".checkpoint-abc.tmp").write_text("torn")  # a crash mid-save
    outside.mkdir()
    (outside / "node.log").write_text("not yours")
    (out / "node2" / "node.log").unlink()
    (out / "node2" / "node.log").symlink_to(outside / "node.log")
    removed = clear_run(parse_scenario({"nodes": 3}), out)
    assert len(removed) == 3 * len(NODE_FILES) - 1 + 1 + 1  # all but the link, + temp file, + summary
    assert sorted(p.name for p in out.iterdir()) == ["model", "node0", "node2"]
    assert sorted(p.name for p in (out / "node0").iterdir()) == ["notes.txt"]
    assert [p.name for p in (out / "node2").iterdir()] == ["node.log"]  # the link itself stays
    assert (outside / "node.log").read_text() == "not yours"
    assert (out / "model" / "config.json").exists()


def test_fresh_never_leaves_out(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "node.toml").write_text("a file next to OUT")
    spec = parse_scenario({"topology": "explicit", "edges": [["..", "node1"]]})
    clear_run(spec, out)
    assert (tmp_path / "node.toml").exists()


# ================================================================ lone nodes
def test_a_node_that_trained_alone_is_flagged_and_fails_the_run(tmp_path, scenario, no_nodes):
    out = tmp_path / "run"
    fabricate_run(out, alone=("node2",))
    r = invoke("scenario", "run", scenario, "--out", out)
    assert r.exit_code == 1
    assert "0/2 trained alone" in next(line for line in r.output.splitlines() if " node2 " in line)
    assert "nodes that trained alone, never hearing from a neighbour: node2" in r.stderr
    assert "node0" not in r.stderr and "did not finish" not in r.stderr


# ================================================================ quiet libraries
def test_node_environment_silences_progress_bars():
    env = node_env(0, 4, NodeConfig(node_id="n", state_dir="s"))
    assert all(env[k] == v for k, v in QUIET_ENV.items())


def test_preparing_a_tiny_scenario_shows_no_progress_bars(tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    spec = ScenarioSpec(nodes=2, tiny_model=TinyModelSpec(hidden_size=16))
    lines: list[str] = []
    enabled = hf_logging.is_progress_bar_enabled()
    prepare(spec, tmp_path, {"node0": "m:1", "node1": "m:2"}, echo=lines.append)
    captured = capfd.readouterr()
    assert "Writing model shards" not in captured.out + captured.err
    assert "it/s" not in captured.out + captured.err
    assert hf_logging.is_progress_bar_enabled() == enabled  # the caller's setting is back
    assert lines == [
        f"writing demo data for 2 sites under {tmp_path / 'data'}",
        f"preparing the tiny model (llama, 2 layers, hidden 16) under {tmp_path / 'model'}",
        f"mutual TLS between the nodes: a CA and one certificate per node under {tmp_path / 'pki'}",
    ]


@pytest.mark.slow
def test_a_node_process_loads_its_model_without_progress_bars(tiny_llama_dir):
    """The bar transformers draws while loading weights is in a node's log unless node_env stops it."""
    code = (
        "from transformers import AutoModelForCausalLM; "
        f"AutoModelForCausalLM.from_pretrained({str(tiny_llama_dir)!r})"
    )
    env = node_env(0, 1, NodeConfig(node_id="n", state_dir="s"))

    def log(env: dict[str, str]) -> str:
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return p.stdout + p.stderr

    assert "Loading weights" not in log(env)
    assert "Loading weights" in log({k: v for k, v in env.items() if k not in QUIET_ENV})  # it would be
