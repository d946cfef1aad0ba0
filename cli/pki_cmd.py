"""`fedpeer pki`: the mesh's certificate authority and the nodes' keys and certificates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from fedpeer_cli.common import Command, friendly_errors

app = typer.Typer(
    help="Certificates for mutual TLS between nodes: a CA per mesh (or per hospital), a key and "
    "certificate per node whose identity is its node id.\n\n"
    "  fedpeer pki init pki/                        # the mesh CA: pki/ca.key (keep it offline), pki/ca.pem\n"
    "  fedpeer pki issue pki/ site-a --host 10.0.0.1 # pki/site-a.key (0600) and pki/site-a.pem\n"
    "  fedpeer pki show pki/site-a.pem\n\n"
    "Give each site its .key and .pem and the CA bundle ca.pem; its node config's [tls] names them "
    "(`fedpeer init --pki DIR` does it). A consortium where each hospital runs its own CA trusts a "
    "bundle: cat hospital-a/ca.pem hospital-b/ca.pem > bundle.pem, and tls.ca = bundle.pem.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("init", cls=Command)
@friendly_errors
def init(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Where to write ca.key and ca.pem.")],
    name: Annotated[str, typer.Option(metavar="NAME", help="The CA's common name.")] = "fedpeer mesh CA",
    days: Annotated[int, typer.Option(metavar="DAYS", help="How long the CA is valid.")] = 3650,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CA in DIR.")] = False,
) -> None:
    """Create a mesh CA in DIR (ca.key, 0600, and ca.pem). Keep ca.key offline once nodes are issued."""
    from fedpeer.security import pki

    made = pki.init_ca(directory, name=name, days=days, force=force)
    typer.echo(f"wrote {made.cert} (give it to every site) and {made.key} (keep it secret, 0600)")
    typer.echo(f"next: fedpeer pki issue {directory} NODE_ID --host HOST_OR_IP")


@app.command("issue", cls=Command)
@friendly_errors
def issue(
    directory: Annotated[Path, typer.Argument(metavar="CA_DIR", help="The CA's directory (pki init).")],
    node_id: Annotated[str, typer.Argument(metavar="NODE_ID", help="The node's node_id in the mesh.")],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            metavar="NAME|IP",
            help="A DNS name or IP the node serves on (repeat). Neighbours reach it by node id "
            "whatever its address; these are for tools that dial an address, e.g. fedpeer status.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Where to write the key and certificate (default CA_DIR)."),
    ] = None,
    days: Annotated[int, typer.Option(metavar="DAYS", help="How long the certificate is valid.")] = 825,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key and certificate.")] = False,
) -> None:
    """Issue NODE_ID's key (0600) and certificate, identity fedpeer://mesh/NODE_ID, from the CA."""
    from fedpeer.security import pki

    made = pki.issue(directory, node_id, tuple(host or ()), out_dir=out, days=days, force=force)
    typer.echo(f"wrote {made.cert} and {made.key} for {node_id}")


@app.command("show", cls=Command)
@friendly_errors
def show(
    cert: Annotated[Path, typer.Argument(metavar="CERT", help="A PEM certificate or CA bundle.")],
) -> None:
    """Explain a certificate: whom it names, who signed it, until when."""
    from fedpeer.security import pki

    typer.echo(pki.describe(cert))
