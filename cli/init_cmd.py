"""`fedpeer init`: write a commented node config for a site to edit (`fedpeer.config.template`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from fedpeer_cli.common import friendly_errors

from fedpeer.config import ModelConfig, NodeConfig, PeerConfig, TlsConfig, TrainConfig, render_template
from fedpeer.errors import ConfigError


@friendly_errors
def init(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="Config file to write, e.g. node.toml.")],
    node_id: Annotated[str, typer.Option(metavar="NAME", help="This site's name in the mesh.")] = "site-a",
    listen: Annotated[
        str,
        typer.Option(
            metavar="HOST:PORT",
            help="Where to serve neighbours (over mutual TLS: only holders of a mesh certificate get "
            "an answer).",
        ),
    ] = "0.0.0.0:50051",
    pki: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="The mesh's certificate folder: ca.pem and this site's NAME.key / NAME.pem, as the "
            "consortium's CA issued them (`fedpeer pki issue DIR NAME`). Where DIR holds the CA's key "
            "and the site has no certificate yet, one is issued now. Default: pki/ beside the config, "
            "to be filled in.",
        ),
    ] = None,
    neighbour: Annotated[
        list[str] | None,
        typer.Option(
            "--neighbour",
            "-n",
            metavar="ID=HOST:PORT",
            help="A topology neighbour; repeat for each.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(metavar="PATH|ID", help="Base model directory or Hugging Face id org/name.")
    ] = None,
    task: Annotated[str, typer.Option(metavar="TASK", help="causal-lm or seq-cls.")] = "causal-lm",
    data: Annotated[str | None, typer.Option(metavar="PATH", help="This site's JSONL training data.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented node config to PATH; edit it, then `fedpeer node run --config PATH`."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory: give a file name, e.g. {path / 'node.toml'}")
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    peers = [_peer(item) for item in neighbour or []]
    tls, tls_note = _tls(path, pki, node_id, listen)
    cfg = NodeConfig(
        node_id=node_id,
        state_dir=f"state/{node_id}",
        listen=listen,
        neighbours=tuple(peers),
        model=ModelConfig(path=model or "path/to/base-model", task=task),
        train=TrainConfig(data=data or "data/train.jsonl"),
        tls=tls,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_template(cfg, path))
    todo = _still_to_edit(model, data, task, bool(neighbour))
    edit = f"edit {todo}, then" if todo else "check it, then run"
    typer.echo(f"wrote {path}; {edit}: fedpeer node run --config {path}")
    if tls_note:
        typer.echo(tls_note, err=True)


def _tls(path: Path, pki: Path | None, node_id: str, listen: str) -> tuple[TlsConfig, str]:
    """The [tls] table (paths relative to the config file) and what the site still has to do."""
    from fedpeer.security.pki import CA_CERT, CA_KEY, check_node_id, issue

    check_node_id(node_id)
    folder = pki if pki is not None else path.parent / "pki"
    key, cert, ca = folder / f"{node_id}.key", folder / f"{node_id}.pem", folder / CA_CERT
    note = ""
    if pki is not None and not cert.exists():
        if not (pki / CA_KEY).exists():
            raise ConfigError(
                f"{pki} has no certificate for {node_id} ({cert.name}) and no CA key to issue one: ask "
                f"the mesh's CA for it (`fedpeer pki issue CA_DIR {node_id}`) and put it there"
            )
        host = listen.rpartition(":")[0].strip("[]")
        issue(pki, node_id, (host,) if host not in ("0.0.0.0", "::", "") else ())
        note = f"issued {cert} and {key} for {node_id} from the CA in {pki}"
    elif pki is None:
        note = (
            f"note: [tls] expects {ca}, {cert} and {key}: get them from the mesh's CA "
            f"(`fedpeer pki issue CA_DIR {node_id}`), or pass --pki DIR"
        )

    def rel(p: Path) -> str:
        return os.path.relpath(p.resolve(), path.parent.resolve())

    return TlsConfig(ca=rel(ca), cert=rel(cert), key=rel(key)), note


def _peer(item: str) -> PeerConfig:
    """A --neighbour ID=HOST:PORT."""
    nid, sep, addr = item.partition("=")
    if not sep or ":" not in addr:
        raise ConfigError(f"--neighbour {item!r}: write ID=HOST:PORT, e.g. site-b=10.0.0.2:50051")
    return PeerConfig(id=nid, address=addr)


def _still_to_edit(model: str | None, data: str | None, task: str, neighbours: bool) -> str:
    """What the flags left as a placeholder, in words ("" when nothing)."""
    todo = [
        *(["[model] path"] if model is None else []),
        *(["[model] labels"] if task == "seq-cls" else []),
        *(["[train] data"] if data is None else []),
        *(["the neighbours"] if not neighbours else []),
    ]
    return ", ".join(todo[:-1]) + (" and " if len(todo) > 1 else "") + (todo[-1] if todo else "")
