"""Scenario files: one TOML describes a whole mesh; every runner starts the same nodes from it.

A scenario holds the topology, how to get the model (a local path/id, or a tiny model built on
the spot) and the data (a generator, or one JSONL file per node), node settings shared by all
nodes (the same `[model]`, `[adapter]`, `[train]`, `[gossip]`, `[codec]` tables as a node config),
and an optional fault schedule. `prepare` turns it into one `NodeConfig` per node under OUT/.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from fedpeer.config import (
    AdapterConfig,
    CodecConfig,
    GossipConfig,
    LinkConfig,
    ModelConfig,
    NodeConfig,
    PeerConfig,
    TlsConfig,
    TrainConfig,
    convert_value,
    from_dict,
)
from fedpeer.config.load import read_toml
from fedpeer.errors import ConfigError
from fedpeer.gossip.topology import SCHEDULE_KINDS, Schedule, build_schedule, build_topology, neighbours


@dataclass(frozen=True)
class TinyModelSpec:
    """A small randomly initialized model built locally (no download) from the scenario's corpus."""

    arch: str = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    seed: int = 0


@dataclass(frozen=True)
class DataSpec:
    # "demo": small synthetic report-style sites (fedpeer.datasets.synth); "clinical": the
    # heterogeneous multi-site generator (fedpeer.datasets.clinical); "files": `files` below.
    generator: str = "demo"
    n_train: int = 200
    n_eval: int = 50
    seed: int = 0
    # clinical: Dirichlet concentration of each site's label mix (small = strong label skew).
    alpha: float = 0.5
    # One JSONL per node, in node order (relative to the scenario file), when generator = "files".
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class SimSpec:
    """Settings of the simulation runners (`--runner sim`, `--runner ray`) only."""

    # Fraction of the nodes that train (and evaluate) each round, drawn anew every round from
    # topology_seed; every node still gossips every round. 1.0: all of them.
    participation: float = 1.0
    # --runner ray: the Ray actors, each one base model and a block of nodes (one CPU each);
    # 0: one per CPU of the Ray cluster (at most one per node).
    actors: int = 0
    # --runner ray: the cluster to join ("HOST:6379" of `ray start --head`, or "auto"); empty: the
    # RAY_ADDRESS environment variable if set, else a Ray started on this machine for the run.
    ray_address: str = ""


FAULT_KINDS = ("kill", "cut", "partition", "slow")


@dataclass(frozen=True)
class FaultSpec:
    # kill: SIGKILL `node` once it completed round `at_round`; restart it when the others reach
    # `restart_at_round` (0 = never). The runner does it (process, container).
    kind: str = "kill"
    node: str = ""
    at_round: int = 1
    restart_at_round: int = 0
    # cut / slow: the topology link between the two nodes of `link`.
    link: tuple[str, ...] = ()
    # partition: every link between two different groups is cut; nodes in no group form one more.
    groups: tuple[tuple[str, ...], ...] = ()
    # cut, partition, slow: rounds from_round..to_round, both included (to_round 0 = to the end).
    # They reach each node as [[links]] in its node.toml and act inside its transport, so they work
    # the same with every runner; the link heals at to_round + 1 and the nodes resync.
    from_round: int = 1
    to_round: int = 0
    # slow: added latency per message, probability of losing an update, bandwidth cap (0 = none).
    delay_ms: float = 0.0
    loss: float = 0.0
    bandwidth_mbit: float = 0.0

    def link_config(self, peer: str) -> LinkConfig:
        """This fault as seen from one end of an affected link."""
        return LinkConfig(
            peer=peer,
            from_round=self.from_round,
            to_round=self.to_round,
            cut=self.kind in ("cut", "partition"),
            delay_ms=self.delay_ms,
            loss=self.loss,
            bandwidth_mbit=self.bandwidth_mbit,
        )

    def whole_run_bandwidth(self) -> bool:
        """A bandwidth cap for the whole run: the netns runner shapes it in the kernel instead."""
        return self.kind == "slow" and self.bandwidth_mbit > 0 and self.from_round <= 1 and self.to_round == 0


