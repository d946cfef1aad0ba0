"""`fedpeer status ADDRESS`: ask a running node for its round, neighbours and health."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from fedpeer_cli.common import friendly_errors


@friendly_errors
def status(
    address: Annotated[str, typer.Argument(metavar="HOST:PORT", help="Address of a running node.")],
    ca: Annotated[
        Path | None,
        typer.Option(metavar="PEM", help="The mesh CA bundle (a TLS node answers only over TLS)."),
    ] = None,
    cert: Annotated[
        Path | None,
        typer.Option(metavar="PEM", help="A certificate of the mesh CA: the node's own, or an operator's."),
    ] = None,
    key: Annotated[Path | None, typer.Option(metavar="PEM", help="The key of --cert.")] = None,
    node_id: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="With TLS: the node id the node must prove (else its certificate must list HOST).",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="How long to wait for the answer.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of a table.")] = False,
) -> None:
    """Show a node's health (gRPC health service), phase, round and neighbours.

    A node on mutual TLS answers only a client with a certificate of its mesh CA: pass --ca, --cert
    and --key (e.g. `fedpeer pki issue pki/ operator` once). Without them the call is plaintext.
    """
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from fedpeer.errors import ConfigError, HandshakeError, PeerUnavailable
    from fedpeer.security.tls import load_identity
    from fedpeer.transport.grpc_transport import GrpcTransport

    given = [p for p in (ca, cert, key) if p is not None]
    if given and len(given) != 3:
        raise ConfigError("--ca, --cert and --key go together (the mesh CA, a certificate of it, its key)")
    tls = load_identity(ca, cert, key) if ca and cert and key else None
    t = GrpcTransport(tls=tls)
    if node_id:
        t.expect(address, node_id)
    try:
        health = t.health(address, timeout)
        s = t.status(address, timeout)
    except (PeerUnavailable, HandshakeError) as exc:
        hint = (
            "; if the node runs TLS, pass --ca, --cert and --key"
            if tls is None
            else "; --node-id NAME checks the node's id instead of HOST"
            if not node_id
            else ""
        )
        raise PeerUnavailable(
            f"no fedpeer node answers at {address} ({exc}); is it running, and is "
            f"HOST:PORT its `listen` address?{hint}"
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
    if s.privacy_delta > 0:
        console.print(
            f"differential privacy of the global adapter: epsilon {s.privacy_epsilon:.3g} spent at "
            f"delta {s.privacy_delta:g}"
        )
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
