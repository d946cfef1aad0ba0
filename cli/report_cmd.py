"""`fedpeer report DIR... --out OUT`: run directories as a markdown table and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from fedpeer_cli.common import friendly_errors

from fedpeer.metrics import AUTO_METRICS


@friendly_errors
def report(
    dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories (the --out of `fedpeer scenario run`), or folders holding several.",
            metavar="DIR",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="Where report.md and the PNG plots go.")
    ],
    metric: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help=f"Record field to report; auto: {', else '.join(AUTO_METRICS)}.",
        ),
    ] = "auto",
) -> None:
    """Summarize runs: final metric per site, bytes sent per round, mean ± std over seeds for runs whose
    run.json shares method and topology; plots of the metric against rounds and bytes sent."""
    from fedpeer.report import find_runs, markdown_table, resolve_metric, write_report

    runs = find_runs(dirs)
    name = resolve_metric(runs, metric)
    path = write_report(runs, out, name)
    typer.echo(markdown_table(runs, name))
    plots = sorted(p.name for p in path.parent.glob(f"{name}_vs_*.png"))
    typer.echo(f"wrote {path} and {', '.join(plots)} in {path.parent}")
