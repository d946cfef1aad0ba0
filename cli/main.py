"""`fedpeer`: join a serverless federated fine-tuning mesh, or run a whole mesh from a scenario."""

from __future__ import annotations

import typer
from fedpeer_cli import export_cmd, init_cmd, node_cmd, report_cmd, scenario_cmd, status_cmd

app = typer.Typer(
    name="fedpeer",
    help=__doc__
    + "\n\nA site: `fedpeer init node.toml`, edit it, then `fedpeer node run --config node.toml`.\n\n"
    "A researcher: `fedpeer scenario run scenarios/ring4.toml --out runs/ring4`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("init")(init_cmd.init)
app.command("status")(status_cmd.status)
app.command("export")(export_cmd.export)
app.command("report")(report_cmd.report)
app.add_typer(node_cmd.app, name="node")
app.add_typer(scenario_cmd.app, name="scenario")

if __name__ == "__main__":
    app()
