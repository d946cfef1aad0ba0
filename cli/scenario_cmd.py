"""`fedpeer scenario run`: a whole mesh from one scenario file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from fedpeer_cli.common import friendly_errors, parse_overrides, setup_logging

app = typer.Typer(help="Run a whole mesh from a scenario file (see scenarios/).", no_args_is_help=True)

RUNNERS = ("process", "inprocess")


@app.command("run")
@friendly_errors
def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML, e.g. scenarios/ring4.toml.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output directory: <node>/metrics.jsonl, logs, checkpoints, summary.json."
        ),
    ],
    runner: Annotated[
        str,
        typer.Option(
            help="process: one OS process per node over real gRPC on "
            "127.0.0.1. inprocess: threads + in-memory transport."
        ),
    ] = "process",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a setting, e.g. --set gossip.rounds=3 --set nodes=8 (repeatable)."
        ),
    ] = None,
) -> None:
    """Start every node of SCENARIO, show progress per round, and end with a summary table."""
    from fedpeer.errors import ConfigError
    from fedpeer.scenario.runner import (
        ProcessRunner,
        prepare_for_memory,
        prepare_for_processes,
        run_inprocess,
    )
    from fedpeer.scenario.spec import load_scenario, with_overrides

    if runner not in RUNNERS:
        raise ConfigError(f"--runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    spec = with_overrides(load_scenario(scenario), parse_overrides(set_ or []))
    typer.echo(f"preparing {spec.name}: {spec.nodes} nodes, {spec.topology}, model and data under {out}")
    if runner == "process":
        prepared = prepare_for_processes(spec, out)
        rows = ProcessRunner(prepared, echo=typer.echo).run()
    else:
        setup_logging()
        prepared = prepare_for_memory(spec, out)
        rows = run_inprocess(prepared)
    (prepared.out_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    print_summary(rows, spec.gossip.rounds)
    incomplete = [r["node"] for r in rows if r["last_round"] < spec.gossip.rounds]
    if incomplete:
        typer.secho(
            f"nodes that did not finish all rounds: {', '.join(incomplete)} (see their node.log)",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(1)


def print_summary(rows: list[dict[str, Any]], rounds: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"summary after {rounds} rounds")
    cols = [
        "node",
        "last_round",
        "train_loss",
        "eval_loss",
        "macro_f1",
        "consensus_distance",
        "bytes_sent_per_round",
        "round_s",
    ]
    for c in cols:
        table.add_column(c.replace("_", " "), justify="left" if c == "node" else "right")
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in cols])
    Console().print(table)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