@dataclass(frozen=True)
class ScenarioSpec:
    name: str = "scenario"
    nodes: int = 4
    topology: str = "ring"
    # Only for topology = "explicit": pairs of node names.
    edges: tuple[tuple[str, ...], ...] = ()
    # Only for topology = "file": an edge list (relative to the scenario file), one `a b` per line;
    # directed = true reads each line as an arc a -> b (push-sum mixing, --runner sim only).
    graph_file: str = ""
    directed: bool = False
    topology_seed: int = 0
    tiny_model: TinyModelSpec | None = None
    data: DataSpec = DataSpec()
    model: ModelConfig = ModelConfig()
    adapter: AdapterConfig = AdapterConfig()
    train: TrainConfig = TrainConfig()
    gossip: GossipConfig = GossipConfig()
    codec: CodecConfig = CodecConfig()
    faults: tuple[FaultSpec, ...] = ()
    # Nodes talk over mutual TLS with a CA and certificates made under OUT/pki; false: plaintext
    # (e.g. `--set tls=false` to measure what TLS costs). In-process (memory) runs have no network.
    tls: bool = True
    sim: SimSpec = SimSpec()
    source: str = ""  # the file it came from

    @functools.cached_property
    def graph(self) -> Any:
        """The topology (a frozen networkx graph), built once per spec: every step of a run reads this one.

        Raises ConfigError for a topology that cannot be built."""
        return _build_graph(self)

    @functools.cached_property
    def schedule(self) -> Schedule:
        """The graph of each round (graphs that change per round, directed graphs: --runner sim)."""
        return _build_schedule(self)

    @property
    def needs_sim(self) -> bool:
        """Only the sim runner can run this topology (a graph per round, or a directed graph)."""
        return self.schedule.dynamic or self.schedule.directed


