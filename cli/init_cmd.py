"""`fedpeer init`: write a commented node config for a site to edit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from fedpeer_cli.common import friendly_errors

TEMPLATE = """\
# fedpeer node config. Run with:  fedpeer node run --config {path}
# Every site of a mesh must use the same [model], [adapter] and protocol version: the handshake
# refuses neighbours whose model fingerprint differs.

node_id = "{node_id}"          # unique name of this site in the mesh
# gRPC traffic between nodes is plaintext and unauthenticated today (no TLS yet): anyone who can
# reach `listen` can read the updates and send frames. 0.0.0.0 listens on every interface, public
# ones included: bind to a private interface or a VPN address (e.g. "10.8.0.2:50051") until TLS lands.
listen = "{listen}"      # HOST:PORT this node serves its neighbours on
advertise = ""               # address neighbours use to reach us, if not `listen` (NAT, containers)
state_dir = "{state_dir}"        # checkpoint.safetensors and metrics.jsonl are written here

# Topology neighbours: one table each. Both ends must list each other.
{neighbours}
[model]
path = "{model}"   # Hugging Face model id (available offline) or a local directory
task = "{task}"           # causal-lm (JSONL `text`) or seq-cls (JSONL `text` + `label`)
labels = [{labels}]       # seq-cls only: class names; `label` in the data is one of these
dtype = "float32"
dropout = true            # the base model's own dropout; false: off (reproducible in-process meshes)

[adapter]
rank = 8                     # LoRA rank of both adapters
alpha = 16.0
dropout = 0.0
target_modules = []          # empty: the attention projections of the architecture
last_k_blocks = 0            # adapt only the last k transformer blocks (0 = all)
train_global_a = false       # false: A_g frozen from mesh_seed, only B_g trains and travels
mesh_seed = 0                # must be the same on every site
use_local = true             # a private adapter that never leaves this site
head = "global"              # seq-cls head: shared ("global") or private ("local")

[train]
data = "{data}"        # this site's JSONL data
eval_data = ""               # empty: hold out eval_fraction of `data`
eval_fraction = 0.1
steps_per_round = 10         # local optimizer steps between two exchanges
batch_size = 8
lr = 5e-4
max_length = 128
seed = 0
class_weights = "none"       # seq-cls: "balanced" weighs each class this site has equally (label skew)
device = "auto"              # auto (cuda if present), cpu, cuda, cuda:1, ...

[gossip]
rounds = 10
gamma = 1.0                  # consensus step size (1.0 is plain gossip with a lossless codec)
round_timeout_s = 120.0      # how long a round waits for a slow neighbour before mixing without it
rpc_timeout_s = 30.0         # deadline of each call to a neighbour
join_timeout_s = 60.0        # how long to wait for neighbours at start before going ahead
max_rounds_ahead = 2
linger_s = 5.0
allow_solo = false           # true: a node that never hears from any neighbour may still finish (exit 0)

[codec]
name = "fp16"                # lossless (fp32) or fp16; byte-shuffle + zstd either way
zstd_level = 3
max_payload_mb = 1024.0      # refuse updates that would decompress to more than this
"""


@friendly_errors
def init(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="Config file to write, e.g. node.toml.")],
    node_id: Annotated[str, typer.Option(metavar="NAME", help="This site's name in the mesh.")] = "site-a",
    listen: Annotated[
        str,
        typer.Option(
            metavar="HOST:PORT",
            help="Where to serve neighbours. gRPC is plaintext and unauthenticated today: prefer a "
            "private interface or VPN address to 0.0.0.0.",
        ),
    ] = "0.0.0.0:50051",
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
    from fedpeer.errors import ConfigError

    if path.is_dir():
        raise ConfigError(f"{path} is a directory: give a file name, e.g. {path / 'node.toml'}")
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    tables = []
    for item in neighbour or []:
        nid, sep, addr = item.partition("=")
        if not sep or ":" not in addr:
            raise ConfigError(f"--neighbour {item!r}: write ID=HOST:PORT, e.g. site-b=10.0.0.2:50051")
        tables.append(f'[[neighbours]]\nid = "{nid}"\naddress = "{addr}"\n')
    if not tables:
        tables.append('# [[neighbours]]\n# id = "site-b"\n# address = "site-b.example.org:50051"\n')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        TEMPLATE.format(
            path=path,
            node_id=node_id,
            listen=listen,
            state_dir=f"state/{node_id}",
            neighbours="\n".join(tables),
            model=model or "path/to/base-model",
            task=task,
            data=data or "data/train.jsonl",
            labels="",
        )
    )
    todo = _still_to_edit(model, data, task, bool(neighbour))
    edit = f"edit {todo}, then" if todo else "check it, then run"
    typer.echo(f"wrote {path}; {edit}: fedpeer node run --config {path}")
    if listen.rpartition(":")[0] in ("0.0.0.0", "[::]", ""):
        typer.echo(
            f"note: listen {listen} serves every interface, and gRPC is plaintext and unauthenticated "
            "today: prefer a private interface or VPN address",
            err=True,
        )


def _still_to_edit(model: str | None, data: str | None, task: str, neighbours: bool) -> str:
    """What the flags left as a placeholder, in words ("" when nothing)."""
    todo = [
        *(["[model] path"] if model is None else []),
        *(["[model] labels"] if task == "seq-cls" else []),
        *(["[train] data"] if data is None else []),
        *(["the neighbours"] if not neighbours else []),
    ]
    return ", ".join(todo[:-1]) + (" and " if len(todo) > 1 else "") + (todo[-1] if todo else "")
