"""`fedpeer export`: the site's adapters (global + local) as a standard PEFT adapter directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from fedpeer_cli.common import friendly_errors, setup_logging


@friendly_errors
def export(
    config: Annotated[Path, typer.Option("--config", "-c", help="The node's config file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the adapter into.")],
) -> None:
    """Write the node's latest checkpoint as a PEFT adapter: load it with
    `PeftModel.from_pretrained(base_model, OUT)`."""
    setup_logging()
    from fedpeer import checkpoint
    from fedpeer.config import load_node_config
    from fedpeer.errors import CheckpointError
    from fedpeer.model.dual_lora import load_dual_lora, resolve_device
    from fedpeer.model.export import export_peft

    cfg = load_node_config(config)
    ck = checkpoint.load(cfg.state_dir)
    if ck is None:
        raise CheckpointError(f"{cfg.state_dir} has no checkpoint yet: run the node for at least one round")
    dual = load_dual_lora(cfg.model, cfg.adapter, resolve_device("cpu"), local_seed=0)
    if ck.meta.get("fingerprint") != dual.fingerprint():
        raise CheckpointError(
            f"the checkpoint in {cfg.state_dir} was made with another model or adapter config"
        )
    dual.load_adapter_state(ck.group("adapter"))
    path = export_peft(dual, out)
    typer.echo(f"exported round {ck.meta['round']} of {cfg.node_id} to {path}")
