"""The netns runner: every node a process in its own network namespace, on a bridge, with real
bandwidth limits on the links the scenario slows down.

Layout of one run (tag = 4 random hex digits, so runs on one host do not collide):

    root namespace:  bridge fp<tag>br (no address: nothing in the root namespace joins the mesh)
    per node i:      namespace fp-<tag>-<node>, veth fp<tag>h<i> (bridge side) <-> eth0 (node side)
                     eth0 = 10.77.0.(10+i)/24, lo up; the node listens on 10.77.0.(10+i):50051

A whole-run bandwidth cap of a `slow` fault on link a-b is shaped in the kernel: on a's eth0, an
`htb` class of that rate takes the packets for b's address (u32 filter), and the same on b's eth0
towards a. A plain `tbf` would shape all of a node's egress (one rate per interface); the class
per destination makes the cap per *link*. Delay and loss (this kernel has no netem) and
round-limited faults stay emulated in the transport, as with every runner.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from fedpeer.config import NodeConfig
from fedpeer.errors import FedpeerError
from fedpeer.scenario.runner import Echo, MeshRunner, ProcessLauncher
from fedpeer.scenario.spec import PreparedScenario, ScenarioSpec, node_names, prepare

SUBNET = "10.77.0"
FIRST_HOST = 10
PORT = 50051
# Rate of the default htb class: traffic on links the scenario does not slow is not limited.
UNSHAPED = "10gbit"


def netns_addresses(names: list[str]) -> dict[str, str]:
    if len(names) > 254 - FIRST_HOST:
        raise FedpeerError(
            f"the netns runner puts at most {254 - FIRST_HOST} nodes on one /24, got {len(names)}"
        )
    return {n: f"{SUBNET}.{FIRST_HOST + i}:{PORT}" for i, n in enumerate(names)}


def check_netns_support() -> None:
    """Refuse early, in one line, where namespaces cannot be made."""
    if os.geteuid() != 0:
        raise FedpeerError(
            "--runner netns creates network namespaces and needs root: run it as root (sudo), "
            "or use --runner process"
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise FedpeerError(
            f"--runner netns needs {' and '.join(missing)} (iproute2): apt-get install -y iproute2"
        )


def prepare_for_netns(spec: ScenarioSpec, out_dir: str | Path) -> PreparedScenario:
    check_netns_support()
    return prepare(spec, out_dir, netns_addresses(node_names(spec)), kernel_bandwidth=True)


def kernel_links(spec: ScenarioSpec) -> dict[tuple[str, str], float]:
    """(a, b) -> Mbit/s for every whole-run bandwidth cap (both directions listed)."""
    out: dict[tuple[str, str], float] = {}
    for f in spec.faults:
        if f.whole_run_bandwidth():
            a, b = f.link
            for pair in ((a, b), (b, a)):
                out[pair] = min(out.get(pair, f.bandwidth_mbit), f.bandwidth_mbit)
    return out


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise FedpeerError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.returncode}")


def _quiet(cmd: list[str]) -> None:
    """For teardown: what is already gone is fine."""
    subprocess.run(cmd, capture_output=True)


class NetnsLauncher(ProcessLauncher):
    """ProcessLauncher whose nodes run under `ip netns exec`; builds and removes the network."""

    def __init__(self, prepared: PreparedScenario, echo: Echo = print) -> None:
        super().__init__(len(prepared.nodes), wrap=self._in_namespace)
        self.prepared = prepared
        self.echo = echo
        self.tag = secrets.token_hex(2)
        self.bridge = f"fp{self.tag}br"
        self.names = [cfg.node_id for cfg in prepared.nodes]
        self.ips = {cfg.node_id: cfg.address.rpartition(":")[0] for cfg in prepared.nodes}
        self.namespaces: list[str] = []
        self.forward_rule: list[str] | None = None
        self.ready = False

    def namespace(self, node_id: str) -> str:
        return f"fp-{self.tag}-{node_id}"

    def _in_namespace(self, node_id: str, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(node_id), *cmd]

    def start(self, cfg: NodeConfig) -> None:
        if not self.ready:  # here, not in __init__: MeshRunner tears down whatever start() began
            self.setup()
        super().start(cfg)

    # --- the network -----------------------------------------------------------------------
    def setup(self) -> None:
        self.ready = True
        self.echo(
            f"netns: bridge {self.bridge}, namespaces fp-{self.tag}-<node> for {len(self.names)} nodes "
            f"({self.ips[self.names[0]]}..{self.ips[self.names[-1]]}/24)"
        )
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "link", "set", self.bridge, "up"])
        self._accept_bridged_traffic()
        for i, name in enumerate(self.names):
            self._add_node(i, name)
        for (a, b), mbit in sorted(kernel_links(self.prepared.spec).items()):
            if a < b:
                self.echo(f"netns: link {a}-{b} shaped to {mbit:g} Mbit/s each way (tc htb)")
        self._shape()

    def _add_node(self, i: int, name: str) -> None:
        ns, host_if, node_if = self.namespace(name), f"fp{self.tag}h{i}", f"fp{self.tag}n{i}"
        _run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", node_if, "netns", ns])
        _run(["ip", "-n", ns, "link", "set", node_if, "name", "eth0"])
        _run(["ip", "-n", ns, "addr", "add", f"{self.ips[name]}/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "link", "set", host_if, "master", self.bridge, "up"])

    def _accept_bridged_traffic(self) -> None:
        """With br_netfilter loaded (Docker loads it), bridged packets cross iptables' FORWARD chain,
        whose policy Docker sets to DROP: let this bridge's own traffic through."""
        flag = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        if flag.exists() and flag.read_text().strip() == "1" and shutil.which("iptables"):
            rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
            _run(["iptables", "-I", *rule])
            self.forward_rule = rule

    def _shape(self) -> None:
        per_node: dict[str, list[tuple[str, float]]] = {}
        for (a, b), mbit in kernel_links(self.prepared.spec).items():
            per_node.setdefault(a, []).append((b, mbit))
        for a, targets in per_node.items():
            tc = ["ip", "netns", "exec", self.namespace(a), "tc"]
            # Class 1:1 (the default) carries all other traffic at full speed; one class per link.
            _run([*tc, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1"])
            _run([*tc, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:1",
                  "htb", "rate", UNSHAPED, "quantum", "60000"])  # fmt: skip
            for k, (b, mbit) in enumerate(sorted(targets)):
                cls = f"1:{10 + k}"
                _run([*tc, "class", "add", "dev", "eth0", "parent", "1:", "classid", cls,
                      "htb", "rate", f"{mbit}mbit", "ceil", f"{mbit}mbit"])  # fmt: skip
                _run([*tc, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
                      "u32", "match", "ip", "dst", f"{self.ips[b]}/32", "flowid", cls])  # fmt: skip

    def teardown(self) -> None:
        super().teardown()
        if not self.ready:
            return
        for ns in self.namespaces:  # deleting a namespace deletes its veth pair
            _quiet(["ip", "netns", "del", ns])
        _quiet(["ip", "link", "del", self.bridge])
        if self.forward_rule:
            _quiet(["iptables", "-D", *self.forward_rule])
        self.echo(f"netns: removed {len(self.namespaces)} namespaces and bridge {self.bridge}")
        self.namespaces, self.forward_rule, self.ready = [], None, False


def NetnsRunner(prepared: PreparedScenario, echo: Echo = print) -> MeshRunner:  # noqa: N802
    """Every node a process in its own network namespace (root; see prepare_for_netns)."""
    return MeshRunner(prepared, NetnsLauncher(prepared, echo), echo)
