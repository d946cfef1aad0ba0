"""Would a site do better predicting with its own model and the mesh's shared model together?

A screen after the fact, over runs that `benchmarks/medical.py --out DIR` kept: for every seed that
has both a `--local` run (a site alone) and a `--shared` run (a mesh method, e.g.
global+rounds=32+prior=0.5), each site's eval set is scored by the two final models and by their
mixes: w * log p_local + (1 - w) * log p_shared(τ) ("logmix", the same as mixing the logits) and
w * p_local + (1 - w) * p_shared(τ) ("pmix"), where p_shared(τ) is the shared model with the site's
label prior at weight τ (train.prior) added to its logits. w = 1 is the local model as it is; w = 0
with the shared run's own τ is the shared model as medical.py scored it.

    python benchmarks/medical.py --quick --task abstracts --seeds 5 --first-seed 12 \\
        --methods local+rounds=16,global+rounds=32+prior=0.5 --out OUT --json
    python benchmarks/mix_screen.py OUT --task abstracts --local local+rounds=16 \\
        --shared global+rounds=32+prior=0.5 --json

Prints, per mix, the mean personalized macro-F1 and its paired differences (by seed and site) with
the shared and the local model, with percentile bootstrap 95 % intervals; --rows FILE writes every
site's scores; --json ends with one JSON object. It trains nothing: it reads the checkpoints and scores
(20 s for 4 sites of 2 seeds on a 2-core CPU). Results: docs/results/medical (the averaging sections).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import medical  # noqa: E402
from common_learning import log, minilm_path, node_checkpoints  # noqa: E402

from fedpeer.model.dual_lora import load_dual_lora, resolve_device  # noqa: E402
from fedpeer.node.state import prior_of  # noqa: E402
from fedpeer.train.loop import LocalTrainer, macro_f1  # noqa: E402


@dataclasses.dataclass(frozen=True)
class SiteLogits:
    logits: torch.Tensor  # eval examples x classes, no prior added
    labels: list[int]
    log_prior: torch.Tensor  # the site's log label shares
    prior: float  # the τ the run scored this site with


def run_logits(
    out: Path, task_dir: Path, label: str, topology: str, seed: int, model: str
) -> dict[str, SiteLogits]:
    """Every site's eval logits from the checkpoints medical.py scored (the last round's, or with
    keep_best the best round's) of run `label` on `topology` at `seed` under `task_dir`."""
    method, *opts = label.split("+")
    s = medical.Settings(**json.loads((out / "settings.json").read_text()))
    task, _, config = task_dir.name.partition("-n")  # e.g. abstracts-n4-a0.3
    sites_n, _, alpha = config.partition("-a")
    s = dataclasses.replace(s, sites=int(sites_n), alpha=float(alpha), **medical.variant_settings(opts))
    labels = json.loads((out / "data.json").read_text())[task]["labels"]
    data = task_dir / f"data-s{seed}"
    sites = sorted(data.glob("site*"), key=lambda p: int(p.name[4:]))
    files = [
        {k: d / f"{k}.jsonl" for k in ("train", "eval", "monitor")} | {"test": data / "test.jsonl"}
        for d in sites
    ]
    run_dir = task_dir / f"{label}-{topology}-s{seed}"
    with tempfile.TemporaryDirectory(prefix="fedpeer-mix-") as tmp:
        prepared = medical.prepare_run(s, method, topology, seed, model, labels, files, Path(tmp))
    ids = [c.node_id for c in prepared.nodes]
    cks = node_checkpoints(run_dir, ids, best=s.keep_best != "off")
    cfg = prepared.nodes[0]
    dual = load_dual_lora(cfg.model, cfg.adapter, resolve_device(cfg.train.device), seed)
    out_logits = {}
    for c, f in zip(prepared.nodes, files, strict=True):
        dual.load_adapter_state(cks[c.node_id].group("adapter"))
        train = dataclasses.replace(
            c.train, eval_data=str(f["eval"]), batch_size=64, prior=0.0, prior_choices=()
        )
        trainer = LocalTrainer(dual, c.model, train)
        logits, y = trainer.eval_logits()
        out_logits[c.node_id] = SiteLogits(
            logits.cpu(), y.tolist(), trainer.site_log_prior.cpu(), prior_of(c.train, cks[c.node_id].meta)
        )
    return out_logits


