"""`fedpeer node run`: run this site's node until its rounds are done."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Annotated

import typer
from fedpeer_cli.common import friendly_errors, setup_logging

app = typer.Typer(help="Run this site's node.", no_args_is_help=True)


@app.command("run")
@friendly_errors
def run(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Node config file (write one with `fedpeer init`).")
    ],
    device: Annotated[
        str | None, typer.Option(help="Override train.device: auto, cpu, cuda, cuda:1, ...")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Override gossip.rounds.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Join the mesh: serve neighbours over gRPC, train, exchange and mix the global adapter each round.

    Progress is logged per round; metrics go to STATE_DIR/metrics.jsonl and a checkpoint to
    STATE_DIR/checkpoint.safetensors after every round. Started again on the same state_dir, the
    node resumes from its last completed round and catches up with the mesh.
    """
    setup_logging(verbose)
    from fedpeer.config import load_node_config
    from fedpeer.node import Node
    from fedpeer.transport.emulated import emulate_links
    from fedpeer.transport.grpc_transport import GrpcTransport

    cfg = load_node_config(config)
    if device is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))
    if rounds is not None:
        cfg = dataclasses.replace(cfg, gossip=dataclasses.replace(cfg.gossip, rounds=rounds))
    # SIGTERM (docker stop, the scenario runner) ends the node like Ctrl-C: the last checkpoint stays.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    transport = GrpcTransport(max_payload=int(cfg.codec.max_payload_mb * 2**20))
    # A scenario's link faults (cut, partition, slow: node.toml [[links]]) act inside the transport.
    Node(cfg, emulate_links(transport, cfg)).run()
