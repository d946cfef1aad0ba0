"""Per-round series of a scenario run, and how far apart the sites' local adapters ended up.

python scripts/run_series.py runs/ring4          # markdown tables
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import torch

from fedpeer import checkpoint
from fedpeer.metrics import read_records


def series(run: Path, nodes: list[str]) -> None:
    recs = {n: {r.round: r for r in read_records(run / n / "metrics.jsonl")} for n in nodes}
    rounds = sorted(set().union(*[set(r) for r in recs.values()]))
    print("| round | " + " | ".join(f"{n} loss / eval / consensus" for n in nodes) + " | mean consensus |")
    print("|---" * (len(nodes) + 2) + "|")
    for t in rounds:
        cells, cds = [], []
        for n in nodes:
            r = recs[n].get(t)
            if r is None:
                cells.append("—")
                continue
            cds.append(r.consensus_distance)
            cells.append(
                f"{_f(r.train_loss)} / {_f(r.evaluation.get('eval_loss'))} / {_f(r.consensus_distance)}"
            )
        print(f"| {t} | " + " | ".join(cells) + f" | {_f(sum(cds) / len(cds)) if cds else '—'} |")


def adapters(run: Path, nodes: list[str]) -> None:
    states = {n: checkpoint.load(run / n).group("adapter") for n in nodes}
    print("\n| pair | local adapter relative distance | global adapter relative distance |")
    print("|---|---|---|")
    for a, b in itertools.combinations(nodes, 2):
        local, shared = _rel(states[a], states[b], ".local."), _rel(states[a], states[b], ".global.")
        print(f"| {a}–{b} | {local:.3f} | {shared:.3f} |")


def _rel(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], part: str) -> float:
    keys = [k for k in x if part in k and "lora_B" in k]
    num = sum(float((x[k] - y[k]).pow(2).sum()) for k in keys)
    den = sum(float((x[k] + y[k]).pow(2).sum()) / 4 for k in keys)
    return math.sqrt(num / den) if den else 0.0


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    a = ap.parse_args()
    nodes = sorted((p.parent.name for p in a.run.glob("*/metrics.jsonl")), key=lambda s: (len(s), s))
    series(a.run, nodes)
    adapters(a.run, nodes)


if __name__ == "__main__":
    main()