def mixes(
    local: SiteLogits, shared: SiteLogits, weights: Sequence[float], priors: Sequence[float]
) -> dict[str, float]:
    """macro-F1 of the local model, the shared model (its run's τ) and every mix of the grid."""

    def f1(scores: torch.Tensor) -> float:
        return macro_f1(local.labels, scores.argmax(-1).tolist())

    local_logits = local.logits + local.prior * local.log_prior
    row = {"local": f1(local_logits), "shared": f1(shared.logits + shared.prior * shared.log_prior)}
    lp_local = torch.log_softmax(local_logits, -1)
    for tau in priors:
        lp_shared = torch.log_softmax(shared.logits + tau * shared.log_prior, -1)
        for w in weights:
            row[f"logmix w{w:g} t{tau:g}"] = f1(w * lp_local + (1 - w) * lp_shared)
            row[f"pmix w{w:g} t{tau:g}"] = f1(w * lp_local.exp() + (1 - w) * lp_shared.exp())
    return row


def summary(rows: list[dict[str, Any]], n_boot: int) -> list[dict[str, Any]]:
    """Per score column: its mean and its paired differences (points) with the shared and the local model."""
    keys = [k for k in rows[0] if k not in ("seed", "site")]
    out = []
    for k in keys:
        entry: dict[str, Any] = {"mix": k, "mean": statistics.fmean(r[k] for r in rows)}
        for base in ("shared", "local"):
            mean, lo, hi = medical.bootstrap_ci([100 * (r[k] - r[base]) for r in rows], n_boot)
            entry[f"minus_{base}"] = {"mean": mean, "ci95": [lo, hi]}
        out.append(entry)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="+", type=Path, help="--out directories of benchmarks/medical.py runs")
    ap.add_argument("--task", default="abstracts", help="classification task (default abstracts)")
    ap.add_argument("--local", default="local+rounds=16", help="method label of the site-alone runs")
    ap.add_argument("--shared", default="global+rounds=32+prior=0.5", help="method label of the mesh runs")
    ap.add_argument(
        "--weights", default="0.25,0.5,0.75", help="weights w of the local model, comma-separated"
    )
    ap.add_argument(
        "--priors", default="0,0.5,1", help="τ values of the shared model's prior, comma-separated"
    )
    ap.add_argument("--topology", default="ring", help="graph of the --shared runs (default ring)")
    ap.add_argument("--model", default=None, help="base model directory (default: the offline MiniLM)")
    ap.add_argument("--n-boot", type=int, default=10_000)
    ap.add_argument("--rows", type=Path, default=None, help="write every site's scores here (JSONL)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object")
    a = ap.parse_args(argv)
    if medical.metric(a.task) != "macro_f1":
        ap.error(f"--task {a.task}: mixing predictions applies to the classification tasks only")
    weights = [float(x) for x in a.weights.split(",")]
    priors = [float(x) for x in a.priors.split(",")]
    model = a.model or minilm_path()
    torch.set_num_threads(os.cpu_count() or 1)
    rows: list[dict[str, Any]] = []
    for out in a.out:
        task_dirs = sorted(out.glob(f"{a.task}-n*"))
        if not task_dirs or not (out / "settings.json").exists():
            ap.error(f"{out}: no {a.task} runs of benchmarks/medical.py --out here")
        for task_dir in task_dirs:
            seeds = sorted(
                int(p.name.rsplit("-s", 1)[1]) for p in task_dir.glob(f"{a.shared}-{a.topology}-s*")
            )
            for seed in seeds:
                if not (task_dir / f"{a.local}-none-s{seed}").is_dir():
                    log(f"{task_dir.name} seed {seed}: no {a.local} run, skipped")
                    continue
                log(f"{task_dir.name} seed {seed}: scoring {a.local} and {a.shared}")
                local = run_logits(out, task_dir, a.local, "none", seed, model)
                shared = run_logits(out, task_dir, a.shared, a.topology, seed, model)
                for site in local:
                    rows.append(
                        {"seed": seed, "site": site, **mixes(local[site], shared[site], weights, priors)}
                    )
    if not rows:
        ap.error(f"no seed has both a {a.local!r} and a {a.shared!r} run in {', '.join(map(str, a.out))}")
    if a.rows:
        a.rows.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = summary(rows, a.n_boot)
    seeds = sorted({r["seed"] for r in rows})
    print(f"{a.task}: {len(rows)} (seed, site) pairs, seeds {medical.seed_list(seeds)}; points, 95 % CI")
    print("| mix | macro-F1 | - shared | - local |\n|---|---|---|---|")
    for e in table:
        cells = [
            f"{e[k]['mean']:+.1f} [{e[k]['ci95'][0]:+.1f}, {e[k]['ci95'][1]:+.1f}]"
            for k in ("minus_shared", "minus_local")
        ]
        print(f"| {e['mix']} | {e['mean']:.3f} | {cells[0]} | {cells[1]} |")
    if a.json:
        print(
            json.dumps(
                {
                    "task": a.task,
                    "local": a.local,
                    "shared": a.shared,
                    "pairs": len(rows),
                    "seeds": seeds,
                    "mixes": table,
                }
            )
        )


if __name__ == "__main__":
    main()
