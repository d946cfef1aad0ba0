"""Run directories (DIR/<node>/metrics.jsonl, optional DIR/run.json) -> markdown tables and PNG plots.

A run is one mesh run: the output of `fedpeer scenario run --out DIR`. The benchmark writes a
`run.json` next to the node directories, e.g. {"method": "dual", "topology": "ring", "seed": 0};
runs that share (method, topology) and differ in seed are also reported as a group, mean ± std
over seeds.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpeer.errors import FedpeerError
from fedpeer.metrics import AUTO_METRICS, EVAL_METRICS, RoundRecord, by_round, read_records
from fedpeer.metrics import FILENAME as METRICS_FILE

# `metric="auto"` takes the first of AUTO_METRICS that the runs measured: the task metric before the loss.
LOWER_IS_BETTER = frozenset(
    {m.name for m in EVAL_METRICS if not m.higher_is_better} | {"train_loss", "consensus_distance"}
)
RUN_META = "run.json"


class ReportError(FedpeerError):
    """A run directory or a metric cannot be reported."""


@dataclass(frozen=True)
class Run:
    """One run directory: its label, run.json contents, and each node's records ordered by round."""

    label: str
    meta: dict[str, Any]
    nodes: dict[str, list[RoundRecord]]
    path: Path = field(default=Path("."), compare=False)

    @property
    def group(self) -> tuple[str, str] | None:
        method, topology = self.meta.get("method"), self.meta.get("topology")
        return None if method is None or topology is None else (str(method), str(topology))


# ================================================================ loading
def load_run(path: str | Path) -> Run:
    """Read DIR/<node>/metrics.jsonl for every node and DIR/run.json if present."""
    d = Path(path)
    files = sorted(d.glob(f"*/{METRICS_FILE}"), key=lambda p: _natural(p.parent.name))
    nodes = {f.parent.name: by_round(read_records(f)) for f in files}
    if not any(nodes.values()):
        raise ReportError(
            f"{d} has no metrics: expected {d}/<node>/{METRICS_FILE} (the --out of `fedpeer scenario run`)"
        )
    meta = _read_meta(d / RUN_META)
    return Run(label=_label(meta, d), meta=meta, nodes=nodes, path=d)


def find_runs(dirs: Sequence[str | Path]) -> list[Run]:
    """Each DIR is a run directory, or a folder of run directories (e.g. a whole benchmark's output)."""
    runs: list[Run] = []
    for d in map(Path, dirs):
        children = sorted(c for c in d.glob("*") if c.is_dir() and any(c.glob(f"*/{METRICS_FILE}")))
        if not any(d.glob(f"*/{METRICS_FILE}")) and children:
            runs.extend(load_run(c) for c in children)
        else:
            runs.append(load_run(d))
    return runs


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ReportError(f'{path} must hold one JSON object, e.g. {{"method": "dual", "seed": 0}}')
    return meta


def _label(meta: dict[str, Any], d: Path) -> str:
    if "label" in meta:
        return str(meta["label"])
    parts = [str(meta[k]) for k in ("method", "topology") if k in meta]
    if "seed" in meta:
        parts.append(f"seed {meta['seed']}")
    return " ".join(parts) or d.resolve().name


def _natural(name: str) -> list[Any]:
    # node-2 before node-10
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# ================================================================ numbers
def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Numeric fields the runs' records carry (what --metric can name)."""
    records = (r for run in runs for recs in run.nodes.values() for r in recs)
    keys = {k for r in records for k, v in r.to_json().items() if _num(v)}
    return sorted(keys - {"round"})


def resolve_metric(runs: Sequence[Run], metric: str = "auto") -> str:
    """`auto`: the first of AUTO_METRICS measured by the runs; otherwise check the name exists."""
    have = available_metrics(runs)
    if metric == "auto":
        for m in AUTO_METRICS:
            if m in have:
                return m
        raise ReportError(f"no eval metric in the runs (looked for {', '.join(AUTO_METRICS)}); use --metric")
    if metric not in have:
        raise ReportError(f"unknown metric {metric!r}: the runs record {', '.join(have) or 'no numbers'}")
    return metric