def load_scenario(path: str | Path) -> ScenarioSpec:
    path = Path(path)
    data = read_toml(path, "scenario file", "see scenarios/ for examples")
    try:
        spec = parse_scenario(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return dataclasses.replace(spec, source=str(path.resolve()))


def parse_scenario(data: dict[str, Any]) -> ScenarioSpec:
    data = dict(data)
    tiny = data.pop("tiny_model", None)
    spec = from_dict(ScenarioSpec, data)
    if tiny is not None:
        spec = dataclasses.replace(spec, tiny_model=from_dict(TinyModelSpec, tiny, "tiny_model"))
    if spec.nodes < 2 and spec.topology != "explicit":
        raise ConfigError(f"nodes must be >= 2, got {spec.nodes}")
    for i, f in enumerate(spec.faults):
        _check_fault(f, f"faults[{i}]")
    if not 0.0 < spec.sim.participation <= 1.0:
        raise ConfigError(f"sim.participation must be in (0, 1], got {spec.sim.participation}")
    if spec.sim.actors < 0:
        raise ConfigError(f"sim.actors must be >= 0 (0: one per CPU of Ray), got {spec.sim.actors}")
    if spec.data.generator not in ("demo", "clinical", "files"):
        raise ConfigError(f"data.generator must be demo, clinical or files, got {spec.data.generator!r}")
    return spec


def _check_fault(f: FaultSpec, where: str) -> None:
    if f.kind not in FAULT_KINDS:
        raise ConfigError(f"{where}.kind must be one of {', '.join(FAULT_KINDS)}, got {f.kind!r}")
    if f.kind == "kill":
        if not f.node:
            raise ConfigError(f"{where}.node must name the node to kill")
        if f.restart_at_round and f.restart_at_round <= f.at_round:
            raise ConfigError(f"{where}.restart_at_round must come after at_round")
        return
    if f.kind in ("cut", "slow") and (len(f.link) != 2 or f.link[0] == f.link[1]):
        raise ConfigError(f'{where}.link must be two different node names, e.g. ["node0", "node1"]')
    if f.kind == "partition" and not any(f.groups):
        raise ConfigError(f'{where}.groups must list the nodes of each side, e.g. [["node0", "node1"]]')
    if f.kind == "slow" and not (f.delay_ms or f.loss or f.bandwidth_mbit):
        raise ConfigError(f"{where}: a slow link needs delay_ms, loss or bandwidth_mbit")
    f.link_config("peer").validate(where)


def with_overrides(spec: ScenarioSpec, overrides: dict[str, Any]) -> ScenarioSpec:
    """Apply overrides such as {"nodes": 8, "gossip.rounds": 3, "train.lr": 0.0} (from the CLI)."""
    out = spec
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        target = getattr(out, section, None) if section else out
        if section and not dataclasses.is_dataclass(target):
            raise ConfigError(f"override {key}: {section!r} is not a section of a scenario")
        hints = typing.get_type_hints(type(target))
        if name not in hints:
            raise ConfigError(f"override {key}: {name!r} is not a setting of {section or 'the scenario'}")
        updated: Any = dataclasses.replace(target, **{name: convert_value(hints[name], value, key)})  # type: ignore[type-var]
        out = dataclasses.replace(out, **{section: updated}) if section else updated
    return out


@dataclass(frozen=True)
class PreparedScenario:
    spec: ScenarioSpec
    out_dir: Path
    nodes: tuple[NodeConfig, ...]


def prepare(
    spec: ScenarioSpec,
    out_dir: str | Path,
    addresses: dict[str, str],
    listen: dict[str, str] | None = None,
    kernel_bandwidth: bool = False,
    echo: Callable[[str], None] | None = None,
    tls: bool = True,
) -> PreparedScenario:
    """Build the model and data if the scenario says so, and one NodeConfig per node.

    `tls`: the nodes talk over mutual TLS, with a CA and a certificate per node made under
    OUT/pki (kept when a run resumes); False: plaintext (tls.insecure), e.g. for in-process runs
    or to measure what TLS costs.

    `addresses` maps node name -> HOST:PORT its neighbours dial (the runner decides: loopback
    ports, memory, namespace IPs, container names); `listen` where each node binds, when that
    differs (containers bind 0.0.0.0). `kernel_bandwidth`: the runner shapes whole-run bandwidth
    caps itself (netns, with tc), so the transports must not emulate them too. `echo` hears what
    is being prepared (data, model): it can take a few seconds.
    """
    say = echo or (lambda _: None)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    graph = spec.graph
    names = node_names(spec)
    links = node_links(spec, graph, names, kernel_bandwidth)
    missing = [n for n in names if n not in addresses]
    if missing:
        raise ConfigError(f"no address for nodes {missing}")
    if spec.data.generator != "files":
        say(f"writing {spec.data.generator} data for {len(names)} sites under {out / 'data'}")
    data_files = _data_files(spec, out, names)
    if spec.tiny_model is not None:
        t = spec.tiny_model
        say(
            f"preparing the tiny model ({t.arch}, {t.num_layers} layers, hidden {t.hidden_size}) "
            f"under {out / 'model'}"
        )
    model_cfg = _model_config(spec, out, data_files)
    tls_configs = {}
    if tls and spec.tls:
        say(f"mutual TLS between the nodes: a CA and one certificate per node under {out / 'pki'}")
        tls_configs = _mesh_tls(out / "pki", addresses, names)
    nodes = []
    for name in names:
        train_file, eval_file = data_files[name]
        cfg = NodeConfig(
            node_id=name,
            state_dir=str(out / name),
            listen=(listen or addresses)[name],
            advertise=addresses[name] if listen else "",
            neighbours=tuple(PeerConfig(j, addresses[j]) for j in neighbours(graph, name)),
            model=model_cfg,
            adapter=spec.adapter,
            train=dataclasses.replace(spec.train, data=str(train_file), eval_data=str(eval_file or "")),
            gossip=spec.gossip,
            codec=spec.codec,
            tls=tls_configs.get(name, TlsConfig(insecure=True)),
            links=tuple(links[name]),
        )
        cfg.validate()
        nodes.append(cfg)
    return PreparedScenario(spec=spec, out_dir=out, nodes=tuple(nodes))


def _mesh_tls(directory: Path, addresses: dict[str, str], names: list[str]) -> dict[str, TlsConfig]:
    """Each node's [tls]: a scenario CA and node certificates under OUT/pki (made once)."""
    from fedpeer.security.pki import CA_CERT, ensure_mesh

    hosts = {n: (addresses[n].rpartition(":")[0].strip("[]"),) for n in names}
    issued = ensure_mesh(directory, hosts)
    ca = str(directory / CA_CERT)
    return {n: TlsConfig(ca=ca, cert=str(issued[n].cert), key=str(issued[n].key)) for n in names}


def node_links(
    spec: ScenarioSpec, graph: Any, names: list[str], kernel_bandwidth: bool = False
) -> dict[str, list[LinkConfig]]:
    """The fault schedule's link faults, as each node's LinkConfigs (both ends of every link)."""
    out: dict[str, list[LinkConfig]] = {n: [] for n in names}
    for i, f in enumerate(spec.faults):
        where = f"faults[{i}]"
        unknown = [n for n in (f.node, *f.link, *(n for g in f.groups for n in g)) if n and n not in names]
        if unknown:
            raise ConfigError(f"{where}: {unknown[0]!r} is not a node of this scenario ({', '.join(names)})")
        if kernel_bandwidth and f.whole_run_bandwidth():
            f = dataclasses.replace(f, bandwidth_mbit=0.0)
            if not (f.delay_ms or f.loss):
                continue
        for a, b in _fault_edges(f, graph, names, where):
            out[a].append(f.link_config(b))
            out[b].append(f.link_config(a))
    return out


def _fault_edges(f: FaultSpec, graph: Any, names: list[str], where: str) -> list[tuple[str, str]]:
    if f.kind in ("cut", "slow"):
        a, b = f.link
        if not graph.has_edge(a, b):
            raise ConfigError(f"{where}.link {a}-{b} is not a link of this topology ({spec_edges(graph)})")
        return [(a, b)]
    if f.kind == "partition":
        side = {n: k for k, group in enumerate(f.groups) for n in group}
        rest = len(f.groups)  # nodes listed in no group stay together
        return [(a, b) for a, b in graph.edges if side.get(a, rest) != side.get(b, rest)]
    return []


def spec_edges(graph: Any) -> str:
    edges = sorted(graph.edges, key=lambda e: (_node_order(e[0]), _node_order(e[1])))
    return ", ".join(f"{a}-{b}" for a, b in edges)


def node_names(spec: ScenarioSpec) -> list[str]:
    return sorted(spec.graph.nodes, key=_node_order)


def node_neighbours(spec: ScenarioSpec) -> dict[str, list[str]]:
    """Each node's neighbours in the topology, nodes in order."""
    return {n: neighbours(spec.graph, n) for n in node_names(spec)}


def _build_graph(spec: ScenarioSpec) -> Any:
    if spec.topology in SCHEDULE_KINDS:
        return nx.freeze(spec.schedule.footprint())
    for i, e in enumerate(spec.edges):
        if len(e) != 2:
            raise ConfigError(f"edges[{i}] must be a pair of node names, got {list(e)}")
    edges = [(a, b) for a, b in spec.edges]
    return nx.freeze(build_topology(spec.topology, spec.nodes, seed=spec.topology_seed, edges=edges))


def _build_schedule(spec: ScenarioSpec) -> Schedule:
    if spec.topology not in SCHEDULE_KINDS:
        graph = spec.graph
        return Schedule(spec.topology, tuple(graph), False, False, spec.topology_seed, fixed=graph)
    graph_file = spec.graph_file
    if graph_file and spec.source:
        graph_file = str(Path(spec.source).parent / graph_file)
    return build_schedule(
        spec.topology, spec.nodes, seed=spec.topology_seed, graph_file=graph_file, directed=spec.directed
    )


def _node_order(name: str) -> tuple[int, str]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else -1, name)


