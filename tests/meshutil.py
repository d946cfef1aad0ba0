"""Helpers for multi-node tests: a tiny scenario, nodes built from it, run as threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from fedpeer.node import Node, build_node
from fedpeer.scenario.spec import PreparedScenario, ScenarioSpec, parse_scenario, prepare
from fedpeer.transport.base import Transport

TINY: dict[str, Any] = {
    "name": "test",
    "nodes": 3,
    "topology": "ring",
    "tiny_model": {
        "arch": "llama",
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 64,
    },
    "data": {"n_train": 40, "n_eval": 8},
    "model": {"task": "causal-lm"},
    "adapter": {"rank": 4, "alpha": 8.0},
    "train": {"steps_per_round": 1, "batch_size": 8, "max_length": 32, "lr": 1e-3, "device": "cpu"},
    "gossip": {
        "rounds": 3,
        "round_timeout_s": 30.0,
        "join_timeout_s": 30.0,
        "rpc_timeout_s": 10.0,
        "linger_s": 0.2,
    },
    "codec": {"name": "lossless"},
}

# Six nodes, degrees 3, 2, 3, 2, 2, 2: Metropolis-Hastings weights differ from edge to edge.
IRREGULAR6 = [
    ["node0", "node1"],
    ["node0", "node2"],
    ["node0", "node3"],
    ["node1", "node2"],
    ["node3", "node4"],
    ["node4", "node5"],
    ["node2", "node5"],
]


def tiny_spec(**sections: Any) -> ScenarioSpec:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for key, value in sections.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return parse_scenario(data)


def prepared_memory(spec: ScenarioSpec, out) -> PreparedScenario:
    from fedpeer.scenario.spec import node_names

    return prepare(spec, out, {n: f"mem-{n}:1" for n in node_names(spec)}, tls=False)


def run_threads(nodes: list[Node], target: Callable[[Node], None] | None = None) -> None:
    errors: list[BaseException] = []

    def run(n: Node) -> None:
        try:
            (target or Node.run)(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a node hung"
    if errors:
        raise errors[0]


def random_global_state(node: Node, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in node.dual.global_state().items()}


def make_nodes(prepared: PreparedScenario, transport: Callable[[], Transport]) -> list[Node]:
    return [build_node(cfg, transport()) for cfg in prepared.nodes]
