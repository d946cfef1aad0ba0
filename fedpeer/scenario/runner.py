"""Run a prepared scenario: every node as its own OS process on 127.0.0.1 (real gRPC), or every node
as a thread with the in-memory transport (tests, large simulations). Same nodes, same files out.

What the run prints and summarizes is in summary.py; an earlier run under OUT and --fresh in rundir.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fedpeer.config import NodeConfig, dump_toml, to_dict
from fedpeer.metrics import FILENAME as METRICS_FILE
from fedpeer.metrics import read_records
from fedpeer.scenario.rundir import (
    NODE_CONFIG_FILE,
    NODE_LOG_FILE,
    clear_run,
    previous_run,
    previous_run_line,
)
from fedpeer.scenario.spec import PreparedScenario, ScenarioSpec, node_names, prepare
from fedpeer.scenario.summary import SUMMARY_FILE, progress_line, summarize, summarize_out

__all__ = [
    "HEARTBEAT_S",
    "QUIET_ENV",
    "Echo",
    "Launcher",
    "MeshRunner",
    "ProcessLauncher",
    "ProcessRunner",
    "free_loopback_addresses",
    "node_command",
    "node_env",
    "prepare_for_memory",
    "prepare_for_processes",
    "quiet_progress_bars",
    "run_inprocess",
    "write_node_config",
    # re-exported from summary.py and rundir.py: `fedpeer scenario run` reaches them through this module
    "SUMMARY_FILE",
    "clear_run",
    "previous_run",
    "previous_run_line",
    "summarize",
    "summarize_out",
]

Echo = Callable[[str], None]

# Library progress bars (tqdm from transformers / huggingface_hub) only clutter node logs.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
HEARTBEAT_S = 5.0  # say what the runner waits for when no round completed for this long


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


class Launcher(Protocol):
    """How a runner starts and stops nodes: OS processes, processes in network namespaces, containers.

    The mesh driver (`MeshRunner`) only needs these calls; metrics are read from each node's
    state_dir, which every launcher makes visible on this machine.
    """

    def start(self, cfg: NodeConfig) -> None: ...

    def running(self, node_id: str) -> bool: ...

    def kill(self, node_id: str) -> None:
        """Stop a node abruptly (SIGKILL or equivalent): no chance to clean up."""

    def exit_code(self, node_id: str) -> int | None: ...

    def log_path(self, node_id: str) -> Path: ...

    def teardown(self) -> None:
        """Stop everything this launcher started; safe to call twice and after failures."""


def write_node_config(cfg: NodeConfig) -> Path:
    node_dir = Path(cfg.state_dir)
    node_dir.mkdir(parents=True, exist_ok=True)
    path = node_dir / NODE_CONFIG_FILE
    path.write_text(f"# written by `fedpeer scenario run` for {cfg.node_id}\n" + dump_toml(to_dict(cfg)))
    return path


def node_env(index: int, n_nodes: int, cfg: NodeConfig) -> dict[str, str]:
    """Environment of a node process: offline hub, no progress bars, GPU assignment, one BLAS thread
    pool per core share."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)  # a user who wants the bars back sets them
    gpus = _gpu_count()
    if gpus > 1 and cfg.train.device in ("auto", "cuda"):
        env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)  # spread nodes over the GPUs
    # Many nodes share few cores: splitting the cores avoids oversubscription.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n_nodes)))
    return env


def node_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "fedpeer_cli", "node", "run", "--config", str(config_path)]