def _data_files(spec: ScenarioSpec, out: Path, names: list[str]) -> dict[str, tuple[Path, Path | None]]:
    if spec.data.generator == "files":
        if len(spec.data.files) != len(names):
            raise ConfigError(f"data.files lists {len(spec.data.files)} files for {len(names)} nodes")
        base = Path(spec.source).parent if spec.source else Path.cwd()
        return {n: ((base / f).resolve(), None) for n, f in zip(names, spec.data.files, strict=True)}
    if spec.data.generator == "clinical":
        from fedpeer.datasets.clinical import write_clinical_sites

        sites = write_clinical_sites(
            out / "data",
            len(names),
            task=spec.model.task,
            alpha=spec.data.alpha,
            seed=spec.data.seed,
            n_train=spec.data.n_train,
            n_eval=spec.data.n_eval,
        )
    else:
        from fedpeer.datasets.synth import write_demo_sites

        sites = write_demo_sites(
            out / "data",
            len(names),
            task=spec.model.task,
            seed=spec.data.seed,
            n_train=spec.data.n_train,
            n_eval=spec.data.n_eval,
        )
    return {n: (Path(s) / "train.jsonl", Path(s) / "eval.jsonl") for n, s in zip(names, sites, strict=True)}


def _model_config(
    spec: ScenarioSpec, out: Path, data_files: dict[str, tuple[Path, Path | None]]
) -> ModelConfig:
    model = spec.model
    if spec.model.task == "seq-cls" and not model.labels and spec.data.generator == "demo":
        from fedpeer.datasets.synth import DEMO_LABELS

        model = dataclasses.replace(model, labels=tuple(DEMO_LABELS))
    if spec.model.task == "seq-cls" and not model.labels and spec.data.generator == "clinical":
        from fedpeer.datasets.clinical import CLINICAL_LABELS

        model = dataclasses.replace(model, labels=tuple(CLINICAL_LABELS))
    if spec.tiny_model is None:
        return model
    from fedpeer.model.tiny import build_tiny_model

    t = spec.tiny_model
    corpus = _corpus(data_files)
    path = build_tiny_model(
        out / "model",
        arch=t.arch,
        task=model.task,
        corpus=corpus,
        labels=model.labels,
        hidden_size=t.hidden_size,
        num_layers=t.num_layers,
        num_heads=t.num_heads,
        intermediate_size=t.intermediate_size,
        seed=t.seed,
    )
    return dataclasses.replace(model, path=str(path))


def _corpus(data_files: dict[str, tuple[Path, Path | None]]) -> list[str]:
    import json

    texts: list[str] = []
    for train, ev in data_files.values():
        for f in (train, ev):
            if f is not None and f.exists():
                texts.extend(json.loads(line)["text"] for line in f.read_text().splitlines() if line.strip())
    return texts
