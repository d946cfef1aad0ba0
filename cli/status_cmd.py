"""`fedpeer status ADDRESS`: ask a running node for its round, neighbours and health."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from fedpeer_cli.common import friendly_errors


@friendly_errors
def status(
    address: Annotated[str, typer.Argument(metavar="HOST:PORT", help="Address of a running node.")],
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="How long to wait for the answer.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of a table.")] = False,
) -> None:
    """Show a node's health (gRPC health service), phase, round and neighbours."""
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from fedpeer.errors import PeerUnavailable
    from fedpeer.transport.grpc_transport import GrpcTransport

    t = GrpcTransport()
    try:
        health = t.health(address, timeout)
        s = t.status(address, timeout)
    except PeerUnavailable as exc:
        raise PeerUnavailable(
            f"no fedpeer node answers at {address} ({exc}); is it running, and is "
            "HOST:PORT its `listen` address?"
        ) from None
    finally:
        t.close()
    if as_json:
        typer.echo(json.dumps({"health": health, **dataclasses.asdict(s)}, default=str))
        return
    n = s.node
    console = Console()
    console.print(
        f"[bold]{n.node_id}[/] at {address}: {health}, {s.phase}, round {n.round}/{s.rounds_total}, "
        f"epoch {n.epoch}, protocol v{n.protocol_version}, fingerprint {n.fingerprint}"
    )
    console.print(f"last train loss {s.last_train_loss:.4f}, consensus distance {s.consensus_distance:.4g}")
    table = Table("neighbour", "address", "connected", "last round heard", "applied seq")
    for nb in s.neighbours:
        table.add_row(
            nb.node_id,
            nb.address,
            "yes" if nb.connected else "no",
            str(nb.last_round_heard),
            str(nb.applied_seq),
        )
    console.print(table)
