"""`fedpeer node run`: run this site's node until its rounds are done."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from fedpeer_cli.common import Command, friendly_errors, setup_logging, stop_on_sigterm

app = typer.Typer(help="Run this site's node.", no_args_is_help=True, rich_markup_mode=None)


@app.command("run", cls=Command)
@friendly_errors
def run(
    config: Annotated[
        Path,
        typer.Option(
            "--config", "-c", metavar="PATH", help="Node config file (write one with `fedpeer init`)."
        ),
    ],
    device: Annotated[
        str | None,
        typer.Option(metavar="DEVICE", help="Override train.device: auto, cpu, cuda, cuda:1, ..."),
    ] = None,
    rounds: Annotated[int | None, typer.Option(metavar="N", help="Override gossip.rounds.")] = None,
    allow_solo: Annotated[
        bool,
        typer.Option(
            "--allow-solo",
            help="Set gossip.allow_solo: a node that never hears from any neighbour finishes with "
            "exit 0 (a run on purpose without a mesh) instead of failing.",
        ),
    ] = False,
    log_file: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Also write the log to this file (appended to)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Join the mesh: serve neighbours over gRPC, train, exchange and mix the global adapter each round.

    Neighbours talk over mutual TLS ([tls] in the config: the mesh CA, this node's certificate and
    key, from `fedpeer pki`); only the configured neighbours, proven by their certificates, may
    exchange updates. tls.insecure = true runs plaintext, for isolated test networks only.

    Progress is logged per round; metrics go to STATE_DIR/metrics.jsonl and a checkpoint to
    STATE_DIR/checkpoint.safetensors after every round. Started again on the same state_dir, the
    node resumes from its last completed round and catches up with the mesh. Ctrl-C exits 130,
    SIGTERM (docker stop) 143; either way the last completed round's checkpoint stays.
    """
    # The config first (TOML, no torch): a wrong file or value is reported at once.
    from fedpeer.config import load_node_config

    setup_logging(verbose, log_file)
    cfg = _with_flags(load_node_config(config), device=device, rounds=rounds, allow_solo=allow_solo or None)
    stop_on_sigterm()

    from fedpeer.security.tls import node_identity

    tls = node_identity(cfg.tls, cfg.node_id)  # checked before the model loads

    from fedpeer.node import build_node
    from fedpeer.transport.emulated import emulate_links
    from fedpeer.transport.grpc_transport import GrpcTransport

    transport = GrpcTransport(max_payload=int(cfg.codec.max_payload_mb * 2**20), tls=tls)
    # A scenario's link faults (cut, partition, slow: node.toml [[links]]) act inside the transport.
    build_node(cfg, emulate_links(transport, cfg)).run()


# Option name -> the setting it overrides.
_FLAGS = {"device": "train.device", "rounds": "gossip.rounds", "allow_solo": "gossip.allow_solo"}


def _with_flags(cfg: Any, **flags: Any) -> Any:
    """The config with the flags given (not None) applied and validated like the file's values."""
    from fedpeer.config import with_overrides
    from fedpeer.errors import ConfigError

    given = {name: v for name, v in flags.items() if v is not None}
    try:
        return with_overrides(cfg, {_FLAGS[name]: v for name, v in given.items()})
    except ConfigError as exc:
        shown = " ".join(
            f"--{n.replace('_', '-')} {v}" if v is not True else f"--{n.replace('_', '-')}"
            for n, v in given.items()
        )
        raise ConfigError(f"{exc} (command line: {shown})") from None
