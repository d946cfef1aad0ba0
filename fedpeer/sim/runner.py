"""`fedpeer scenario run SPEC --runner sim`: every node of the scenario in this process, around one
shared base model (`SimMesh`). Same files out as the other runners: OUT/<node>/metrics.jsonl (read by
the summary and `fedpeer report`), plus OUT/sim.json (per-round wall time, trained nodes, the gap).
`--runner ray` (`ray_blocks`) runs the same rounds here with the per-node work on Ray actors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedpeer.errors import ConfigError
from fedpeer.metrics import FILENAME as METRICS_FILE
from fedpeer.metrics import RoundRecord
from fedpeer.scenario.spec import PreparedScenario, ScenarioSpec, node_names, prepare
from fedpeer.scenario.summary import fmt_kb, fmt_percent, relative_consensus, summarize
from fedpeer.sim.mesh import MODES, BlocksFactory, RoundResult, SimMesh
from fedpeer.sim.spectral import gap_report

__all__ = [
    "SIM_FILE",
    "prepare_for_sim",
    "progress_line",
    "refuse_earlier_run",
    "run_prepared",
    "run_scenario",
]

Echo = Callable[[str], None]
SIM_FILE = "sim.json"


def prepare_for_sim(spec: ScenarioSpec, out_dir: str | Path, echo: Echo | None = None) -> PreparedScenario:
    """Model, data and node configs as for the in-process runner (no addresses are dialled, no TLS)."""
    return prepare(spec, out_dir, {n: f"sim-{n}:0" for n in node_names(spec)}, echo=echo, tls=False)


def run_scenario(spec: ScenarioSpec, out_dir: str | Path, echo: Echo = print) -> list[dict[str, Any]]:
    refuse_earlier_run(spec, Path(out_dir))
    return run_prepared(prepare_for_sim(spec, out_dir, echo=echo), echo)[0]


def run_prepared(
    prepared: PreparedScenario,
    echo: Echo = print,
    mesh: SimMesh | None = None,
    blocks: BlocksFactory | None = None,
) -> tuple[list[dict[str, Any]], SimMesh]:
    """Run every round, write metrics and OUT/sim.json; the summary rows and the mesh (its final
    states). `mesh`: one built from `prepared` beforehand (e.g. with given starting states); else one
    is built here, its nodes' work where `blocks` puts it (default: this process)."""
    spec = prepared.spec
    t0 = time.monotonic()
    gap = gap_report(spec.schedule)
    echo(gap.line(f"{spec.topology} on {len(prepared.nodes)} nodes"))
    if mesh is None:
        around = "one shared base model" if blocks is None else "one base model per block"
        echo(f"building {len(prepared.nodes)} simulated nodes around {around}")
        mesh = SimMesh(prepared, echo=echo, blocks=blocks)
    n, p = len(mesh.names), spec.sim.participation
    trains = "every node trains" if p >= 1 else f"{len(mesh.participants(1))} of {n} nodes train"
    echo(f"simulating {n} nodes {mesh.blocks.where}: {MODES[mesh.mode]}; {trains} each round")
    files = [Path(c.state_dir) / METRICS_FILE for c in prepared.nodes]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, Any]] = []
    for t in range(1, spec.gossip.rounds + 1):
        result = mesh.run_round(t)
        _append(files, result.records)
        rounds.append({"round": t, "wall_s": result.wall_s, "trained": len(result.trained)})
        echo(progress_line(result, spec.gossip.rounds, time.monotonic() - t0))
    meta = {
        "runner": mesh.blocks.runner,
        "blocks": len(mesh.blocks.ranges),
        "topology": spec.topology,
        "nodes": n,
        "mode": mesh.mode,
        "participation": p,
        **gap.to_json(),
        "rounds": rounds,
    }
    (prepared.out_dir / SIM_FILE).write_text(json.dumps(meta, indent=1))
    return summarize(prepared), mesh


def progress_line(result: RoundResult, total: int, elapsed: float) -> str:
    """As the other runners' progress line, with the simulated round's wall time."""
    recs = result.records
    loss = _mean([r.train_loss for r in recs])
    ev = _mean([r.evaluation.get("eval_loss") for r in recs])
    rel = _mean([relative_consensus(r) for r in recs])
    sent = _mean([r.bytes_sent for r in recs])
    consensus = "–" if rel is None else f"{fmt_percent(rel)} of |x|"
    return (
        f"[{elapsed:6.1f}s] round {result.round}/{total}: mean train_loss {_fmt(loss)}  "
        f"eval_loss {_fmt(ev)}  consensus {consensus}  sent {fmt_kb(sent)} kB/node  "
        f"({len(result.trained)} trained, "
        f"{result.wall_s:.2f} s)"
    )


def refuse_earlier_run(spec: ScenarioSpec, out: Path) -> None:
    for name in node_names(spec):
        if (out / name / METRICS_FILE).exists():
            raise ConfigError(
                f"{out / name / METRICS_FILE} is from an earlier run: the sim runner does not resume; "
                "pass --fresh to start over, or choose another --out"
            )


def _append(files: list[Path], records: list[RoundRecord]) -> None:
    # No fsync per line as a node does: a sim's metrics are rewritten by rerunning it.
    for path, record in zip(files, records, strict=True):
        with open(path, "a") as f:
            f.write(json.dumps(record.to_json()) + "\n")


def _mean(xs: list[Any]) -> float | None:
    vals = [float(v) for v in xs if isinstance(v, int | float) and v == v]
    return sum(vals) / len(vals) if vals else None


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"
