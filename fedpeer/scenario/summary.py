"""What a scenario run prints and reports, read from the nodes' metrics.jsonl: a progress line per round
and one summary row per node (the summary table and summary.json), with the formatting they share.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from fedpeer.metrics import EVAL_METRIC_NAMES, RoundRecord, by_round, read_records
from fedpeer.metrics import FILENAME as METRICS_FILE
from fedpeer.scenario.spec import PreparedScenario, ScenarioSpec, node_neighbours

SUMMARY_FILE = "summary.json"
MISSING = "–"  # a value not measured (e.g. no neighbour mixed: no consensus distance)


def summarize(prepared: PreparedScenario) -> list[dict[str, Any]]:
    """One row per node from its metrics.jsonl (the summary table and summary.json)."""
    return [node_row(c.node_id, Path(c.state_dir), len(c.neighbours)) for c in prepared.nodes]


def summarize_out(spec: ScenarioSpec, out_dir: str | Path) -> list[dict[str, Any]]:
    """`summarize` for the run of SPEC under OUT, without preparing it: nothing is built or written."""
    out = Path(out_dir).resolve()
    return [node_row(n, out / n, len(peers)) for n, peers in node_neighbours(spec).items()]


def node_row(node: str, state_dir: Path, degree: int) -> dict[str, Any]:
    recs = by_round(read_records(state_dir / METRICS_FILE))
    last = recs[-1] if recs else RoundRecord(round=0)
    return {
        "node": node,
        "rounds": len(recs),
        "last_round": last.round,
        "train_loss": last.train_loss,
        **{k: last.evaluation.get(k) for k in EVAL_METRIC_NAMES},
        "consensus_distance": last.consensus_distance,
        "global_norm": last.global_norm,
        "consensus_relative": relative_consensus(last),  # consensus_distance / global_norm
        "bytes_sent_per_round": _median([r.bytes_sent for r in recs]),
        "round_s": _median([r.round_s for r in recs]),
        "degree": degree,
        "neighbours_heard": sorted({j for r in recs for j in r.neighbours_heard or ()}),
        "trained_alone": trained_alone(recs),
    }


def trained_alone(records: list[RoundRecord]) -> bool:
    """No round of the run mixed any neighbour: the node never heard from the mesh."""
    return bool(records) and all(r.neighbours_heard == [] for r in records)


def relative_consensus(record: RoundRecord) -> float | None:
    """Consensus distance as a fraction of the global adapter's norm; None when either is not measured
    (e.g. a round that mixed no neighbour has no consensus distance)."""
    dist, norm = _num(record.consensus_distance), _num(record.global_norm)
    return None if dist is None or not norm else dist / norm


def progress_line(prepared: PreparedScenario, rnd: int, total: int, elapsed: float) -> str:
    recs: list[RoundRecord] = []
    for cfg in prepared.nodes:
        recs += [r for r in by_round(read_records(Path(cfg.state_dir) / METRICS_FILE)) if r.round == rnd]
    loss = _mean([r.train_loss for r in recs])
    ev = _mean([r.evaluation.get("eval_loss") for r in recs])
    rel = _mean([relative_consensus(r) for r in recs])
    sent = _mean([r.bytes_sent for r in recs])
    consensus = MISSING if rel is None else f"{fmt_percent(rel)} of |x|"
    return (
        f"[{elapsed:6.1f}s] round {rnd}/{total}: mean train_loss {_fmt(loss)}  eval_loss {_fmt(ev)}  "
        f"consensus {consensus}  sent {fmt_kb(sent)} kB/node"
    )


def fmt_percent(fraction: float | None) -> str:
    return MISSING if fraction is None else f"{100 * fraction:.3g} %"


def fmt_kb(n_bytes: float | None) -> str:
    """Bytes as kB (1000 bytes), the unit of progress lines and the summary table."""
    return MISSING if n_bytes is None else f"{n_bytes / 1e3:.1f}"


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _mean(xs: list[Any]) -> float | None:
    vals = [v for v in map(_num, xs) if v is not None]
    return sum(vals) / len(vals) if vals else None


def _median(xs: list[Any]) -> float | None:
    vals = [v for v in map(_num, xs) if v is not None]
    return statistics.median(vals) if vals else None


def _fmt(x: float | None) -> str:
    return MISSING if x is None else f"{x:.4g}"