class ProcessLauncher:
    """Each node a child process on this machine (its own session, so a kill takes its children)."""

    def __init__(self, n_nodes: int, wrap: Callable[[str, list[str]], list[str]] | None = None) -> None:
        self.n_nodes = n_nodes
        self.wrap = wrap  # e.g. `ip netns exec NS ...` for the netns runner
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self._index: dict[str, int] = {}

    def command(self, cfg: NodeConfig, config_path: Path) -> list[str]:
        """The node's command line (launchers that run it elsewhere, e.g. in a container, override it)."""
        cmd = node_command(config_path)
        return cmd if self.wrap is None else self.wrap(cfg.node_id, cmd)

    def start(self, cfg: NodeConfig) -> None:
        config_path = write_node_config(cfg)
        self._index.setdefault(cfg.node_id, len(self._index))
        self.logs[cfg.node_id] = Path(cfg.state_dir) / NODE_LOG_FILE
        cmd = self.command(cfg, config_path)
        with open(self.logs[cfg.node_id], "ab") as log:
            self.procs[cfg.node_id] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=node_env(self._index[cfg.node_id], self.n_nodes, cfg),
            )

    def running(self, node_id: str) -> bool:
        p = self.procs.get(node_id)
        return p is not None and p.poll() is None

    def _signal(self, node_id: str, sig: int) -> None:
        if self.running(node_id):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.procs[node_id].pid, sig)

    def kill(self, node_id: str) -> None:
        self._signal(node_id, signal.SIGKILL)

    def exit_code(self, node_id: str) -> int | None:
        p = self.procs.get(node_id)
        return None if p is None else p.poll()

    def log_path(self, node_id: str) -> Path:
        return self.logs[node_id]

    def teardown(self) -> None:
        for node_id in self.procs:
            self._signal(node_id, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for node_id, p in self.procs.items():
            while p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            self._signal(node_id, signal.SIGKILL)
            p.wait()


class MeshRunner:
    """Starts every node through a launcher, shows progress, applies the fault schedule, tears down."""

    def __init__(
        self,
        prepared: PreparedScenario,
        launcher: Launcher,
        echo: Echo = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prepared = prepared
        self.launcher = launcher
        self.echo = echo
        self.clock = clock
        self.configs = {cfg.node_id: cfg for cfg in prepared.nodes}
        self.starts: dict[str, int] = dict.fromkeys(self.configs, 0)
        self.killed: set[str] = set()
        self.faults_done: set[int] = set()
        self.t0 = self.last_said = clock()
        self.first_round = self.shown = 0  # rounds an earlier (resumed) run already reported

    def start(self, node_id: str) -> None:
        self.launcher.start(self.configs[node_id])
        self.starts[node_id] += 1

    def say(self, line: str) -> None:
        self.echo(line)
        self.last_said = self.clock()

    def run(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        g = self.prepared.spec.gossip
        limit = timeout_s or (g.join_timeout_s + g.rounds * (g.round_timeout_s + 60) + 120)
        self.t0 = self.last_said = self.clock()
        self.first_round = self.shown = min(self.rounds_done().values(), default=0)
        try:
            self.start_all()
            while True:
                rounds = self.rounds_done()
                alive = [n for n in self.configs if self.launcher.running(n)]
                self.report(rounds, alive)
                self.apply_faults(rounds, alive)
                if not alive and not self.pending_restarts(alive):
                    break
                if self.clock() - self.t0 > limit:
                    self.say(f"scenario exceeded {limit:.0f} s; stopping the nodes")
                    break
                time.sleep(0.5)
        finally:
            self.launcher.teardown()
        self.report_exits()
        return summarize(self.prepared)

    def start_all(self) -> None:
        spec = self.prepared.spec
        self.say(
            f"starting {len(self.configs)} nodes ({spec.topology}, {spec.gossip.rounds} rounds) under "
            f"{self.prepared.out_dir}; logs in <node>/{NODE_LOG_FILE}"
        )
        for node_id, cfg in self.configs.items():
            peers = ", ".join(p.id for p in cfg.neighbours) or "none"
            self.say(f"  starting {node_id} on {cfg.advertise or cfg.listen} (neighbours: {peers})")
            self.start(node_id)
        self.say("waiting for the nodes to load the model and join the mesh (each waits for its neighbours)")

    def report(self, rounds: dict[str, int], alive: list[str]) -> None:
        """A progress line when every running node completed a new round; otherwise, after
        HEARTBEAT_S of silence, a line on what the runner is waiting for."""
        low = min(rounds[n] for n in alive) if alive else max(rounds.values())
        now = self.clock()
        if low > self.shown:
            for rnd in range(self.shown + 1, low + 1):  # every round, even when polls skip some
                self.say(progress_line(self.prepared, rnd, self.prepared.spec.gossip.rounds, now - self.t0))
            self.shown = low
        elif alive and now - self.last_said >= HEARTBEAT_S:
            self.say(self.waiting_line(rounds, alive, now - self.t0))

    def waiting_line(self, rounds: dict[str, int], alive: list[str], elapsed: float) -> str:
        n, total = len(self.configs), self.prepared.spec.gossip.rounds
        if max(rounds.values()) <= self.first_round:
            return f"[{elapsed:6.1f}s] waiting for the nodes to join: {len(alive)}/{n} running, no round yet"
        if self.shown >= total:
            return f"[{elapsed:6.1f}s] all {total} rounds done; waiting for {len(alive)}/{n} nodes to exit"
        done = sum(rounds[k] > self.shown for k in self.configs)
        return (
            f"[{elapsed:6.1f}s] waiting for round {self.shown + 1}/{total}: {done}/{n} nodes done with it, "
            f"{len(alive)} running"
        )

    def report_exits(self) -> None:
        for node_id in self.configs:
            code = self.launcher.exit_code(node_id)
            if code not in (0, None) and node_id not in self.killed:
                self.echo(
                    f"{node_id} exited with code {code}; last lines of its log:\n"
                    + _tail(self.launcher.log_path(node_id))
                )

    def rounds_done(self) -> dict[str, int]:
        return {
            n: max((r.round for r in read_records(Path(cfg.state_dir) / METRICS_FILE)), default=0)
            for n, cfg in self.configs.items()
        }

    def pending_restarts(self, alive: list[str]) -> bool:
        """A killed node still waiting for its restart (only while others run to meet it)."""
        return bool(alive) and any(
            f.restart_at_round and self.starts[f.node] < 2
            for i, f in enumerate(self.prepared.spec.faults)
            if i in self.faults_done and f.kind == "kill"
        )

    def apply_faults(self, rounds: dict[str, int], alive: list[str]) -> None:
        """Kills and restarts; link faults act inside the nodes' transports (their [[links]])."""
        for i, f in enumerate(self.prepared.spec.faults):
            if f.kind != "kill":
                continue
            if i not in self.faults_done:
                if rounds[f.node] >= f.at_round and self.launcher.running(f.node):
                    self.launcher.kill(f.node)
                    self.killed.add(f.node)
                    self.faults_done.add(i)
                    self.say(f"fault: killed {f.node} (SIGKILL) after its round {rounds[f.node]}")
                continue
            others = [rounds[n] for n in alive if n != f.node]
            due = f.restart_at_round and others and min(others) >= f.restart_at_round
            if due and self.starts[f.node] < 2:
                self.start(f.node)
                self.say(f"fault: restarted {f.node} (the others are at round {min(others)})")


def ProcessRunner(prepared: PreparedScenario, echo: Echo = print) -> MeshRunner:  # noqa: N802
    """Every node its own OS process on 127.0.0.1 over real gRPC."""
    return MeshRunner(prepared, ProcessLauncher(len(prepared.nodes)), echo)


def run_inprocess(prepared: PreparedScenario, recorder: Any = None) -> list[dict[str, Any]]:
    """All nodes as threads of this process over the in-memory transport."""
    from fedpeer.node import Node, build_node
    from fedpeer.transport.emulated import emulate_links
    from fedpeer.transport.memory import MemoryNetwork, MemoryTransport

    net = MemoryNetwork()
    nodes = [
        build_node(cfg, emulate_links(MemoryTransport(net, recorder=recorder), cfg)) for cfg in prepared.nodes
    ]
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


def prepare_for_processes(
    spec: ScenarioSpec, out_dir: str | Path, echo: Echo | None = None
) -> PreparedScenario:
    return prepare(spec, out_dir, free_loopback_addresses(node_names(spec)), echo=echo)


def prepare_for_memory(spec: ScenarioSpec, out_dir: str | Path, echo: Echo | None = None) -> PreparedScenario:
    # In-process nodes over memory: no network, nothing for TLS to protect.
    return prepare(spec, out_dir, {n: f"mem-{n}:1" for n in node_names(spec)}, echo=echo, tls=False)


def quiet_progress_bars() -> None:
    """No tqdm bars from transformers / huggingface_hub in this process (nodes run as its threads)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()
