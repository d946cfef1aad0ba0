"""`fedpeer scenario run`: a whole mesh from one scenario file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from fedpeer_cli.common import friendly_errors, parse_overrides, setup_logging

app = typer.Typer(help="Run a whole mesh from a scenario file (see scenarios/).", no_args_is_help=True)

RUNNERS = ("process", "inprocess", "netns", "docker")


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
            help="process: one OS process per node over real gRPC on 127.0.0.1. inprocess: threads + "
            "in-memory transport. netns: a process per network namespace, bandwidth shaped with tc "
            "(root). docker: a container per node on a bridge network (needs the node image)."
        ),
    ] = "process",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a setting, e.g. --set gossip.rounds=3 --set nodes=8 (repeatable)."
        ),
    ] = None,
    image: Annotated[
        str, typer.Option(help="Node image for --runner docker (scripts/docker/build_node_image.sh).")
    ] = "fedpeer-node:latest",
    docker_arg: Annotated[
        list[str] | None,
        typer.Option(help="Extra `docker run` argument for every node, e.g. --docker-arg=--gpus=all."),
    ] = None,
) -> None:
    """Start every node of SCENARIO, show progress per round, and end with a summary table.

    Faults in the scenario ([[faults]]: kill/restart, cut, partition, slow) apply with every runner.
    """
    from fedpeer.errors import ConfigError
    from fedpeer.scenario.spec import load_scenario, with_overrides

    if runner not in RUNNERS:
        raise ConfigError(f"--runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    spec = with_overrides(load_scenario(scenario), parse_overrides(set_ or []))
    typer.echo(f"preparing {spec.name}: {spec.nodes} nodes, {spec.topology}, model and data under {out}")
    prepared, rows = _run(spec, out, runner, image, docker_arg or [])
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


def _run(
    spec: Any, out: Path, runner: str, image: str, docker_args: list[str]
) -> tuple[Any, list[dict[str, Any]]]:
    from fedpeer.scenario import runner as runners

    if runner == "inprocess":
        setup_logging()
        prepared = runners.prepare_for_memory(spec, out)
        return prepared, runners.run_inprocess(prepared)
    if runner == "netns":
        from fedpeer.scenario.netns import NetnsRunner, prepare_for_netns

        prepared = prepare_for_netns(spec, out)
        return prepared, NetnsRunner(prepared, echo=typer.echo).run()
    if runner == "docker":
        from fedpeer.scenario.docker import DockerRunner, prepare_for_docker

        prepared = prepare_for_docker(spec, out, image)
        return prepared, DockerRunner(prepared, image, docker_args, echo=typer.echo).run()
    prepared = runners.prepare_for_processes(spec, out)
    return prepared, runners.ProcessRunner(prepared, echo=typer.echo).run()


@app.command("render")
@friendly_errors
def render(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML, e.g. scenarios/ring4.toml.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory: model, data, <node>/node.toml, the file.")
    ],
    format_: Annotated[str, typer.Option("--format", help="What to write: compose.")] = "compose",
    image: Annotated[str, typer.Option(help="Node image the services run.")] = "fedpeer-node:latest",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting, as for `scenario run`.")
    ] = None,
) -> None:
    """Prepare SCENARIO (model, data, node configs) and write OUT/docker-compose.yml for its nodes.

    Then `docker compose -f OUT/docker-compose.yml up`. Kill/restart faults are the runner's job and
    are not in the file; link faults (cut, partition, slow) are in the node configs and do apply.
    """
    from fedpeer.errors import ConfigError
    from fedpeer.scenario.docker import prepare_containers, write_compose
    from fedpeer.scenario.spec import load_scenario, with_overrides

    if format_ != "compose":
        raise ConfigError(f"--format must be compose, got {format_!r}")
    spec = with_overrides(load_scenario(scenario), parse_overrides(set_ or []))
    typer.echo(f"preparing {spec.name}: {spec.nodes} nodes, {spec.topology}, model and data under {out}")
    path = write_compose(prepare_containers(spec, out), image)
    typer.echo(f"wrote {path}: docker compose -f {path} up")
    if any(f.kind == "kill" for f in spec.faults):
        typer.echo("note: kill/restart faults are not rendered (use `scenario run --runner docker`)")


def print_summary(rows: list[dict[str, Any]], rounds: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"summary after {rounds} rounds")
    metrics = ["perplexity", "rouge_l", "accuracy", "macro_f1"]
    cols = ["node", "last_round", "train_loss", "eval_loss"]
    # Only the evaluation metrics this task produced (perplexity for causal-lm, F1 for seq-cls).
    cols += [m for m in metrics if any(r.get(m) is not None for r in rows)]
    cols += ["consensus_distance", "bytes_sent_per_round", "round_s"]
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
