"""Run a prepared scenario: every node as its own OS process on 127.0.0.1 (real gRPC), or every node
as a thread with the in-memory transport (tests, large simulations). Same nodes, same files out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpeer.config import NodeConfig, dump_toml, to_dict
from fedpeer.errors import FedpeerError
from fedpeer.metrics import FILENAME as METRICS_FILE
from fedpeer.metrics import read_metrics
from fedpeer.scenario.spec import PreparedScenario, ScenarioSpec, node_names, prepare

Echo = Callable[[str], None]


def free_loopback_addresses(names: list[str]) -> dict[str, str]:
    """Distinct free TCP ports on 127.0.0.1, one per node."""
    socks, out = [], {}
    try:
        for n in names:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            out[n] = f"127.0.0.1:{s.getsockname()[1]}"
    finally:
        for s in socks:
            s.close()
    return out


@dataclass
class NodeProcess:
    cfg: NodeConfig
    config_path: Path
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    killed_at: list[float] = field(default_factory=list)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        cmd = [sys.executable, "-m", "fedpeer_cli", "node", "run", "--config", str(self.config_path)]
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        self.starts += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)


class ProcessRunner:
    """Starts one `fedpeer node run` process per node, shows progress, applies faults, tears down."""

    def __init__(self, prepared: PreparedScenario, echo: Echo = print) -> None:
        self.prepared = prepared
        self.echo = echo
        self.nodes = {cfg.node_id: self._node_process(i, cfg) for i, cfg in enumerate(prepared.nodes)}
        self.faults_done: set[int] = set()

    def _node_process(self, index: int, cfg: NodeConfig) -> NodeProcess:
        node_dir = Path(cfg.state_dir)
        node_dir.mkdir(parents=True, exist_ok=True)
        config_path = node_dir / "node.toml"
        config_path.write_text(
            f"# written by `fedpeer scenario run` for {cfg.node_id}\n" + dump_toml(to_dict(cfg))
        )
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        gpus = _gpu_count()
        if gpus > 1 and cfg.train.device in ("auto", "cuda"):
            env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)  # spread nodes over the GPUs
        # Many nodes share few cores: one intra-op thread each avoids oversubscription.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(self.prepared.nodes))))
        return NodeProcess(cfg, config_path, node_dir / "node.log", env)

    def run(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        spec = self.prepared.spec
        total = spec.gossip.rounds
        limit = timeout_s or (spec.gossip.join_timeout_s + total * (spec.gossip.round_timeout_s + 60) + 120)
        self.echo(
            f"starting {len(self.nodes)} nodes ({spec.topology}, {total} rounds) under "
            f"{self.prepared.out_dir}; logs in <node>/node.log"
        )
        t0 = time.monotonic()
        shown = 0
        try:
            for n in self.nodes.values():
                n.start()
            while True:
                rounds = self.rounds_done()
                alive = [name for name, n in self.nodes.items() if n.running()]
                low = min(rounds[name] for name in alive) if alive else max(rounds.values())
                if low > shown:
                    shown = low
                    self.echo(progress_line(self.prepared, shown, total, time.monotonic() - t0))
                self.apply_faults(rounds, alive)
                if not alive and not self.pending_restarts(alive):
                    break
                if time.monotonic() - t0 > limit:
                    self.echo(f"scenario exceeded {limit:.0f} s; stopping the nodes")
                    break
                time.sleep(0.5)
        finally:
            self.teardown()
        for name, n in self.nodes.items():
            code = n.proc.returncode if n.proc else None
            if code not in (0, None) and n.starts and not (n.killed_at and code == -signal.SIGKILL):
                self.echo(
                    f"{name} exited with code {code}; last lines of {n.log_path}:\n" + _tail(n.log_path)
                )
        return summarize(self.prepared)

    def rounds_done(self) -> dict[str, int]:
        return {
            name: max((r["round"] for r in read_metrics(Path(n.cfg.state_dir) / METRICS_FILE)), default=0)
            for name, n in self.nodes.items()
        }

    def pending_restarts(self, alive: list[str]) -> bool:
        """A killed node still waiting for its restart (only while others run to meet it)."""
        return bool(alive) and any(
            f.restart_at_round and self.nodes[f.node].starts < 2
            for i, f in enumerate(self.prepared.spec.faults)
            if i in self.faults_done
        )

    def apply_faults(self, rounds: dict[str, int], alive: list[str]) -> None:
        for i, f in enumerate(self.prepared.spec.faults):
            node = self.nodes.get(f.node)
            if node is None:
                raise FedpeerError(
                    f"fault {i} names unknown node {f.node!r}; nodes are {', '.join(self.nodes)}"
                )
            if i not in self.faults_done:
                if rounds[f.node] >= f.at_round and node.running():
                    node.stop(signal.SIGKILL)
                    node.killed_at.append(time.monotonic())
                    self.faults_done.add(i)
                    self.echo(f"fault: killed {f.node} (SIGKILL) after its round {rounds[f.node]}")
                continue
            others = [rounds[n] for n in alive if n != f.node]
            if f.restart_at_round and node.starts < 2 and others and min(others) >= f.restart_at_round:
                node.start()
                self.echo(f"fault: restarted {f.node} (the others are at round {min(others)})")

    def teardown(self) -> None:
        for n in self.nodes.values():
            n.stop(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for n in self.nodes.values():
            while n.running() and time.monotonic() < deadline:
                time.sleep(0.1)
            n.stop(signal.SIGKILL)
            if n.proc is not None:
                n.proc.wait()


def run_inprocess(prepared: PreparedScenario, recorder: Any = None) -> list[dict[str, Any]]:
    """All nodes as threads of this process over the in-memory transport."""
    from fedpeer.node import Node
    from fedpeer.transport.memory import MemoryNetwork, MemoryTransport

    net = MemoryNetwork()
    nodes = [Node(cfg, MemoryTransport(net, recorder=recorder)) for cfg in prepared.nodes]
    errors: list[BaseException] = []

    def run(node: Node) -> None:
        try:
            node.run()
        except BaseException as exc:  # surfaced below, with the node's name
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,), name=n.cfg.node_id) for n in nodes]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return summarize(prepared)


def summarize(prepared: PreparedScenario) -> list[dict[str, Any]]:
    rows = []
    for cfg in prepared.nodes:
        recs = read_metrics(Path(cfg.state_dir) / METRICS_FILE)
        last = recs[-1] if recs else {}
        rows.append(
            {
                "node": cfg.node_id,
                "rounds": len(recs),
                "last_round": last.get("round", 0),
                "train_loss": last.get("train_loss"),
                "eval_loss": last.get("eval_loss"),
                "accuracy": last.get("accuracy"),
                "macro_f1": last.get("macro_f1"),
                "consensus_distance": last.get("consensus_distance"),
                "bytes_sent_per_round": _median([r["bytes_sent"] for r in recs]),
                "round_s": _median([r["round_s"] for r in recs]),
            }
        )
    return rows


def progress_line(prepared: PreparedScenario, rnd: int, total: int, elapsed: float) -> str:
    recs = []
    for cfg in prepared.nodes:
        recs += [r for r in read_metrics(Path(cfg.state_dir) / METRICS_FILE) if r["round"] == rnd]
    loss = _mean([r.get("train_loss") for r in recs])
    ev = _mean([r.get("eval_loss") for r in recs])
    cd = _mean([r.get("consensus_distance") for r in recs])
    kb = _mean([r.get("bytes_sent") for r in recs])
    return (
        f"[{elapsed:6.1f}s] round {rnd}/{total}: mean train_loss {_fmt(loss)}  eval_loss {_fmt(ev)}  "
        f"consensus {_fmt(cd)}  sent {_fmt(kb and kb / 1e3)} kB/node"
    )


def _mean(xs: list[Any]) -> float | None:
    vals = [x for x in xs if isinstance(x, int | float)]
    return sum(vals) / len(vals) if vals else None


def _median(xs: list[Any]) -> float | None:
    vals = [x for x in xs if isinstance(x, int | float)]
    return statistics.median(vals) if vals else None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no CUDA build, no driver: no GPUs
        return 0


def prepare_for_processes(spec: ScenarioSpec, out_dir: str | Path) -> PreparedScenario:
    return prepare(spec, out_dir, free_loopback_addresses(node_names(spec)))


def prepare_for_memory(spec: ScenarioSpec, out_dir: str | Path) -> PreparedScenario:
    return prepare(spec, out_dir, {n: f"mem-{n}:1" for n in node_names(spec)})
