"""`fedpeer`: join a serverless federated fine-tuning mesh, or run a whole mesh from a scenario."""

from __future__ import annotations

from typing import Annotated

import typer
from fedpeer_cli import export_cmd, init_cmd, node_cmd, pki_cmd, report_cmd, scenario_cmd, status_cmd
from fedpeer_cli.common import Command

app = typer.Typer(
    name="fedpeer",
    help=__doc__
    + "\n\nA site: `fedpeer init node.toml --pki DIR`, edit it, then `fedpeer node run --config node.toml`"
    " (certificates: `fedpeer pki`).\n\n"
    "A researcher: `fedpeer scenario run scenarios/ring4.toml --out runs/ring4`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help text as written: brackets such as [[faults]] stay literal
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"fedpeer {version('fedpeer')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print fedpeer's version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    pass


app.command("init", cls=Command)(init_cmd.init)
app.command("status", cls=Command)(status_cmd.status)
app.command("export", cls=Command)(export_cmd.export)
app.command("report", cls=Command)(report_cmd.report)
app.add_typer(node_cmd.app, name="node")
app.add_typer(pki_cmd.app, name="pki")
app.add_typer(scenario_cmd.app, name="scenario")

if __name__ == "__main__":
    app()
