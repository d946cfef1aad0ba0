"""`fedpeer scenario run`: a whole mesh from one scenario file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from fedpeer_cli.common import Command, friendly_errors, parse_overrides, setup_logging

from fedpeer.metrics import EVAL_METRICS

if TYPE_CHECKING:
    from fedpeer.scenario.spec import ScenarioSpec

# rich_markup_mode=None: help as written, so [[faults]] and <node> print literally.
app = typer.Typer(
    help="Run a whole mesh from a scenario file (see scenarios/).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

Rows = list[dict[str, Any]]


# ================================================================ runners: how the nodes are started
def run_processes(spec: ScenarioSpec, out: Path, image: str, docker_args: list[str]) -> Rows:
    from fedpeer.scenario import runner as runners

    prepared = runners.prepare_for_processes(spec, out, echo=typer.echo)
    return runners.ProcessRunner(prepared, echo=typer.echo).run()


def run_inprocess(spec: ScenarioSpec, out: Path, image: str, docker_args: list[str]) -> Rows:
    from fedpeer.scenario import runner as runners

    setup_logging()
    runners.quiet_progress_bars()
    return runners.run_inprocess(runners.prepare_for_memory(spec, out, echo=typer.echo))


def run_netns(spec: ScenarioSpec, out: Path, image: str, docker_args: list[str]) -> Rows:
    from fedpeer.scenario.netns import NetnsRunner, prepare_for_netns

    return NetnsRunner(prepare_for_netns(spec, out), echo=typer.echo).run()


def run_docker(spec: ScenarioSpec, out: Path, image: str, docker_args: list[str]) -> Rows:
    from fedpeer.scenario.docker import DockerRunner, prepare_for_docker

    prepared = prepare_for_docker(spec, out, image)
    return DockerRunner(prepared, image, docker_args, echo=typer.echo).run()


def run_sim(spec: ScenarioSpec, out: Path, image: str, docker_args: list[str]) -> Rows:
    from fedpeer.scenario import runner as runners
    from fedpeer.sim.runner import run_scenario

    runners.quiet_progress_bars()
    return run_scenario(spec, out, echo=typer.echo)


def run_ray(spec: ScenarioSpec, out: Path, image: str, docker_args: list[str]) -> Rows:
    from fedpeer.scenario import runner as runners
    from fedpeer.sim.ray_blocks import run_scenario

    runners.quiet_progress_bars()
    return run_scenario(spec, out, echo=typer.echo)


# --runner NAME -> (its --help text, what starts the nodes), in the order --help lists them.
RUNNERS: dict[str, tuple[str, Callable[[ScenarioSpec, Path, str, list[str]], Rows]]] = {
    "process": ("one OS process per node over real gRPC on 127.0.0.1.", run_processes),
    "inprocess": ("threads + in-memory transport.", run_inprocess),
    "netns": ("a process per network namespace, bandwidth shaped with tc (root).", run_netns),
    "docker": ("a container per node on a bridge network (needs the node image).", run_docker),
    "sim": (
        "simulation: all nodes in this process around one shared base model (thousands of nodes; "
        "graphs that change per round, directed graphs; sim.participation).",
        run_sim,
    ),
    "ray": (
        "the sim runner's nodes in blocks on Ray actors, one base model each (pip install "
        "'fedpeer[ray]'; sim.actors, sim.ray_address joins a cluster: docs/simulation.md).",
        run_ray,
    ),
}


def _run(spec: ScenarioSpec, out: Path, runner: str, image: str, docker_args: list[str]) -> Rows:
    from fedpeer.errors import ConfigError

    if spec.needs_sim and runner not in ("sim", "ray"):
        raise ConfigError(
            f"topology {spec.topology} (a new graph every round, or a directed graph) runs only with "
            "--runner sim (or --runner ray)"
        )
    _, start = RUNNERS[runner]
    return start(spec, out, image, docker_args)


@app.command("run", cls=Command)
@friendly_errors
def run(
    scenario: Annotated[
        Path, typer.Argument(metavar="SCENARIO", help="Scenario TOML, e.g. scenarios/ring4.toml.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Output directory: <node>/metrics.jsonl, logs, checkpoints, summary.json.",
        ),
    ],
    runner: Annotated[
        str,
        typer.Option(
            metavar="RUNNER",
            help=" ".join(f"{name}: {text}" for name, (text, _) in RUNNERS.items()),
        ),
    ] = "process",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a setting, e.g. --set gossip.rounds=3 --set nodes=8 (repeatable).",
        ),
    ] = None,
    image: Annotated[
        str,
        typer.Option(
            metavar="IMAGE", help="Node image for --runner docker (scripts/docker/build_node_image.sh)."
        ),
    ] = "fedpeer-node:latest",
    docker_arg: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ARG",
            help="Extra `docker run` argument for every node, e.g. --docker-arg=--gpus=all.",
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Start over: delete what an earlier run wrote under OUT (node checkpoints, metrics, "
            "logs, configs, summary.json; nothing else). Without it an unfinished run resumes from "
            "its checkpoints and a finished one is only summarized.",
        ),
    ] = False,
) -> None:
    """Start every node of SCENARIO, show progress per round, and end with a summary table.

    Faults in the scenario ([[faults]]: kill/restart, cut, partition, slow) apply with every runner.
    """
    from fedpeer.errors import ConfigError
    from fedpeer.scenario import runner as runners
    from fedpeer.scenario.spec import load_scenario, with_overrides

    if runner not in RUNNERS:
        raise ConfigError(f"--runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    # One spec for the whole run: its topology (spec.graph) is built once, on first use.
    spec = with_overrides(load_scenario(scenario), parse_overrides(set_ or []))
    if fresh:
        removed = runners.clear_run(spec, out)
        typer.echo(
            f"--fresh: removed {len(removed)} files of an earlier run under {out}"
            if removed
            else f"--fresh: no earlier run under {out}"
        )
    prev = runners.previous_run(spec, out)
    line = runners.previous_run_line(out, prev)
    if line:
        typer.echo(line)
    if prev.complete:
        rows = runners.summarize_out(spec, out)
    else:
        typer.echo(f"preparing {spec.name}: {spec.nodes} nodes, {spec.topology}, model and data under {out}")
        rows = _run(spec, out, runner, image, docker_arg or [])
    (out / runners.SUMMARY_FILE).write_text(json.dumps(rows, indent=2))
    print_summary(rows, spec.gossip.rounds)
    typer.echo(_gap_line(spec, out))
    if not summary_ok(rows, spec.gossip.rounds):
        raise typer.Exit(1)


def _gap_line(spec: ScenarioSpec, out: Path) -> str:
    """The topology's spectral gap, also kept in OUT/run.json for `fedpeer report` (its consensus
    plot draws the (1 - gap)^t rate)."""
    from fedpeer.report import RUN_META
    from fedpeer.sim.spectral import gap_report

    gap = gap_report(spec.schedule)
    meta_path = out / RUN_META
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except json.JSONDecodeError:
        meta = None  # someone else's file: leave it alone
    if isinstance(meta, dict):
        meta["spectral_gap"] = gap.to_json()["spectral_gap"]
        meta_path.write_text(json.dumps(meta, indent=2))
    return gap.line(f"{spec.topology} on {len(spec.schedule.names)} nodes")


def summary_ok(rows: list[dict[str, Any]], rounds: int) -> bool:
    """Warn about nodes that did not finish, or that never heard from a neighbour; False if any."""
    incomplete = [r["node"] for r in rows if r["last_round"] < rounds]
    alone = [r["node"] for r in rows if r.get("trained_alone")]
    if incomplete:
        _warn(f"nodes that did not finish all rounds: {', '.join(incomplete)} (see their node.log)")
    if alone:
        _warn(
            f"nodes that trained alone, never hearing from a neighbour: {', '.join(alone)} "
            "(see their node.log: addresses, firewalls, join_timeout_s)"
        )
    return not (incomplete or alone)


def _warn(text: str) -> None:
    typer.secho(text, fg=typer.colors.YELLOW, err=True)


@app.command("render", cls=Command)
@friendly_errors
def render(
    scenario: Annotated[
        Path, typer.Argument(metavar="SCENARIO", help="Scenario TOML, e.g. scenarios/ring4.toml.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Where the model, data and <node>/node.toml go, and DIR/docker-compose.yml. Without "
            "it the compose file is printed on stdout and the rest goes to runs/<scenario name>-compose.",
            show_default=False,
        ),
    ] = None,
    format_: Annotated[str, typer.Option("--format", metavar="FORMAT", help="What to write: compose.")] = (
        "compose"
    ),
    image: Annotated[
        str, typer.Option(metavar="IMAGE", help="Node image the services run.")
    ] = "fedpeer-node:latest",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a setting, as for `scenario run`."),
    ] = None,
) -> None:
    """Prepare SCENARIO (model, data, node configs) and write a docker-compose.yml for its nodes.

    `fedpeer scenario render SCENARIO > docker-compose.yml && docker compose up`, or with --out DIR:
    `docker compose -f DIR/docker-compose.yml up`. The file holds absolute paths, so it works from
    any directory. Kill/restart faults are the runner's job and are not in the file; link faults
    (cut, partition, slow) are in the node configs and do apply. Messages go to stderr.
    """
    from fedpeer.errors import ConfigError
    from fedpeer.scenario.docker import prepare_containers, write_compose
    from fedpeer.scenario.spec import load_scenario, with_overrides

    if format_ != "compose":
        raise ConfigError(f"--format must be compose, got {format_!r}")
    spec = with_overrides(load_scenario(scenario), parse_overrides(set_ or []))
    to_stdout = out is None
    out = out if out is not None else Path("runs") / f"{spec.name}-compose"
    where = f"{out} (no --out given: the compose file goes to stdout)" if to_stdout else out
    typer.echo(
        f"preparing {spec.name}: {spec.nodes} nodes, {spec.topology}, model and data under {where}", err=True
    )
    path = write_compose(prepare_containers(spec, out), image)
    if to_stdout:
        typer.echo(path.read_text(), nl=False)
        typer.echo(f"wrote the compose file to stdout (a copy is {path}): docker compose up", err=True)
    else:
        typer.echo(f"wrote {path}: docker compose -f {path} up", err=True)
    if any(f.kind == "kill" for f in spec.faults):
        typer.echo(
            "note: kill/restart faults are not rendered (use `scenario run --runner docker`)", err=True
        )


def print_summary(rows: list[dict[str, Any]], rounds: int) -> None:
    """The summary table; piped or redirected, at its full width (not cut to an assumed 80 columns)."""
    from rich.console import Console

    table = summary_table(rows, rounds)
    console = Console()
    if not console.is_terminal:
        console = Console(width=Console(width=10_000).measure(table).maximum)
    console.print(table)


# (row key, column header); evaluation metrics only when the task produced them
SUMMARY_COLUMNS = (
    ("node", "node"),
    ("last_round", "round"),
    ("train_loss", "train loss"),
    *((m.name, m.label) for m in EVAL_METRICS),
    ("consensus_relative", "consensus (% of |x|)"),
    ("bytes_sent_per_round", "sent (kB/round)"),
    ("round_s", "round (s)"),
    ("neighbours_heard", "neighbours heard"),
)
OPTIONAL_COLUMNS = frozenset(m.name for m in EVAL_METRICS if not m.every_task)


def summary_table(rows: list[dict[str, Any]], rounds: int) -> Any:
    from rich.table import Table

    from fedpeer.scenario.summary import MISSING, fmt_kb, fmt_percent

    cols = [
        (k, h)
        for k, h in SUMMARY_COLUMNS
        if k not in OPTIONAL_COLUMNS or any(r.get(k) is not None for r in rows)
    ]
    table = Table(title=f"summary after {rounds} rounds")
    for key, head in cols:
        table.add_column(head, justify="left" if key in ("node", "neighbours_heard") else "right")
    for r in rows:
        cells = {
            "consensus_relative": fmt_percent(r.get("consensus_relative")),
            "bytes_sent_per_round": fmt_kb(r.get("bytes_sent_per_round")),
            "neighbours_heard": _heard(r),
        }
        table.add_row(
            *[cells.get(k, _cell(r.get(k), MISSING)) for k, _ in cols],
            style="yellow" if r.get("trained_alone") else None,
        )
    return table


def _heard(row: dict[str, Any]) -> str:
    """How many of its neighbours a node heard from during the run, e.g. 2/2; flags a lone node."""
    heard = len(row.get("neighbours_heard") or [])
    text = f"{heard}/{row['degree']}" if row.get("degree") is not None else str(heard)
    return f"{text} trained alone" if row.get("trained_alone") else text


def _cell(v: Any, missing: str) -> str:
    if v is None:
        return missing
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
