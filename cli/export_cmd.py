"""`fedpeer export`: the site's adapters (global + local) as a standard PEFT adapter directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from fedpeer_cli.common import friendly_errors, setup_logging

ADAPTERS = ("both", "global", "local")


@friendly_errors
def export(
    config: Annotated[Path, typer.Option("--config", "-c", metavar="PATH", help="The node's config file.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", metavar="DIR", help="Directory to write the adapter into (created if missing)."
        ),
    ],
    adapter: Annotated[
        str,
        typer.Option(
            metavar="both|global|local",
            help="both: global + local summed into one adapter (the site's own model). global: the "
            "mesh's adapter alone (what every site shares). local: the private adapter alone.",
        ),
    ] = "both",
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty OUT, overwriting the adapter files.")
    ] = False,
    best: Annotated[
        bool,
        typer.Option(
            "--best",
            help="Export the best-evaluated round kept by train.keep_best (STATE_DIR/best) instead of the "
            "latest round.",
        ),
    ] = False,
) -> None:
    """Write the node's latest checkpoint (or with --best its best round) as a PEFT adapter: load it
    with `PeftModel.from_pretrained(base_model, OUT)`."""
    setup_logging()
    from fedpeer.config import load_node_config
    from fedpeer.errors import ConfigError

    if adapter not in ADAPTERS:
        raise ConfigError(f"--adapter must be one of {', '.join(ADAPTERS)}, got {adapter!r}")
    cfg = load_node_config(config)
    _check_out(out, force)

    from fedpeer import checkpoint
    from fedpeer.errors import CheckpointError
    from fedpeer.model.dual_lora import load_dual_lora, resolve_device
    from fedpeer.model.export import export_peft
    from fedpeer.node.state import best_dir, load_best, prior_of

    if best:
        ck = load_best(cfg.state_dir)
        if ck is None:
            raise CheckpointError(
                f"{best_dir(cfg.state_dir)} holds no best round: set train.keep_best (eval_loss or "
                "macro_f1) in the node's config and run it, or export the latest round without --best"
            )
    else:
        ck = checkpoint.load(cfg.state_dir)
        if ck is None:
            raise CheckpointError(
                f"{cfg.state_dir} has no checkpoint yet: run the node for at least one round"
            )
    dual = load_dual_lora(cfg.model, cfg.adapter, resolve_device("cpu"), local_seed=0)
    if ck.meta.get("fingerprint") != dual.fingerprint():
        raise CheckpointError(
            f"the checkpoint in {cfg.state_dir} was made with another model or adapter config"
        )
    dual.load_adapter_state(ck.group("adapter"))
    bias = None
    tau = prior_of(cfg.train, ck.meta)
    if tau > 0 and adapter == "both":  # the config allows a prior on a classifier only
        from fedpeer.train.data import load_site_data
        from fedpeer.train.loop import log_prior

        labels = [e.label for e in load_site_data(cfg.model, cfg.train)[0]]
        bias = tau * log_prior(labels, len(cfg.model.labels))
        how = "chosen by train.prior_choices" if cfg.train.prior_choices else "train.prior"
        typer.echo(f"prior {tau:g} ({how}): the site's label prior goes into the head's bias")
    path = export_peft(dual, out, adapters=adapter, logit_bias=bias)
    both = "global + local adapters" if cfg.adapter.use_local else "global adapter: no local one"
    what = {"both": both, "global": "global adapter", "local": "local adapter"}[adapter]
    kept = f", the best by {ck.meta['criterion']} = {ck.meta['value']:.4f}" if best else ""
    typer.echo(f"exported round {ck.meta['round']} of {cfg.node_id} ({what}{kept}) to {path}")


def _check_out(out: Path, force: bool) -> None:
    """Refuse an OUT that is a file, or a directory holding anything unless --force (nothing mixed)."""
    from fedpeer.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory: give a directory for the adapter")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"--out {out} is not empty: give a new or empty directory, or pass --force to overwrite the "
            "adapter files in it"
        )