def _final(records: list[RoundRecord], metric: str) -> float | None:
    # The last value measured: a round may log null ("not measured"), e.g. when eval was skipped.
    for r in reversed(records):
        v = _num(r.value(metric))
        if v is not None:
            return v
    return None


def _mean(xs: Sequence[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _std(xs: Sequence[float]) -> float | None:
    # Sample std (n-1): the spread over a handful of seeds, not of a whole population.
    return statistics.stdev(xs) if len(xs) > 1 else None


def summarize_run(run: Run, metric: str) -> dict[str, Any]:
    """Final per-node metric (+ mean, min, max), bytes sent per node (total, per round), rounds, wall time."""
    final = {n: v for n, recs in run.nodes.items() if (v := _final(recs, metric)) is not None}
    sent = {n: sum(_num(r.bytes_sent) or 0.0 for r in recs) for n, recs in run.nodes.items() if recs}
    per_round = {n: sent[n] / len(run.nodes[n]) for n in sent}
    vals = list(final.values())
    return {
        "label": run.label,
        "method": run.meta.get("method"),
        "topology": run.meta.get("topology"),
        "seed": run.meta.get("seed"),
        "metric": metric,
        "final": final,
        "mean": _mean(vals),
        "min": min(vals, default=None),
        "max": max(vals, default=None),
        "bytes_sent": sent,
        "bytes_sent_per_round": per_round,
        "mean_bytes_sent_per_round": _mean(list(per_round.values())),
        "rounds": max((recs[-1].round for recs in run.nodes.values() if recs), default=0),
        "wall_s": _wall_s(run),
    }


def _wall_s(run: Run) -> float | None:
    # run.json may carry the measured wall time; otherwise the slowest node's sum of round times.
    if _num(run.meta.get("wall_s")) is not None:
        return float(run.meta["wall_s"])
    sums = [sum(_num(r.round_s) or 0.0 for r in recs) for recs in run.nodes.values() if recs]
    return max(sums) if sums and any(sums) else None


def curve(run: Run, metric: str) -> tuple[list[int], list[float], list[float]]:
    """Per round: (round, cumulative bytes sent per node, metric), both means over the nodes of that round."""
    cum: dict[str, float] = {n: 0.0 for n in run.nodes}
    per_round: dict[int, list[tuple[float, float | None]]] = {}
    for node, recs in run.nodes.items():
        for r in recs:
            cum[node] += _num(r.bytes_sent) or 0.0
            per_round.setdefault(r.round, []).append((cum[node], _num(r.value(metric))))
    rounds, xs, ys = [], [], []
    for t in sorted(per_round):
        measured = [y for _, y in per_round[t] if y is not None]
        if measured:
            rounds.append(t)
            xs.append(statistics.fmean(x for x, _ in per_round[t]))
            ys.append(statistics.fmean(measured))
    return rounds, xs, ys


# ================================================================ tables
def group_runs(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    """(method, topology) -> its runs, for runs whose run.json names both."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.group is not None:
            groups.setdefault(run.group, []).append(run)
    return groups


def _has_seed_groups(runs: Sequence[Run]) -> bool:
    return any(len({r.meta.get("seed") for r in g}) > 1 for g in group_runs(runs).values())


def metric_header(metric: str) -> str:
    return f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric


def markdown_table(runs: Sequence[Run], metric: str) -> str:
    """One row per run; plus a mean ± std over seeds table when (method, topology) groups span seeds."""
    parts = [_runs_table(runs, metric)]
    if _has_seed_groups(runs):
        parts.append(_groups_table(runs, metric))
    return "\n\n".join(parts) + "\n"


def _runs_table(runs: Sequence[Run], metric: str) -> str:
    head = [
        "run",
        "method",
        "topology",
        "seed",
        f"mean final {metric_header(metric)}",
        "min–max",
        "per site",
        "bytes sent / node / round",
        "rounds",
    ]
    rows = []
    for run in runs:
        s = summarize_run(run, metric)
        rows.append(
            [
                s["label"],
                _cell(s["method"]),
                _cell(s["topology"]),
                _cell(s["seed"]),
                _fmt(s["mean"]),
                f"{_fmt(s['min'])}–{_fmt(s['max'])}",
                ", ".join(f"{n} {_fmt(v)}" for n, v in s["final"].items()),
                _fmt_bytes(s["mean_bytes_sent_per_round"]),
                str(s["rounds"]),
            ]
        )
    return _markdown(head, rows)


def _groups_table(runs: Sequence[Run], metric: str) -> str:
    head = [
        "method",
        "topology",
        "seeds",
        f"mean final {metric_header(metric)} (± std over seeds)",
        "per site (± std over seeds)",
        "bytes sent / node / round",
        "rounds",
    ]
    rows = []
    for (method, topology), group in group_runs(runs).items():
        sums = [summarize_run(r, metric) for r in group]
        sites = sorted({n for s in sums for n in s["final"]}, key=_natural)
        per_site = [f"{n} {_pm([s['final'][n] for s in sums if n in s['final']])}" for n in sites]
        rounds = sorted({s["rounds"] for s in sums})
        rows.append(
            [
                method,
                topology,
                ", ".join(_cell(s["seed"]) for s in sums),
                _pm([s["mean"] for s in sums if s["mean"] is not None]),
                ", ".join(per_site),
                _fmt_bytes(_mean([s["mean_bytes_sent_per_round"] for s in sums])),
                str(rounds[0]) if len(rounds) == 1 else f"{rounds[0]}–{rounds[-1]}",
            ]
        )
    return _markdown(head, rows)


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pm(xs: Sequence[float]) -> str:
    std = _std(xs)
    return _fmt(_mean(xs)) if std is None else f"{_fmt(_mean(xs))} ± {_fmt(std)}"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _cell(v: Any) -> str:
    return "-" if v is None else str(v)


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# ================================================================ plots
@dataclass(frozen=True)
class _Series:
    label: str
    rounds: list[int]
    bytes_: list[float]
    y: list[float]
    y_std: list[float] | None  # None: a single run, no band


def _series(runs: Sequence[Run], metric: str) -> list[_Series]:
    # A (method, topology) group of several runs is one line with a ±std band; any other run its own line.
    groups = {g: rs for g, rs in group_runs(runs).items() if len(rs) > 1}
    out = [_group_series(f"{m} / {t} (± std, {len(rs)} runs)", rs, metric) for (m, t), rs in groups.items()]
    for run in runs:
        if run.group not in groups:
            t, x, y = curve(run, metric)
            out.append(_Series(run.label, t, x, y, None))
    return out


def _group_series(label: str, runs: list[Run], metric: str) -> _Series:
    curves = []  # one {round: (cumulative bytes, metric)} per seed
    for run in runs:
        t, x, y = curve(run, metric)
        curves.append(dict(zip(t, zip(x, y, strict=True), strict=True)))
    # Only rounds every seed reached: a band over fewer seeds would look tighter than it is.
    common = sorted(set.intersection(*(set(c) for c in curves)))
    xs = [statistics.fmean(c[t][0] for c in curves) for t in common]
    ys = [[c[t][1] for c in curves] for t in common]
    return _Series(label, common, xs, [statistics.fmean(v) for v in ys], [statistics.stdev(v) for v in ys])


def plot_metric_vs_round(runs: Sequence[Run], metric: str, path: str | Path) -> Path:
    """Mean over nodes of METRIC per round, one line per run or per (method, topology) group."""
    return _plot(_series(runs, metric), metric, Path(path), by_bytes=False)


def plot_metric_vs_bytes(runs: Sequence[Run], metric: str, path: str | Path) -> Path:
    """Mean over nodes of METRIC against the cumulative bytes each node sent (mean over nodes)."""
    return _plot(_series(runs, metric), metric, Path(path), by_bytes=True)


def _plot(series: list[_Series], metric: str, path: Path, by_bytes: bool) -> Path:
    Figure, FigureCanvasAgg = _matplotlib()
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for s in series:
        x = [b / 2**20 for b in s.bytes_] if by_bytes else s.rounds
        (line,) = ax.plot(x, s.y, marker="o", markersize=3, label=s.label)
        if s.y_std is not None:
            lo = [m - d for m, d in zip(s.y, s.y_std, strict=True)]
            hi = [m + d for m, d in zip(s.y, s.y_std, strict=True)]
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("cumulative MiB sent per node (mean over nodes)" if by_bytes else "round")
    ax.set_ylabel(f"{metric_header(metric)}, mean over nodes")
    ax.set_title(f"{metric} vs {'bytes sent' if by_bytes else 'round'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError("plots need matplotlib: pip install 'fedpeer[report]'") from None
    return Figure, FigureCanvasAgg


# ================================================================ report
def build_report(dirs: Sequence[str | Path], out: str | Path, metric: str = "auto") -> Path:
    """Write OUT/report.md (tables + plot links) and OUT/<metric>_vs_{round,bytes}.png; return report.md."""
    runs = find_runs(dirs)
    return write_report(runs, out, resolve_metric(runs, metric))


def write_report(runs: Sequence[Run], out: str | Path, metric: str) -> Path:
    """build_report for runs already loaded and a metric already resolved."""
    _matplotlib()  # fail before writing anything
    out = Path(out)
    vs_round = plot_metric_vs_round(runs, metric, out / f"{metric}_vs_round.png")
    vs_bytes = plot_metric_vs_bytes(runs, metric, out / f"{metric}_vs_bytes.png")
    text = (
        f"# fedpeer report: {metric}\n\n"
        f"{len(runs)} runs; final-round {metric_header(metric)} per site; bytes are protobuf bytes "
        "on the wire.\n\n"
        f"{markdown_table(runs, metric)}\n"
        f"![{metric} vs round]({vs_round.name})\n\n"
        f"![{metric} vs bytes sent]({vs_bytes.name})\n"
    )
    consensus = plot_consensus_rate(runs, out / "consensus_vs_round.png")
    if consensus is not None:
        gaps = ", ".join(f"{r.label} {r.meta['spectral_gap']:.4g}" for r in runs if _gap(r) is not None)
        text += (
            f"\n![consensus distance vs round]({consensus.name})\n\n"
            f"Consensus distance per round (mean over nodes, log scale); dashed: the rate "
            f"c_1 (1 - gap)^(t-1) of each run's mixing matrix, spectral gap {gaps}. With training "
            "(lr > 0) and a lossy codec the distance levels off above the rate.\n"
        )
    path = out / "report.md"
    path.write_text(text)
    return path


def _gap(run: Run) -> float | None:
    """The run's per-round spectral gap when it gives a rate: 0 < gap < 1 (1 = exact averaging, as
    one-peer exponential reaches once per period: no per-round rate to draw)."""
    gap = run.meta.get("spectral_gap")
    return float(gap) if isinstance(gap, int | float) and 0 < gap < 1 else None


def plot_consensus_rate(runs: Sequence[Run], path: str | Path) -> Path | None:
    """Consensus distance per round of the runs whose run.json has a spectral gap, each with its
    (1 - gap)^t rate from the first round's distance; None when no run has both."""
    series = []
    for run in runs:
        gap = _gap(run)
        if gap is None:
            continue
        t, _, y = curve(run, "consensus_distance")
        if t and y[0] > 0:
            series.append((run.label, gap, t, y))
    if not series:
        return None
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, gap, t, y in series:
        (line,) = ax.plot(t, y, marker="o", markersize=3, label=label)
        rate = [y[0] * (1 - gap) ** (r - t[0]) for r in t]
        ax.plot(t, rate, linestyle="--", color=line.get_color(), label=f"(1 - {gap:.3g})^t")
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("consensus distance, mean over nodes")
    ax.set_title("consensus distance vs the spectral-gap rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
